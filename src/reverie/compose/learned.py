"""Training an energy-parameterised diffusion model (Du et al. 2023, "Reduce, Reuse, Recycle",
sec. 4 "energy parameterisation").

A network ``f_theta(x, t)`` gives a scalar energy per sample, in one of the two forms the paper
explores: a squared norm, here ``phi = 1/2 ||x - f_theta(x, t)||^2`` (``form="norm"``; the
``x -`` keeps a zero-initialised ``f`` off the saddle ``f = 0`` and starts at ``eps_hat = x``),
or an inner product ``phi = <x, f_theta(x, t)>`` (``form="dot"``). The noise prediction is its
gradient, ``eps_hat = grad_x phi``, so the score is ``-eps_hat / sigma_t = grad_x (-phi /
sigma_t)`` and ``log q_t(x) = -phi(x, t) / sigma_t`` up to a constant: the model has an
energy, and composes with the Metropolis-adjusted correctors
(:class:`~reverie.compose.MALA`, :class:`~reverie.compose.HMC`).

Training is ordinary denoising score matching on ``eps_hat`` (the ``"eps"`` objective of
:func:`reverie.train.train`): :class:`EnergyNet` takes the gradient with ``create_graph=True``
while the module trains, so the loss back-propagates through ``grad_x phi``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reverie.compose.energy import EnergyModel
from reverie.process import GaussianProcess

__all__ = ["ENERGY_FORMS", "EnergyNet", "train_energy"]

ENERGY_FORMS = ("norm", "dot")


class EnergyNet(nn.Module):
    """``eps_hat(x, t) = grad_x phi(x, t)`` for the scalar energy ``phi`` of ``f`` (see the module
    docstring); ``f(x, t)`` returns a tensor shaped like ``x`` (e.g. :class:`reverie.nets.MLP`)."""

    def __init__(self, f: nn.Module, form: str = "dot"):
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(f"f must be a torch.nn.Module, got {type(f).__name__}")
        if form not in ENERGY_FORMS:
            raise ValueError(
                f"unknown energy form {form!r}; expected one of {', '.join(ENERGY_FORMS)}"
            )
        self.f, self.form = f, form

    def energy(self, x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        """``phi(x, t)``, one scalar per sample ``[batch]``."""
        out = self.f(x, t, **kw)
        out = getattr(out, "sample", out)
        if out.shape != x.shape:
            raise ValueError(
                f"f must return a tensor shaped like x {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        prod = 0.5 * (x - out) ** 2 if self.form == "norm" else x * out
        return prod.flatten(1).sum(1)

    def forward(self, x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        # training: keep the graph of grad_x phi so the DSM loss reaches the weights
        train = self.training and torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if (train and x.requires_grad) else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(xg, t, **kw).sum(), xg, create_graph=train)
        return g if train else g.detach()

    def model(self, process: GaussianProcess, sample_shape: tuple[int, ...] | None = None,
              ) -> EnergyModel:
        """The trained network as an :class:`~reverie.compose.EnergyModel` of ``process``:
        ``log q_t(x) = -phi(x, t) / sigma_t`` (the network sees the process time)."""
        def log_density(x: Tensor, t: Tensor, **cond: Any) -> Tensor:
            sigma = process.sigma(t).to(device=x.device, dtype=x.dtype)  # [batch] or scalar
            return -self.energy(x, t, **cond) / sigma

        return EnergyModel(log_density, process, sample_shape=sample_shape)


def train_energy(net: EnergyNet, data: Tensor, process: GaussianProcess, **kw: Any):
    """Denoising score matching of ``net`` on ``data [N, ...]`` under ``process`` (the ``"eps"``
    objective of :func:`reverie.train.train`, whose keywords ``kw`` are passed on). Returns
    ``(result, model)``: the :class:`~reverie.train.TrainResult` and the EMA weights as an
    :class:`~reverie.compose.EnergyModel`."""
    from reverie.train import train  # lazy: reverie.train does not need compose

    if not isinstance(net, EnergyNet):
        raise TypeError(f"net must be a reverie.compose.EnergyNet, got {type(net).__name__}")
    kw.setdefault("progress", False)
    res = train(net, data, process=process, prediction="eps", **kw)
    return res, res.ema.model(process, tuple(data.shape[1:]))

"""Training a diffusion model jointly with its learned forward process
(:mod:`reverie.learned_process`: NFDM / NDM / DiffEnc / MuLAN-style) by NFDM's negative ELBO.

The network and the forward process's parameters (transform ``F_phi``, per-dimension schedule)
are optimised together on ``E_{x, t, eps} [diffusion + prior + reconstruction]``
(:func:`reverie.learned_process.elbo_terms`), ``t`` uniform on ``[t_min, 1]`` (stratified over
the batch, VDM's low-discrepancy sampler, to lower the variance). With MuLAN's
:class:`~reverie.learned_process.AuxiliaryLatentProcess` the encoder is trained too, on the
auxiliary-variable bound (:func:`reverie.learned_process.auxiliary_elbo_terms`: one draw of
``z_aux ~ q(z_aux | x)`` per point plus ``KL(q || p)``); the network is then
``net(z_t, t, z_aux)`` (e.g. :class:`~reverie.learned_process.LatentConditioned`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.learned_process import (
    AuxiliaryLatentProcess,
    LearnedProcess,
    auxiliary_elbo_terms,
    elbo_terms,
)
from reverie.train.interpolants import FitResult, _fit

__all__ = ["LearnedDiffusion", "negative_elbo", "train_learned"]


class LearnedDiffusion(nn.Module):
    """The eps-network and its learned forward process as one module (one optimiser, one EMA);
    calling it is the network's ``(z, t) -> eps_hat`` (``(z, t, z_aux)`` with an
    :class:`AuxiliaryLatentProcess`)."""

    def __init__(self, net: nn.Module, process: LearnedProcess | AuxiliaryLatentProcess):
        super().__init__()
        if not isinstance(process, (LearnedProcess, AuxiliaryLatentProcess)):
            raise TypeError(f"process must be a LearnedProcess or AuxiliaryLatentProcess, got "
                            f"{type(process).__name__}")
        self.net, self.process = net, process

    def forward(self, z: Tensor, t: Tensor, *z_aux: Tensor) -> Tensor:
        return self.net(z, t, *z_aux)


def negative_elbo(model: LearnedDiffusion, x: Tensor, t: Tensor, eps: Tensor,
                  eps_aux: Tensor | None = None) -> Tensor:
    """Per-point negative ELBO (nats), one-sample estimate of the diffusion term (and, with an
    :class:`AuxiliaryLatentProcess`, of ``z_aux`` from ``eps_aux [B, latent_dim]``)."""
    if not isinstance(model.process, AuxiliaryLatentProcess):
        return sum(elbo_terms(model.process, model.net, x, t, eps).values())
    if eps_aux is None:
        raise ValueError("an AuxiliaryLatentProcess needs eps_aux [B, latent_dim], got None")
    return sum(auxiliary_elbo_terms(model.process, model.net, x, t, eps, eps_aux).values())


def train_learned(model: LearnedDiffusion, data: Tensor, *, steps: int = 2000,
                  batch_size: int = 256, lr: float = 1e-3, warmup: int = 100,
                  ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0,
                  log_every: int = 100) -> FitResult:
    """Fit ``model`` (network and forward process) to ``data [N, D]`` by the negative ELBO."""
    if not isinstance(model, LearnedDiffusion):
        raise TypeError(f"model must be a LearnedDiffusion, got {type(model).__name__}")
    positive_int("batch_size", batch_size)
    t_min = model.process.t_min

    def batch_loss(m: nn.Module, gen: torch.Generator) -> Tensor:
        x = data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)].float()
        eps = torch.randn(x.shape, generator=gen)
        u = (torch.rand(1, generator=gen) + torch.arange(batch_size) / batch_size) % 1.0
        eps_aux = (torch.randn(batch_size, m.process.encoder.latent_dim, generator=gen)
                   if isinstance(m.process, AuxiliaryLatentProcess) else None)
        return negative_elbo(m, x, t_min + (1 - t_min) * u, eps, eps_aux).mean()

    return _fit(model, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

"""Training a score model on a linear multivariate diffusion (:mod:`reverie.multivariate`: MDM's
auxiliary-variable processes, FP-Diffusion's spatial ones) by the negative ELBO, optionally
learning the diffusion ``(Q, D)`` itself at the same time (Singhal et al. 2023, "automated
learning": gradient through the matrix exponential of the closed-form marginals).

The network sees the flattened state ``u [B, n m]`` and the time and predicts ``eps`` of
``u_t = a_t x + L_t eps``; ``t`` is stratified over the batch (VDM's low-discrepancy sampler).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.multivariate import LinearDiffusion, elbo_terms, score_from_eps
from reverie.train.interpolants import FitResult, _fit

__all__ = ["LinearDiffusionModel", "negative_elbo", "train_linear"]


class LinearDiffusionModel(nn.Module):
    """A vector network ``net(v [B, n m], t [B])`` (e.g. ``reverie.nets.MLP(dim=n * m)``) and
    its process as one module (one optimiser, one EMA); calling it predicts ``eps [B, n, m]``,
    :meth:`score` is the score for :func:`reverie.multivariate.sample_linear`."""

    def __init__(self, net: nn.Module, process: LinearDiffusion):
        super().__init__()
        if not isinstance(process, LinearDiffusion):
            raise TypeError(f"process must be a LinearDiffusion, got {type(process).__name__}")
        self.net, self.process = net, process

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        out = self.net(u.reshape(u.shape[0], -1).to(dtype), t.to(dtype))
        return out.reshape(u.shape).to(u.dtype)

    def score(self, u: Tensor, t: Tensor) -> Tensor:
        return score_from_eps(self.process, self(u, t), t.to(torch.float64))


def negative_elbo(model: LinearDiffusionModel, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Per-point negative ELBO (nats), one-sample estimate of the diffusion term."""
    return sum(elbo_terms(model.process, model, x, t, eps).values())


def train_linear(model: LinearDiffusionModel, data: Tensor, *, steps: int = 2000,
                 batch_size: int = 256, lr: float = 1e-3, warmup: int = 100,
                 ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0,
                 log_every: int = 100) -> FitResult:
    """Fit ``model`` (network, and the process where its ``(Q, D)`` are trainable) to
    ``data [N, D]`` by the negative ELBO."""
    if not isinstance(model, LinearDiffusionModel):
        raise TypeError(f"model must be a LinearDiffusionModel, got {type(model).__name__}")
    positive_int("batch_size", batch_size)
    proc = model.process

    def batch_loss(m: nn.Module, gen: torch.Generator) -> Tensor:
        x = data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)].to(torch.float64)
        eps = torch.randn(proc.state_shape(x), generator=gen, dtype=torch.float64)
        u = (torch.rand(1, generator=gen, dtype=torch.float64)
             + torch.arange(batch_size, dtype=torch.float64) / batch_size) % 1.0
        return negative_elbo(m, x, proc.t_min + (1 - proc.t_min) * u, eps).mean()

    return _fit(model, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

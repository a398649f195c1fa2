"""Training one level of a nested diffusion model (Zhang et al. 2024, :mod:`reverie.nested`):
an eps-prediction model of the level's variable ``w`` conditioned on the latents ``c`` of the
levels above (the concatenation, highest first), trained on pairs ``(w, c)`` from the encoder
hierarchy with the plain denoising loss ``|net([w_t, c], t) - eps|^2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.process import GaussianProcess
from reverie.train.interpolants import FitResult, _fit

__all__ = ["LevelNet", "train_level"]


class LevelNet(nn.Module):
    """``net(cat[w, latent], t)[:, :dim]`` for a vector network on ``dim + C`` inputs (e.g.
    ``reverie.nets.MLP(dim=dim + C)``); without a condition (the top level) ``net(w, t)``.
    Wrap it as ``Denoiser(LevelNet(...), process, "eps")``: samplers pass ``latent``."""

    def __init__(self, net: nn.Module, dim: int):
        super().__init__()
        self.net, self.dim = net, positive_int("dim", dim)

    def forward(self, w: Tensor, t: Tensor, latent: Tensor | None = None) -> Tensor:
        if latent is None:
            return self.net(w, t)
        return self.net(torch.cat([w, latent.to(w.dtype)], 1), t)[:, : self.dim]


def train_level(net: LevelNet, targets: Tensor, conditions: Tensor | None,
                process: GaussianProcess, *, steps: int = 2000, batch_size: int = 256,
                lr: float = 1e-3, warmup: int = 100, ema_decay: float = 0.999,
                grad_clip: float = 1.0, seed: int = 0, log_every: int = 100) -> FitResult:
    """Fit ``net`` to the eps of ``targets [N, d]`` given ``conditions [N, C]`` (``None`` for
    the top level), ``t`` uniform on ``[t_min, t_max]`` of the continuous ``process``."""
    if not isinstance(net, LevelNet):
        raise TypeError(f"net must be a LevelNet, got {type(net).__name__}")
    if conditions is not None and conditions.shape[0] != targets.shape[0]:
        raise ValueError(f"need one condition per target, got {conditions.shape[0]} and "
                         f"{targets.shape[0]}")
    positive_int("batch_size", batch_size)

    def batch_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, targets.shape[0], (batch_size,), generator=gen)
        w = targets[idx].float()
        c = None if conditions is None else conditions[idx].float()
        t = process.t_min + (process.t_max - process.t_min) * torch.rand(batch_size, generator=gen)
        eps = torch.randn(w.shape, generator=gen)
        return ((model(process.add_noise(w, eps, t), t, c) - eps) ** 2).sum(1).mean()

    return _fit(net, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

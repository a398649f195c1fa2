"""Training with structure-modulated noise (SAM-DiffSR, Wang et al. 2024;
:mod:`reverie.modulated_noise`): the network regresses the modulated noise
``eps_M = eps + c E`` of ``x_t = alpha x0 + sigma eps_M`` (the paper's ``p_losses`` with its L2
loss), ``E`` the encoded segment mask of each training example. At inference it is an ordinary
eps-prediction model (``Denoiser(net, process, "eps")``): no mask is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.modulated_noise import modulated_add_noise
from reverie.process import GaussianProcess
from reverie.train.interpolants import FitResult, _fit

__all__ = ["modulated_loss", "train_modulated"]


def modulated_loss(model: Callable[[Tensor, Tensor], Tensor], process: GaussianProcess,
                   x0: Tensor, encoded: Tensor, t: Tensor, generator: torch.Generator | None = None,
                   coefficient: float = 1.0) -> Tensor:
    """``E |model(x_t, t) - eps_M|^2`` (summed over dimensions, averaged over the batch)."""
    x_t, eps_m = modulated_add_noise(process, x0, encoded, t, generator, coefficient)
    return ((model(x_t, t.to(x_t.dtype)) - eps_m) ** 2).flatten(1).sum(1).mean()


def train_modulated(net: nn.Module, data: Tensor, encoded: Tensor, process: GaussianProcess, *,
                    coefficient: float = 1.0, steps: int = 2000, batch_size: int = 256,
                    lr: float = 1e-3, warmup: int = 100, ema_decay: float = 0.999,
                    grad_clip: float = 1.0, seed: int = 0, log_every: int = 100) -> FitResult:
    """Fit ``net(x_t, t)`` to the modulated noise on ``data [N, ...]`` with the encoded masks
    ``encoded [N, ...]`` of its examples, ``t`` uniform on ``[t_min, t_max]``."""
    if encoded.shape != data.shape:
        raise ValueError(f"encoded must have the data's shape {tuple(data.shape)}, got "
                         f"{tuple(encoded.shape)}")
    positive_int("batch_size", batch_size)

    def batch_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
        t = process.t_min + (process.t_max - process.t_min) * torch.rand(batch_size, generator=gen)
        return modulated_loss(model, process, data[idx].float(), encoded[idx].float(), t, gen,
                              coefficient)

    return _fit(net, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

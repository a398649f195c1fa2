"""Training by the variational bound of the discrete chain (Sohl-Dickstein et al. 2015, eq. 14;
the KL form of Ho et al. 2020, eq. 5): the loss is ``E_x0 [L(x0)]`` of
:func:`reverie.vlb.vlb_terms`, every step's term at once, minimised jointly over the learned
reverse variances (:class:`reverie.vlb.ReverseVariance`) and, when the denoiser is an
``nn.Module`` with parameters, over its weights (Adam, warm-up, clipping and EMA of
:func:`reverie.train.interpolants._fit`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.train.interpolants import FitResult, _fit
from reverie.vlb import ReverseVariance, vlb_terms

__all__ = ["VLBModel", "train_vlb"]


class VLBModel(nn.Module):
    """The reverse chain: a denoiser ``(x, t) -> x0`` (trained if it is an ``nn.Module``) and
    its :class:`ReverseVariance`."""

    def __init__(self, denoiser: Callable[[Tensor, float], Tensor], variance: ReverseVariance):
        super().__init__()
        if not isinstance(variance, ReverseVariance):
            raise TypeError(f"variance must be a ReverseVariance, got {type(variance).__name__}")
        self.variance = variance
        if isinstance(denoiser, nn.Module):
            self.denoiser = denoiser
        else:  # a fixed callable (e.g. an exact reference): not a submodule, not trained
            self.__dict__["denoiser"] = denoiser

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean bound ``L`` in nats per sample."""
        return vlb_terms(self.denoiser, self.variance, x0, self.variance.process,
                         generator).sum(1).mean()


def train_vlb(model: VLBModel, data: Tensor, *, steps: int = 500, batch_size: int = 256,
              lr: float = 1e-2, warmup: int = 20, ema_decay: float = 0.0, grad_clip: float = 10.0,
              seed: int = 0, log_every: int = 50) -> FitResult:
    """Fit ``model`` to ``data [N, ...]`` by the bound (losses in nats per sample)."""
    if not isinstance(model, VLBModel):
        raise TypeError(f"model must be a VLBModel, got {type(model).__name__}")
    positive_int("batch_size", batch_size)

    def batch_loss(m: nn.Module, gen: torch.Generator) -> Tensor:
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)]
        return m.loss(x0.to(torch.float64), gen)

    return _fit(model, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

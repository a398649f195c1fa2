"""Training a mixture posterior over ``x0`` (the mixture reverse kernel of
:mod:`reverie.mixture_denoising`, after Li et al. 2024, "Soft Mixture Denoising").

The loss is the negative log-likelihood of the clean data under the predicted mixture,
``E_{t, x0, eps} [-log sum_k w_k N(x0; m_k(x_t, t), v_k I)]`` with ``t`` uniform on the
process's ``[t_min, t_max]``: minimised by the true posterior ``p(x0 | x_t)`` where the mixture
can represent it. (SMD itself trains a continuous latent through an upper bound on the ELBO;
this maximum-likelihood form is the discrete-mixture case.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.mixture_denoising import MixturePosteriorNet, mixture_nll
from reverie.train.interpolants import FitResult, _fit

__all__ = ["mixture_loss", "train_mixture"]


def mixture_loss(net: MixturePosteriorNet, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Mean ``-log p_net(x0 | x_t)`` at ``x_t = alpha(t) x0 + sigma(t) eps``."""
    xt = net.process.add_noise(x0, eps, t)
    return mixture_nll(*net(xt, t), x0).mean()


def train_mixture(
    net: MixturePosteriorNet, data: Tensor, *, steps: int = 2000, batch_size: int = 256,
    lr: float = 1e-3, warmup: int = 100, ema_decay: float = 0.999, grad_clip: float = 1.0,
    seed: int = 0, log_every: int = 100,
) -> FitResult:
    """Fit ``net`` to ``data [N, D]`` by :func:`mixture_loss` (Adam, warm-up, clipping, EMA)."""
    if not isinstance(net, MixturePosteriorNet):
        raise TypeError(f"net must be a MixturePosteriorNet, got {type(net).__name__}")
    positive_int("batch_size", batch_size)
    proc = net.process

    def batch_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)].float()
        eps = torch.randn(x0.shape, generator=gen)
        t = proc.t_min + (proc.t_max - proc.t_min) * torch.rand(batch_size, generator=gen,
                                                               dtype=torch.float64)
        return mixture_loss(model, x0, eps, t)

    return _fit(net, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

"""Training a score model on FP-Diffusion's ``x``-dependent forward SDE
(:class:`reverie.fp_diffusion.FlexibleSDE`, Du et al. 2023), which has no closed-form marginals:
the forward process is simulated once into a bank of states ``x_t`` (Euler-Maruyama on the
quadratic grid of the samplers), and the score is fitted by implicit score matching (Hyvarinen
2005), which needs samples of ``q_t`` only:

    L = E_t E_{x ~ q_t} sigma_t^2 [ tr(d s / d x) + |s|^2 / 2 ],

minimised (up to a constant) by ``s = grad log q_t``; the trace is exact (``n`` backward passes,
meant for small ``n``). ``s = net(x, t) / sigma_t`` with VP's ``sigma_t^2 = 1 - exp(-B(t))`` as a
preconditioner, ``B(t) = int_0^t beta``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.fp_diffusion import FlexibleSDE
from reverie.multivariate import _grid
from reverie.train.interpolants import FitResult, _fit

__all__ = ["FlexibleScoreModel", "implicit_score_matching", "simulate_bank", "train_flexible"]


class FlexibleScoreModel(nn.Module):
    """``score(x, t) = net(x, t) / sigma_t`` for a vector network ``net(x [B, n], t [B])`` (e.g.
    ``reverie.nets.MLP(dim=n)``); the score for :func:`reverie.fp_diffusion.sample_flexible`."""

    def __init__(self, net: nn.Module, process: FlexibleSDE):
        super().__init__()
        if not isinstance(process, FlexibleSDE):
            raise TypeError(f"process must be a FlexibleSDE, got {type(process).__name__}")
        self.net, self.process = net, process

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(-self.process.int_beta(t))).sqrt()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        out = self.net(x.to(dtype), t.to(dtype)) / self.sigma(t.to(dtype))[:, None]
        return out.to(x.dtype)


def implicit_score_matching(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    """Per-point ``sigma_t^2 [tr(d s / d x) + |s|^2 / 2]`` of ``s = model(x, t)`` (exact trace)."""
    x = x.detach().requires_grad_(True)
    s = model(x, t)
    trace = sum(torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i]
                for i in range(x.shape[1]))
    return model.sigma(t).to(s.dtype) ** 2 * (trace + 0.5 * (s**2).sum(1))


def simulate_bank(process: FlexibleSDE, data: Tensor, steps: int = 200, *,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(times [steps], states [steps, N, n])``: one forward path per data point, kept at every
    time of the grid ``t_min .. 1`` (quadratic, dense near the data)."""
    positive_int("steps", steps)
    times = [0.0] + _grid(process, steps - 1)[::-1]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        path = process.path(data.to(torch.float64), times, generator=g)
    return torch.tensor(times[1:], dtype=torch.float64), path[1:]


def train_flexible(model: FlexibleScoreModel, data: Tensor, *, steps: int = 2000,
                   bank_steps: int = 200, batch_size: int = 256, lr: float = 1e-3,
                   warmup: int = 100, ema_decay: float = 0.999, grad_clip: float = 1.0,
                   seed: int = 0, log_every: int = 100) -> FitResult:
    """Fit ``model`` to ``data [N, n]`` by implicit score matching on a simulated bank
    (:func:`simulate_bank`); ``t`` uniform over the bank's times."""
    if not isinstance(model, FlexibleScoreModel):
        raise TypeError(f"model must be a FlexibleScoreModel, got {type(model).__name__}")
    positive_int("batch_size", batch_size)
    times, bank = simulate_bank(model.process, data, bank_steps, seed=seed)
    if not bool(torch.isfinite(bank).all()):
        raise FloatingPointError("the simulated forward process diverged; use more bank_steps")

    def batch_loss(m: nn.Module, gen: torch.Generator) -> Tensor:
        k = torch.randint(0, len(times), (batch_size,), generator=gen)
        i = torch.randint(0, bank.shape[1], (batch_size,), generator=gen)
        return implicit_score_matching(m, bank[k, i], times[k]).mean()

    return _fit(model, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

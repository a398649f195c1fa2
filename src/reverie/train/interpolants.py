"""Training objectives for two-sided stochastic interpolants and Brownian bridges.

* :func:`interpolant_loss` -- Albergo, Boffi & Vanden-Eijnden (2023): the velocity ``b`` is the
  unique minimiser of ``E |b(t, x_t) - (alpha' x0 + beta' x1 + gamma' z)|^2`` (up to
  a constant independent of ``b``) and the denoiser ``eta_z`` of ``E |eta_z(t, x_t) - z|^2``,
  with ``t`` uniform in ``[0, 1]``;
* :func:`bridge_loss` -- BBDM (Li et al. 2023): the network predicts
  ``x_t - x0 = m_t (y - x0) + sqrt(delta_t) eps`` of the Brownian bridge;
* :func:`train_interpolant` and :func:`train_bridge` -- the short loop (Adam with warm-up,
  gradient clipping and the weight EMA of :mod:`reverie.train.loop`) around them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.bridge import BrownianBridge
from reverie.interpolants import TwoSidedInterpolant
from reverie.train.loop import ema_update

__all__ = [
    "INTERPOLANT_OBJECTIVES",
    "FitResult",
    "EndConditioned",
    "ExemplarConditioned",
    "interpolant_loss",
    "bridge_loss",
    "train_interpolant",
    "train_bridge",
    "field_of",
]

INTERPOLANT_OBJECTIVES = ("velocity", "denoiser")
Source = Tensor | Callable[[int, torch.Generator], Tensor]


@dataclass
class FitResult:
    """The EMA network (what to use), the trained one, mean losses per ``log_every`` steps and
    the wall time."""

    ema: nn.Module
    net: nn.Module
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def field_of(net: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> net(x, t)`` in the network's dtype, returned in ``x``'s (for
    :func:`reverie.interpolants.interpolant_ode` and friends)."""

    def fn(x: Tensor, t: Tensor) -> Tensor:
        dtype = next(net.parameters()).dtype
        return net(x.to(dtype), t.to(dtype)).to(x.dtype)

    return fn


class EndConditioned(nn.Module):
    """``net(cat[x, y], t)[:, :D]``: a vector network of dimension ``2 D`` (e.g.
    ``reverie.nets.MLP(dim=2 * D)``) conditioned on the bridge's end point ``y``; as a bridge
    denoiser it is called ``(x_t, t, y)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x, y], dim=1), t)[:, : x.shape[1]]


class ExemplarConditioned(nn.Module):
    """EBDM's exemplar conditioning in miniature: a global encoder ``encoder(e) -> code [B, K]``
    of the style exemplar and a vector network on ``cat[x_t, y, code]`` of dimension
    ``2 D + K`` (first ``D`` outputs used); as a bridge network it is called
    ``(x_t, t, y, exemplar)``."""

    def __init__(self, net: nn.Module, encoder: nn.Module):
        super().__init__()
        self.net, self.encoder = net, encoder

    def forward(self, x: Tensor, t: Tensor, y: Tensor, exemplar: Tensor) -> Tensor:
        code = self.encoder(exemplar.to(x.dtype))
        return self.net(torch.cat([x, y, code], dim=1), t)[:, : x.shape[1]]


def interpolant_loss(model: Callable[[Tensor, Tensor], Tensor], interpolant: TwoSidedInterpolant,
                     x0: Tensor, x1: Tensor, z: Tensor, t: Tensor, objective: str) -> Tensor:
    """The quadratic objective of ``b`` (``"velocity"``) or ``eta_z`` (``"denoiser"``)
    at ``x_t = alpha x0 + beta x1 + gamma z``, averaged over the batch."""
    if objective not in INTERPOLANT_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of "
                         f"{', '.join(INTERPOLANT_OBJECTIVES)}")
    xt = interpolant.sample(x0, x1, z, t)
    target = interpolant.velocity_target(x0, x1, z, t) if objective == "velocity" else z
    return ((model(xt, t.to(xt.dtype)) - target) ** 2).sum(1).mean()


def bridge_loss(model: Callable[..., Tensor], bridge: BrownianBridge,
                x0: Tensor, y: Tensor, eps: Tensor, t: Tensor,
                exemplar: Tensor | None = None) -> Tensor:
    """BBDM's objective ``|| m_t (y - x0) + sqrt(delta_t) eps - net(x_t, t, y) ||^2``:
    the network predicts ``x_t - x0``, so the bridge denoiser is ``x_t - net``. With an
    ``exemplar`` (EBDM) the network is called ``net(x_t, t, y, exemplar)``."""
    xt = bridge.add_noise(x0, y, eps, t)
    extra = () if exemplar is None else (exemplar,)
    return ((model(xt, t.to(xt.dtype), y, *extra) - (xt - x0)) ** 2).sum(1).mean()


def _draw(source: Source, n: int, gen: torch.Generator) -> Tensor:
    if isinstance(source, Tensor):
        return source[torch.randint(0, source.shape[0], (n,), generator=gen)]
    return source(n, gen)


def _fit(net: nn.Module, batch_loss: Callable[[nn.Module, torch.Generator], Tensor], steps: int,
         lr: float, warmup: int, ema_decay: float, grad_clip: float, seed: int,
         log_every: int) -> FitResult:
    """Adam with linear warm-up, gradient clipping and the EMA of :func:`reverie.train.train`."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    positive_int("steps", steps)
    if lr <= 0 or grad_clip <= 0 or not 0 <= ema_decay < 1:
        raise ValueError("need lr > 0, grad_clip > 0 and 0 <= ema_decay < 1")
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, window, t0 = [], [], time.perf_counter()
    net.train()
    for step in range(steps):
        loss = batch_loss(net, gen)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        opt.step()
        ema_update(ema, net, ema_decay, step)
        window.append(loss.item())
        if len(window) == log_every or step == steps - 1:
            losses.append(sum(window) / len(window))
            window = []
    net.eval()
    ema.eval()
    return FitResult(ema, net, steps, time.perf_counter() - t0, losses)


def train_interpolant(
    net: nn.Module, source: Source, target: Source, interpolant: TwoSidedInterpolant, *,
    objective: str = "velocity", steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
    warmup: int = 100, ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0,
    log_every: int = 100, t_eps: float = 1e-3,
) -> FitResult:
    """Fit ``net(x, t)`` to ``b`` (``objective="velocity"``) or ``eta_z`` (``"denoiser"``) of
    ``interpolant`` between ``source`` (``rho_0``) and ``target`` (``rho_1``), each a data
    tensor ``[N, D]`` (drawn with replacement) or a function ``(n, generator) -> [n, D]``; the
    pairs are independent (the paper's product coupling). ``t`` is uniform in
    ``[t_eps, 1 - t_eps]`` (``gamma'`` of ``gamma = sqrt(a t (1 - t))`` is infinite at the
    ends, and the velocity target's variance with it)."""
    if not 0 <= t_eps < 0.5:
        raise ValueError(f"t_eps must lie in [0, 0.5), got {t_eps}")
    if objective not in INTERPOLANT_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of "
                         f"{', '.join(INTERPOLANT_OBJECTIVES)}")
    positive_int("batch_size", batch_size)

    def batch_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        x0 = _draw(source, batch_size, gen).float()
        x1 = _draw(target, batch_size, gen).float()
        z = torch.randn(x0.shape, generator=gen)
        t = t_eps + (1 - 2 * t_eps) * torch.rand(batch_size, generator=gen)
        return interpolant_loss(model, interpolant, x0, x1, z, t, objective)

    return _fit(net, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)


def train_bridge(
    net: nn.Module, pairs: tuple[Tensor, ...], bridge: BrownianBridge, *, steps: int = 2000,
    batch_size: int = 256, lr: float = 1e-3, warmup: int = 100, ema_decay: float = 0.999,
    grad_clip: float = 1.0, seed: int = 0, log_every: int = 100, t_min: float = 1e-3,
) -> FitResult:
    """Fit ``net(x_t, t, y)`` (e.g. :class:`EndConditioned`) with BBDM's objective on paired
    data ``pairs = (x0 [N, D], y [N, D])`` (targets and their sources), ``t`` uniform in
    ``[t_min, 1]``. The bridge denoiser is ``lambda x, t, y: x - ema(x, t, y)``. EBDM: triples
    ``(x0, y, exemplar [N, ...])`` train an exemplar-conditioned network (e.g.
    :class:`ExemplarConditioned`), called ``(x_t, t, y, exemplar)``."""
    if len(pairs) not in (2, 3):
        raise ValueError(f"pairs must be (targets, sources) or (targets, sources, exemplars), "
                         f"got {len(pairs)} tensors")
    x0_all, y_all = pairs[:2]
    e_all = pairs[2] if len(pairs) == 3 else None
    if e_all is not None and e_all.shape[0] != x0_all.shape[0]:
        raise ValueError(f"need one exemplar per target, got {e_all.shape[0]} and "
                         f"{x0_all.shape[0]}")
    if x0_all.shape != y_all.shape:
        raise ValueError(f"targets and sources must have the same shape, got "
                         f"{tuple(x0_all.shape)} and {tuple(y_all.shape)}")
    positive_int("batch_size", batch_size)

    def batch_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, x0_all.shape[0], (batch_size,), generator=gen)
        x0, y = x0_all[idx].float(), y_all[idx].float()
        eps = torch.randn(x0.shape, generator=gen)
        t = t_min + (1 - t_min) * torch.rand(batch_size, generator=gen)
        e = None if e_all is None else e_all[idx].float()
        return bridge_loss(model, bridge, x0, y, eps, t, e)

    return _fit(net, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)

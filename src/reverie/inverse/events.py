"""User-defined event sampling and event probabilities.

Finzi, Boral, Wilson, Sha & Zepeda-Núñez, "User-defined Event Sampling and Uncertainty
Quantification in Diffusion Models for Physical Dynamical Systems" (ICML 2023). For an event
``E = {x : C(x) >= 0}`` given by a differentiable function ``C``, the conditional score is
``grad log p_t(x_t) + grad log p(E | x_t)``; the paper approximates ``x_0 | x_t`` by the
Gaussian ``N(D(x_t), Sigma_t)`` with Tweedie's covariance ``Sigma_t = (sigma_t^2 / alpha_t)
dD/dx_t`` and ``C`` by its linearisation at ``D(x_t)``, so

    p(E | x_t) ~ Phi( C(D(x_t)) / sqrt((sigma_t^2 / alpha_t) v^T (dD/dx_t) v) ),
    v = grad C(D(x_t)),

which becomes exact as the noise vanishes. One vector-Jacobian product ``w = (dD/dx_t)^T v``
gives both the variance ``(sigma_t^2 / alpha_t) v.w`` and the gradient of ``C(D(x_t))``
(``w`` itself; the variance is held fixed in the gradient). :func:`event_sample` walks the
DDPM sampler with this guidance and, to estimate ``P(E)`` and to correct the approximation,
weights each path by ``prod p(x_{i+1} | x_i) / q(x_{i+1} | x_i) * 1{C(x_0) >= 0}`` (the
unguided over the guided DDPM kernel; sequential importance sampling): the mean weight is an
unbiased estimate of ``P(E)`` under the sampler's law, and resampling by the weights gives
samples of ``p(x | E)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.inverse.guidance import Fixed
from reverie.inverse.methods import _log_normal
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid

__all__ = ["EventResult", "event_sample", "event_log_prob"]


@dataclass(frozen=True)
class EventResult:
    """``samples`` of ``p(x | E)`` (the guided paths resampled by their weights),
    ``proposals`` (the guided paths before resampling: the paper's approximate conditional
    samples), their ``log_weights``, the estimate ``probability`` of ``P(E)`` with its
    standard error ``stderr``, and the effective sample size ``ess`` of the weights."""

    samples: Tensor
    proposals: Tensor
    log_weights: Tensor
    probability: float
    stderr: float
    ess: float


def event_log_prob(
    denoiser: DenoiserBase, constraint: Callable[[Tensor], Tensor], x: Tensor, t: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(D(x), log p~(E | x_t = x), grad_x log p~(E | x_t = x))`` with the linearised,
    Tweedie-covariance approximation of the module docstring; ``constraint(x0) -> [B]``."""
    proc = denoiser.process
    a = float(proc.alpha(torch.tensor(t, dtype=torch.float64)))
    s = float(proc.sigma(torch.tensor(t, dtype=torch.float64)))
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        x0 = denoiser(xr, t)
        x0d = x0.detach().requires_grad_(True)
        c = constraint(x0d)
        if not isinstance(c, Tensor) or c.shape != (x.shape[0],):
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"constraint(x0) must return one value per sample [{x.shape[0]}],"
                             f" got {got}")
        (v,) = torch.autograd.grad(c.sum(), x0d)  # v = grad C at D(x_t)
        (w,) = torch.autograd.grad(x0, xr, v)  # w = (dD/dx_t)^T v = grad_x C(D(x_t))
    dims = tuple(range(1, x.ndim))
    var = (s**2 / a) * (v * w).sum(dims).clamp(min=0)  # v^T Sigma_t v
    sd = var.sqrt().clamp(min=1e-12)
    z = c.detach() / sd
    logp = torch.special.log_ndtr(z)
    # d/dx log Phi(z) = phi(z) / Phi(z) * w / sd (the variance held fixed)
    ratio = torch.exp(-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - logp)
    grad = (ratio / sd).reshape(-1, *[1] * (x.ndim - 1)) * w
    return x0.detach(), logp, grad


def event_sample(
    denoiser: DenoiserBase, constraint: Callable[[Tensor], Tensor], *, n: int, steps: int = 100,
    shape: tuple[int, ...] | None = None, scale: float = 1.0, grid: str | Tensor | None = None,
    dtype: torch.dtype = torch.float32, generator: Generators = None,
) -> EventResult:
    """Sample ``p(x | C(x) >= 0)`` and estimate ``P(C(x) >= 0)`` under the diffusion prior
    ``denoiser`` (Finzi et al. 2023; module docstring): ``n`` guided DDPM paths of ``steps``
    steps (``scale`` multiplies the guidance; 0 = unguided, plain Monte Carlo), weighted by
    the unguided over the guided kernel and the event's indicator. ``shape``: one sample's
    shape (default: the denoiser's ``sample_shape``). Costs one model call and one
    vector-Jacobian product per step and path."""
    positive_int("n", n)
    positive_int("steps", steps)
    if shape is None:
        shape = getattr(denoiser, "sample_shape", None)
        if shape is None:
            raise ValueError("pass shape= (the shape of one sample)")
    if isinstance(generator, (list, tuple)):
        raise ValueError("event_sample resamples across paths: pass one torch.Generator")
    proc, ddpm = denoiser.process, SAMPLERS["ddpm"]
    g = resolve_grid(ddpm, proc, steps, proc.default_grid if grid is None else grid)
    sch = Schedule.build(proc, g)
    x = sch.sigma[0] * randn((n, *shape), generator, dtype=dtype)
    logw = torch.zeros(n, dtype=torch.float64)
    state = State(x)
    for i in range(sch.steps):
        t = float(sch.t[i])
        if sch.sigma[i + 1] == 0:  # the last step: the prediction itself, unguided
            with torch.no_grad():
                x0 = denoiser(state.x, t)
            state = State(x0, i + 1)
            break
        x0, _, grad = event_log_prob(denoiser, constraint, state.x, t)
        a, s = sch.alpha[i], sch.sigma[i]
        guided = Fixed(x0 + scale * (s**2 / a) * grad, proc)  # Tweedie with the event score
        prop = ddpm.transition(guided, state, sch, generator=generator, cond={})
        base = ddpm.transition(Fixed(x0, proc), state, sch, generator=generator, cond={})
        std = float(prop.std)
        x_new = prop.mean + std * randn(prop.mean.shape, generator, dtype=dtype)
        # importance weight of the step: unguided over guided kernel
        logw += (_log_normal(x_new, base.mean, std**2)
                 - _log_normal(x_new, prop.mean, std**2)).to(torch.float64)
        state = State(x_new, i + 1)
    x_end = state.x
    with torch.no_grad():
        inside = constraint(x_end) >= 0
    logw = torch.where(inside, logw, torch.full_like(logw, -math.inf))
    w = torch.exp(logw)
    prob, stderr = float(w.mean()), float(w.std()) / math.sqrt(n) if n > 1 else math.inf
    if not bool(inside.any()):
        return EventResult(x_end[:0], x_end, logw, 0.0, stderr, 0.0)
    p = torch.softmax(logw, 0)
    ess = float(1.0 / (p**2).sum())
    gen = generator if isinstance(generator, torch.Generator) else None
    idx = torch.multinomial(p, n, replacement=True, generator=gen)
    return EventResult(x_end[idx], x_end, logw, prob, stderr, ess)

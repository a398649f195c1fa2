"""SuperDiff's Ito density estimator: ``log q_t(x_t)`` along a reverse-SDE sample, without
divergences.

Skreta, Atanackovic, Bose, Tong & Neklyudov (2025), "The Superposition of Diffusion Models
Using the Ito Density Estimator", Thm. 1. For the forward SDE ``dx = f(t) x dt + g(t) dW`` with
marginals ``q_t``, and *any* reverse-time process ``dx = u dtau + g dW`` (``tau = -t``; any drift
``u``, the forward diffusion ``g``), Ito's lemma and the Fokker-Planck equation give

    d log q_t(x) = <dx, s> + ( d f(t) + <f(t) x - g(t)^2 / 2 s, s> ) dtau,    s = grad log q_t(x),

because the Laplacian from the Fokker-Planck equation cancels against Ito's correction. Only
the score is needed (a denoiser's data prediction gives it: ``s = (alpha x0 - x) / sigma^2``),
and the drift ``u`` may be anything -- e.g. a superposition of several models
(:mod:`reverie.compose`).

In discrete time (a grid ``t_i > t_{i+1}``) the integrals of the step are taken exactly from
the process: ``int f dtau = log(alpha_i / alpha_{i+1}) =: F`` and ``int g^2 dtau`` is the
variance ``G = sigma_i^2 - e^{2F} sigma_{i+1}^2`` of the forward kernel from ``t_{i+1}`` to
``t_i``; the score is taken at the start of the step (Ito's left point):

    log q_{i+1}(x_{i+1}) - log q_i(x_i) ~ <x_{i+1} - x_i, s_i> + d F + F <x_i, s_i> - G/2 |s_i|^2.

The estimate is exact in the limit of small steps; its error per path is that of an Ito sum,
``O(sqrt(step))`` (the measured error against exact marginals is in BENCHMARKS.md). The
sampler's noise must be the forward diffusion's (``ddpm``, ``euler_maruyama`` with
``diffusion=None``, ``dpmpp_2m_sde``/``dpmpp_3m_sde`` with ``eta=1``): a deterministic or
differently-noised sampler would need the Laplacian back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options
from reverie._random import Generators
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.likelihood.flow import check_data, gaussian_prior
from reverie.process import GaussianProcess
from reverie.samplers import SAMPLERS, Sampler, Schedule, State, resolve_grid, walk

__all__ = [
    "ItoTrace",
    "ito_increment",
    "ito_log_density",
    "check_sde_sampler",
    "CachedDenoiser",
]


@dataclass(frozen=True)
class ItoTrace:
    """What :func:`ito_log_density` returns.

    ``x0`` -- the samples (after the final step to the clean end); ``t`` -- the noisy grid times
    ``t_0 > ... > t_{N-1}`` where the density was tracked; ``log_q`` -- ``[N, batch]`` tracked
    ``log q_t(x_t)``; ``path`` -- ``[N, batch, ...]`` the states ``x_{t_i}`` (``None`` unless
    ``keep_path``); ``nfe`` -- model calls.
    """

    x0: Tensor
    t: Tensor
    log_q: Tensor
    path: Tensor | None
    nfe: int


def _step_integrals(process: GaussianProcess, t: float, t_next: float) -> tuple[float, float]:
    """``(F, G)``: ``int f dtau = log(alpha_t / alpha_next)`` and the forward kernel's variance
    ``sigma_t^2 - (alpha_t / alpha_next)^2 sigma_next^2`` over the step ``t -> t_next``."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    a_n, s_n = float(process.alpha(t_next)), float(process.sigma(t_next))
    if not (a > 0 and a_n > 0):
        raise ValueError(
            f"the Ito density estimator needs alpha > 0 on the grid, got alpha({t:.6g}) = {a}; "
            f"start below the pure-noise end (e.g. a grid from t = 0.999 for a flow)"
        )
    if s_n <= 0:
        raise ValueError(
            "the Ito density estimator is defined on noisy times only; the step onto the clean "
            f"end (t = {t_next:.6g}, sigma = 0) has no density to track"
        )
    F = math.log(a) - math.log(a_n)
    return F, s**2 - math.exp(2 * F) * s_n**2


def ito_increment(
    score: Tensor,
    x: Tensor,
    x_next: Tensor,
    t: float,
    t_next: float,
    process: GaussianProcess,
) -> Tensor:
    """One step of the Ito density estimator (Skreta et al. 2025, Thm. 1, discretised as in
    the module docstring): ``log q_{t_next}(x_next) - log q_t(x)``, ``[batch]``.

    ``score`` -- ``grad log q_t(x)`` of the model whose density is tracked; ``x -> x_next`` --
    one step of a reverse SDE with the forward diffusion (any drift).
    """
    if not (x.shape == x_next.shape == score.shape):
        raise ValueError(
            f"score, x and x_next must have one shape, got {tuple(score.shape)}, "
            f"{tuple(x.shape)}, {tuple(x_next.shape)}"
        )
    F, G = _step_integrals(process, float(t), float(t_next))
    b = x.shape[0]
    s = score.reshape(b, -1).to(torch.float64)
    xf = x.reshape(b, -1).to(torch.float64)
    dx = x_next.reshape(b, -1).to(torch.float64) - xf
    d = s.shape[1]
    # <dx, s> + d F + F <x, s> - G/2 |s|^2
    return (dx * s).sum(1) + d * F + F * (xf * s).sum(1) - 0.5 * G * (s * s).sum(1)


def check_sde_sampler(info: Sampler, options: Mapping[str, Any]) -> dict[str, Any]:
    """Raise ``ValueError`` unless ``info`` with ``options`` samples a reverse SDE whose noise
    is the forward diffusion (what the Ito estimator needs); return the merged options."""
    opts = {**info.options, **options}
    good = ("ddpm, euler_maruyama (diffusion=None), dpmpp_2m_sde and dpmpp_3m_sde (eta=1)")
    if not info.stochastic:
        raise ValueError(
            f"the Ito density estimator needs a reverse-SDE sampler with the forward noise; "
            f"{info.name!r} is deterministic. Use one of: {good}"
        )
    for key, ok in (("eta", 1.0), ("s_noise", 1.0), ("diffusion", None)):
        if key in opts and opts[key] != ok:
            raise ValueError(
                f"the Ito density estimator needs the forward noise: {info.name!r} with "
                f"{key}={opts[key]!r} does not have it (use {key}={ok!r}); samplers: {good}"
            )
    return opts


class CachedDenoiser(DenoiserBase):
    """A denoiser that answers the call at ``(x, t)`` from a cached prediction (the same tensor
    object ``x`` and time ``t``) and every other call from ``fallback`` (or raises ``ValueError``
    when there is none). Lets a sampler transition reuse a prediction already made."""

    def __init__(self, x: Tensor, t: float, x0: Tensor, process: GaussianProcess,
                 fallback: Callable[..., Tensor] | None = None):
        self.x, self.t, self.x0 = x, float(t), x0
        self.process = process
        self.fallback = fallback

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        same_t = bool((tt - self.t).abs().max() <= 1e-9 * max(1.0, abs(self.t)))
        if x is self.x and same_t:
            return self.x0
        if self.fallback is None:
            raise ValueError(
                "this sampler evaluates the model away from the current state; composition by "
                "superposition needs a sampler that calls the model once per step at the "
                "current state (ddpm, euler_maruyama, dpmpp_2m_sde, dpmpp_3m_sde)"
            )
        return self.fallback(x, t, **cond)


def score_from_x0(x0: Tensor, x: Tensor, t: float, process: GaussianProcess) -> Tensor:
    """``grad log q_t(x) = (alpha x0 - x) / sigma^2`` from a data prediction (Tweedie)."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    return (a * x0 - x) / s**2


def ito_log_density(
    denoiser: DenoiserBase,
    noise: Tensor,
    sampler: str = "euler_maruyama",
    steps: int = 500,
    grid: str | Tensor | None = None,
    generator: Generators = None,
    *,
    cond: Mapping[str, Any] | None = None,
    prior: Callable[[Tensor], Tensor] | Tensor | None = None,
    keep_path: bool = False,
    sample_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> ItoTrace:
    """Sample a reverse SDE with a core sampler and track ``log q_t(x_t)`` of ``denoiser``'s
    marginals along each path with the Ito density estimator (Skreta et al. 2025, Thm. 1).

    ``noise`` -- unit noise, batch first (scaled by ``sigma(t_0)`` as in
    :func:`reverie.samplers.sample`). ``sampler``/``steps``/``grid``/``options`` -- as in
    :func:`reverie.samplers.sample`; the sampler must be a reverse SDE with the forward noise
    (:func:`check_sde_sampler`). ``prior`` -- the starting value ``log q_{t_0}(x_{t_0})``: a
    function of ``x_{t_0}``, a ``[batch]`` tensor, or ``None`` for ``N(0, sigma(t_0)^2 I)``.
    The density is tracked on the noisy grid points; the final step to the clean end is the
    sampler's own.
    """
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"denoiser must be a reverie DenoiserBase, got {type(denoiser).__name__}")
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    opts = check_sde_sampler(info, options)
    check_options("sampler", info.name, options, info.options)
    check_data(noise, sample_shape if sample_shape is not None
               else getattr(denoiser, "sample_shape", None), "noise")
    process = denoiser.process
    g = resolve_grid(info, process, steps, grid)
    sch = Schedule.build(process, g)
    cond = dict(cond or {})
    x = noise * float(process.sigma(g[0]))
    log_q = _initial_log_density(prior, x, float(process.sigma(g[0])))
    traced, path = [log_q], [x] if keep_path else None

    def step(state: State) -> State:
        nonlocal log_q
        i = state.i
        t, t_next = sch.t[i], sch.t[i + 1]
        x0 = denoiser(state.x, t, **cond)
        cached = CachedDenoiser(state.x, t, x0, process, fallback=denoiser)
        new = info.step(cached, state, sch, generator=generator, cond=cond, **opts)
        if sch.sigma[i + 1] > 0:
            score = score_from_x0(x0, state.x, t, process)
            log_q = log_q + ito_increment(score, state.x, new.x, t, t_next, process)
            traced.append(log_q)
            if path is not None:
                path.append(new.x)
        return new

    with torch.no_grad():
        state = walk(sch, State(x), step, name="ito_log_density")
    return ItoTrace(
        state.x,
        torch.tensor(sch.t[:-1], dtype=torch.float64),
        torch.stack(traced),
        torch.stack(path) if path is not None else None,
        state.nfe,
    )


def _initial_log_density(prior, x: Tensor, sigma: float) -> Tensor:
    if prior is None:
        return gaussian_prior(sigma)(x)
    if isinstance(prior, Tensor):
        val = prior.to(torch.float64)
    elif callable(prior):
        val = prior(x).to(torch.float64)
    else:
        raise TypeError(
            f"prior must be None, a [batch] tensor or a function, got {type(prior).__name__}"
        )
    if val.shape != (x.shape[0],):
        raise ValueError(
            f"the prior log-density must have shape [{x.shape[0]}], got {tuple(val.shape)}"
        )
    return val

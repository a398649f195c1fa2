"""Superposition of diffusion models with the Ito density estimator (SuperDiff).

Skreta, Atanackovic, Bose, Tong & Neklyudov (2025), "The Superposition of Diffusion Models
Using the Ito Density Estimator", sec. 3 (Prop. 3, Prop. 6). Given models ``q^1 .. q^K`` of one
process, sample the reverse SDE with the combined prediction ``sum_k kappa_k x0_k`` (the score
``sum_k kappa_k s_k``, ``sum_k kappa_k = 1``) while tracking every ``log q^k_t(x_t)`` with the
Ito estimator (:func:`reverie.likelihood.ito_increment`) -- no divergence, no extra model call:

* **OR** (mixture ``sum_k omega_k q^k``): ``kappa = softmax_k(log omega_k + log q^k_t(x_t))``,
  the exact score of the mixture when the tracked densities are exact;
* **AND** (equal densities): ``kappa`` is chosen at every step so that all tracked
  log-densities change by the same amount given the step's noise -- a ``K x K`` linear system
  per sample (the paper's closed form for ``K = 2``), because each model's increment is affine
  in ``kappa``: the step's mean is ``sum_j kappa_j m_j`` with ``m_j`` the sampler's mean for
  model ``j``'s prediction.

Steps come from the core samplers' transitions (``SAMPLERS[name].transition``); the sampler
must be a reverse SDE with the forward noise (``ddpm``, ``euler_maruyama``, ``dpmpp_2m_sde``,
``dpmpp_3m_sde``) that calls the model once per step, at the current state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options
from reverie._random import Generators, randn_like
from reverie._tensor import bcast
from reverie.compose.energy import check_same_process
from reverie.compose.operators import _sample_shape
from reverie.denoisers import DenoiserBase
from reverie.likelihood.flow import check_data
from reverie.likelihood.ito import (
    CachedDenoiser,
    _initial_log_density,
    check_sde_sampler,
    ito_increment,
    score_from_x0,
)
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid, walk

__all__ = ["MODES", "Superposition", "superpose"]

MODES = ("or", "and")


@dataclass(frozen=True)
class Superposition:
    """What :func:`superpose` returns: the samples ``x0``; ``t`` -- the noisy grid times;
    ``log_q`` -- ``[N, K, batch]`` tracked ``log q^k_t(x_t)``; ``kappa`` -- ``[N, K, batch]``
    the weights used at each step from those times; ``nfe`` -- model calls (``K`` per step)."""

    x0: Tensor
    t: Tensor
    log_q: Tensor
    kappa: Tensor
    nfe: int


def _combine(kappa: Tensor, parts: Sequence[Tensor]) -> Tensor:
    k = kappa.to(parts[0].dtype)
    return sum(bcast(k[j], parts[j]) * parts[j] for j in range(len(parts)))


def _and_kappa(
    scores: Sequence[Tensor], means: Sequence[Tensor], x: Tensor, noise: Tensor,
    t: float, t_next: float, process
) -> Tensor:
    """``kappa`` [K, B] with equal Ito increments of all models (SuperDiff Prop. 6).

    Increment of model ``k`` for the step ``x -> sum_j kappa_j m_j + noise``:
    ``sum_j kappa_j A[k, j] + c_k`` with ``A[k, j] = <s_k, m_j - x>`` and ``c_k`` the increment
    for a step of ``noise`` alone (``ito_increment`` is affine in the step)."""
    K, B = len(scores), x.shape[0]
    flat = lambda v: v.reshape(B, -1).to(torch.float64)  # noqa: E731
    A = torch.stack([torch.stack([(flat(s) * (flat(m) - flat(x))).sum(1) for m in means], 1)
                     for s in scores], 1)                                  # [B, K, K]
    c = torch.stack([ito_increment(s, x, x + noise, t, t_next, process) for s in scores], 1)
    # rows 1..K-1: (A[k] - A[0]) kappa = c_0 - c_k ; last row: sum kappa = 1
    M = torch.cat([A[:, 1:] - A[:, :1], torch.ones(B, 1, K, dtype=A.dtype)], 1)
    rhs = torch.cat([c[:, :1] - c[:, 1:], torch.ones(B, 1, dtype=A.dtype)], 1)
    uniform = torch.full((B, K), 1.0 / K, dtype=A.dtype)
    det = torch.linalg.det(M)
    ok = det.abs() > 1e-12 * M.abs().amax((1, 2)).clamp(min=1e-300) ** K
    safe = torch.where(ok[:, None, None], M, torch.eye(K, dtype=A.dtype))  # singular: uniform
    kappa = torch.where(ok[:, None], torch.linalg.solve(safe, rhs), uniform)
    kappa = torch.where(torch.isfinite(kappa).all(1, keepdim=True), kappa, uniform)
    return kappa.T                                                         # [K, B]


def superpose(
    models: Sequence[DenoiserBase],
    noise: Tensor,
    mode: str = "or",
    weights: Sequence[float] | None = None,
    sampler: str = "euler_maruyama",
    steps: int = 500,
    grid: str | Tensor | None = None,
    generator: Generators = None,
    *,
    cond: Mapping[str, Any] | None = None,
    prior: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]] | None = None,
    progress: bool = False,
    **options: Any,
) -> Superposition:
    """Sample the superposition of ``models`` (SuperDiff, Skreta et al. 2025, Alg. 1):
    ``mode="or"`` -- the mixture ``sum_k omega_k q^k`` (``weights`` = omega, uniform by
    default); ``mode="and"`` -- samples where all models' densities are equal.

    ``noise`` -- unit noise, batch first. ``sampler``/``steps``/``grid``/``options`` as in
    :func:`reverie.samplers.sample`; the sampler must be a reverse SDE with the forward noise.
    ``prior`` -- the starting ``log q^k_{t_0}`` (one function for all models, one per model, or
    ``None`` for ``N(0, sigma(t_0)^2 I)``). ``cond`` -- passed to every model call. The final
    step to the clean end uses the last weights (OR: recomputed from the tracked densities).
    """
    models = list(models)
    process = check_same_process(models)
    if mode not in MODES:
        raise ValueError(f"unknown superposition mode {mode!r}; expected one of {', '.join(MODES)}")
    K = len(models)
    if weights is not None and mode == "and":
        raise ValueError("weights apply to mode='or' (the mixture); mode='and' has none")
    om = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(
        [float(w) for w in weights], dtype=torch.float64)
    if om.shape != (K,) or not bool((om > 0).all()):
        raise ValueError(f"weights must be {K} positive numbers, got {om.tolist()}")
    log_om = torch.log(om / om.sum())
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    check_options("sampler", info.name, options, info.options)
    opts = check_sde_sampler(info, options)
    check_data(noise, _sample_shape(models), "noise")
    g = resolve_grid(info, process, steps, grid)
    sch = Schedule.build(process, g)
    cond = dict(cond or {})
    x = noise * float(process.sigma(g[0]))
    priors = list(prior) if isinstance(prior, (list, tuple)) else [prior] * K
    if len(priors) != K:
        raise ValueError(f"got {len(priors)} priors for {K} models")
    sigma0 = float(process.sigma(g[0]))
    log_q = torch.stack([_initial_log_density(p, x, sigma0) for p in priors])  # [K, B]
    traced_q, traced_k = [], []
    kappa = torch.exp(log_om)[:, None].expand(K, x.shape[0]).clone()

    def step(state: State) -> State:
        nonlocal log_q, kappa
        i = state.i
        t, t_next = sch.t[i], sch.t[i + 1]
        x = state.x
        preds = [m(x, t, **cond) for m in models]
        final = sch.sigma[i + 1] == 0
        if mode == "or" or final:
            if mode == "or":
                kappa = torch.softmax(log_q + log_om[:, None], 0)
            noise_draw = None
        else:
            means = [info.transition(CachedDenoiser(x, t, p, process), state, sch,
                                     generator=generator, cond=cond, **opts).mean
                     for p in preds]
            std = info.transition(CachedDenoiser(x, t, preds[0], process), state, sch,
                                  generator=generator, cond=cond, **opts).std
            noise_draw = _scaled_noise(std, x, generator)
            scores = [score_from_x0(p, x, t, process) for p in preds]
            kappa = _and_kappa(scores, means, x, noise_draw, t, t_next, process)
        combined = _combine(kappa, preds)

        def fallback(xx, tt, _k=kappa, **cc):
            return _combine(_k, [m(xx, tt, **cc) for m in models])

        tr = info.transition(CachedDenoiser(x, t, combined, process, fallback=fallback),
                             state, sch, generator=generator, cond=cond, **opts)
        if noise_draw is None:
            noise_draw = _scaled_noise(tr.std, x, generator)
        x_next = tr.mean + noise_draw
        if not final:
            traced_q.append(log_q)
            traced_k.append(kappa)
            log_q = log_q + torch.stack([
                ito_increment(score_from_x0(p, x, t, process), x, x_next, t, t_next, process)
                for p in preds])
        return State(x_next, i + 1, tr.memory, state.nfe + K)

    with torch.no_grad():
        state = walk(sch, State(x), step, name=f"superpose ({mode})", progress=progress)
    n = len(traced_q)
    return Superposition(
        state.x, torch.tensor(sch.t[:n], dtype=torch.float64),
        torch.stack(traced_q), torch.stack(traced_k), state.nfe,
    )


def _scaled_noise(std: float | Tensor, x: Tensor, generator: Generators) -> Tensor:
    if isinstance(std, Tensor):
        std = bcast(std, x).to(x.dtype)
    elif std == 0:
        return torch.zeros_like(x)
    return std * randn_like(x, generator)

"""Training-free samplers of the M2 row: EVODiff (a registered sampler) and DPM-Solver's
adaptive step size (a function: its model calls are not fixed by a grid).

* :func:`evodiff` -- Li, Chen & Zeng (NeurIPS 2025), "EVODiff: entropy-aware variance optimized
  diffusion inference" (arXiv:2509.26096): a data-prediction multistep solver whose difference
  terms are balanced and whose predictor-corrector weights are chosen per sample in closed
  form to reduce the conditional variance of the step, written after the authors' released
  sampler (``ShiguiLi/EVODiff``, ``code_demo/edm_cifar10/samplers/evodiff.py``).
* :func:`dpm_adaptive` -- Lu et al. (NeurIPS 2022), "DPM-Solver", Sec. 3.3 / Alg. 4-5: the
  embedded DPM-Solver-12 / 23 pair with a PID step-size controller (k-diffusion's
  ``sample_dpm_adaptive``); it reports the model calls it used.

Both work in EDM's VE coordinates ``x / alpha`` and ``kappa = sigma / alpha`` (k-diffusion's
state), so they run on every process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive
from reverie._random import Generators, randn_like
from reverie.brownian import NOISE_SAMPLERS, BrownianTree
from reverie.denoisers import DenoiserBase
from reverie.grids import make_grid
from reverie.samplers import (
    _TRAILING_ON_VP,
    Schedule,
    Transition,
    _ddim,
    _model,
    register,
)

__all__ = ["evodiff", "dpm_adaptive", "AdaptiveOutput"]


# ---------------------------------------------------------------------------------------------
# EVODiff
# ---------------------------------------------------------------------------------------------


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, per channel for images (the reference's ``bchw,bchw->bc``):
    summed over every dimension after the batch (after the channel when ``ndim >= 3``)."""
    dims = tuple(range(2 if a.ndim >= 3 else 1, a.ndim))
    return (a * b).sum(dims, keepdim=True)


def _proj(a: Tensor, b: Tensor) -> Tensor:
    """The projection coefficient ``<a, b> / <b, b>`` clamped to [-2, 2] (the reference's)."""
    return (_dot(a, b) / _dot(b, b).clamp_min(torch.finfo(b.dtype).tiny)).clamp(-2, 2)


@dataclass(frozen=True)
class _EvoStep:
    """The predictor of one EVODiff step in VE coordinates: what its corrector reuses."""

    y_euler: Tensor  # the first-order (DDIM) point
    y_pred: Tensor  # the variance-balanced second-order prediction
    d1: Tensor  # the balanced backward difference D1_0 = m0 - b1 m1
    r: float  # the log-SNR step ratio r = h_{i-1} / h_i
    r_i: Tensor  # the variance-controlled ratio
    h: float  # 1/kappa_t - 1/kappa_s (the step in e^lambda)
    k_s: float  # kappa at the step's start
    k_t: float  # kappa at the step's end
    base: float  # the balance base sqrt((kappa_t / kappa_s) / (kappa_s / kappa_prev))
    w: float  # the time weight 0.5 (1 - t_n^2)
    balance: bool  # balance the differences (b1, b2); else b = 1


def _evo_weight(sch: Schedule, j: int) -> float:
    """``0.5 (1 - t_n^2)``, ``t_n = (kappa_j + kappa_min) / (kappa_max + kappa_min)`` the
    normalised noise level of the step's end (the reference's ``t`` is EDM's sigma = kappa; the
    grid's largest finite and smallest positive kappa stand for its ``t_T``, ``t_0``)."""
    ks = [k for k in sch.sigma_ve if 0 < k < math.inf]
    tn = (sch.sigma_ve[j] + ks[-1]) / (ks[0] + ks[-1])
    return 0.5 * (1 - tn**2)


def _evo_predict(y: Tensor, m0: Tensor, m1: Tensor, sch: Schedule, i: int,
                 released: bool, balance: bool) -> _EvoStep:
    """EVODiff's predictor from grid point ``i`` to ``i + 1`` (``m0``, ``m1``: the data
    predictions at ``i`` and ``i - 1``)."""
    k1, k0, kt = sch.sigma_ve[i - 1], sch.sigma_ve[i], sch.sigma_ve[i + 1]
    h = 1 / kt - 1 / k0
    y_euler = (kt / k0) * y + (kt * h) * m0  # first order: DDIM in VE coordinates
    r = math.log(k1 / k0) / math.log(k0 / kt)  # r = h_{i-1} / h_i in log-SNR
    w = _evo_weight(sch, i + 1)
    base = math.sqrt((kt / k0) / (k0 / k1))
    # balance b1 between the grid's ratio and the projection of m0 on m1 (1: no balance)
    b1 = (1 - w) * base + w * _proj(m0, m1) if balance else torch.ones_like(_dot(m0, m1))
    d1 = m0 - b1 * m1  # balanced difference (variance-reduced D1_0)
    r_i = torch.full_like(b1, r)
    if released:  # the variance-controlled ratio sigmoid(|b1| / 4) r, within [r / 4, 3 r / 2]
        r_i = (torch.sigmoid(0.25 * b1.abs()) * r).clamp(0.25 * r, 1.5 * r)
    y_pred = y_euler + (0.5 * kt * h) / r_i * d1  # second-order probing step
    return _EvoStep(y_euler, y_pred, d1, r, r_i, h, k0, kt, base, w, balance)


def _evo_correct(p: _EvoStep, mt: Tensor, m0: Tensor, m1: Tensor, released: bool,
                 many_steps: bool) -> Tensor:
    """EVODiff's corrector of the step ``p`` with the prediction ``mt`` made at its end: the
    backward and forward differences interpolated with the weight ``eta`` that minimises the
    variance (squared norm) of their combination, per sample in closed form."""
    b2 = (1 - p.w) * p.base + p.w * _proj(mt, m0) if p.balance else 1.0
    d2 = mt - b2 * m0  # balanced forward difference D2_0
    if not released:
        # B = (1 - eta) D1 / r + eta D2, eta = argmin |B|^2 in [0, 1]: any eta keeps order 2
        back = p.d1 / p.r
        eta = _proj(back, back - d2).clamp(0, 1)
        return p.y_euler + (0.5 * p.k_t * p.h) * (back + eta * (d2 - back))
    b_pre, b_next = p.d1 / (p.r * p.h), p.r * d2 / p.h
    # eta* = <B_next + B_pre, B_next - B_pre> / (2 |B_next - B_pre|^2), squashed: sigmoid / 2
    eta = 0.5 * torch.sigmoid((0.5 * _proj(b_next + b_pre, b_next - b_pre)).abs())
    b_theta = (-eta / p.r) * p.d1 + (p.r * (1 - eta)) * d2
    # zeta*: the predictor's residual projected on D1_0, per unit of h kappa_t
    resid = p.y_pred - p.y_euler - (0.5 * p.k_t * p.h) / p.r_i * b_theta
    shift = _proj(resid, p.d1).abs() / (p.h * p.k_t) - 0.5
    if many_steps:  # > 20 steps: the sign follows m0's consistency with its difference
        d10 = (m0 - m1) / p.h
        consistency = torch.sigmoid(_proj(m0, d10) * (2 - (p.k_t / p.k_s) ** 2))
        zeta = torch.sigmoid(-shift * consistency)
    else:
        zeta = torch.sigmoid(shift)
    return p.y_euler + (0.5 * p.k_t * p.h) / zeta * b_theta


@register(
    "evodiff",
    # measured 1.66-1.71 from 16 to 64 log-SNR steps (tests/test_samplers.py): the per-sample
    # clamped eta makes the corrector's weight jump between steps
    order=1,
    stochastic=False,
    grid=_TRAILING_ON_VP,
    released=False,
    balance=False,
    description="EVODiff (Li et al. 2025): variance-optimised data-prediction multistep "
    "predictor-corrector",
)
def evodiff(denoiser, state, sch, *, generator, cond, released: bool,
            balance: bool) -> Transition:
    """EVODiff, Li, Chen & Zeng (2025), the second-order multistep data-prediction solver with
    entropy-aware variance optimisation, in ``y = x / alpha``, ``kappa = sigma / alpha``:

        predictor  y^p_{i+1} = y_E + h kappa_{i+1} / (2 r) D1,  D1 = D_i - b1 D_{i-1},
                   y_E = (kappa_{i+1} / kappa_i) y_i + kappa_{i+1} h D_i,
                   h = 1/kappa_{i+1} - 1/kappa_i,  r = h_{i-1} / h_i in log-SNR,
        corrector  y_{i+1} = y_E + h kappa_{i+1} / 2 ((1 - eta) D1 / r + eta D2),
                   D2 = D_{i+1} - b2 D_i,

    with ``D_{i+1}`` the prediction at ``y^p_{i+1}`` (reused by the next step: one model call
    per step), the balances ``b1``, ``b2`` mixing the grid's step ratio with the per-sample
    projection of each prediction on the previous one (weight ``(1 - t_n^2) / 2``), and
    ``eta`` the per-sample weight that minimises the variance (squared norm) of the
    interpolated difference, in closed form. First order (DDIM) on the first step and from
    alpha = 0; the final step onto sigma = 0 is the data prediction.

    ``released=True``: the coefficients of the authors' released sampler
    (``ShiguiLi/EVODiff``, ``code_demo/edm_cifar10/samplers/evodiff.py``): the predictor's ratio
    ``r_i = sigmoid(|b1| / 4) r``, the corrector ``y_E + h kappa / (2 zeta) B_theta`` with
    ``B_theta = -eta / r D1 + r (1 - eta) D2``, ``eta = sigmoid(|eta*|) / 2``, ``zeta`` a
    sigmoid of the predictor's residual (another rule above 20 steps). Those weights do not
    cancel the ``h^2`` term (measured order 0.87-0.89 on the Gaussian; on the 2-D test mixture
    sliced W1 0.08 at 100 steps, and 1.6 on EDM at 100 steps, where ``1 / zeta`` blows up), so
    the default keeps the paper's balanced differences and variance-optimal interpolation with
    the consistent second-order weights (measured order 1.7; the balances alone, ``balance=True``,
    measure 1.06: ``b1 - 1`` is O(h) on grids that are not uniform in log-SNR).

    memory = ``(y_i corrected, D_i, D_{i-1})`` after a second-order step (its corrector runs
    at the next call), ``(y_i, D_i)`` after a first-order one."""
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    if len(state.memory) == 3 and sch.sigma[j] > 0:  # correct x_i (on the final step: unused)
        y_prev, m0, m1 = state.memory
        p = _evo_predict(y_prev, m0, m1, sch, i - 1, released, balance or released)
        x = sch.alpha[i] * _evo_correct(p, x0, m0, m1, released, sch.steps > 20)
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    second = bool(state.memory) and math.isfinite(sch.lam[i - 1]) and sch.alpha[i] > 0
    if not second:  # DDIM
        eps = (x - sch.alpha[i] * x0) / sch.sigma[i]
        mean = _ddim(x0, eps, sch, j)
        return Transition(mean, 0.0, x0, (x / sch.alpha[i], x0) if sch.alpha[i] > 0 else ())
    m1 = state.memory[1]  # D_{i-1}
    p = _evo_predict(x / sch.alpha[i], x0, m1, sch, i, released, balance or released)
    return Transition(sch.alpha[j] * p.y_pred, 0.0, x0, (x / sch.alpha[i], x0, m1))


# ---------------------------------------------------------------------------------------------
# Adaptive DPM-Solver
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveOutput:
    """What :func:`dpm_adaptive` returns: the samples, the model calls used (the final step
    onto the clean end included), the accepted and rejected steps."""

    x0: Tensor
    nfe: int
    accepted: int
    rejected: int


class _PID:
    """k-diffusion's ``PIDStepSizeController`` (Soderlind's PID control of the step size; with
    the defaults ``pcoeff = dcoeff = 0``, ``icoeff = 1``: the classic I controller)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def dpm_adaptive(
    denoiser: DenoiserBase,
    noise: Tensor,
    *,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: str | BrownianTree = "gaussian",
    t_start: float | None = None,
    t_end: float | None = None,
    generator: Generators = None,
    cond: Mapping[str, Any] | None = None,
    max_nfe: int = 10_000,
) -> AdaptiveOutput:
    """Adaptive-step DPM-Solver, Lu et al. (2022) Sec. 3.3 (k-diffusion ``sample_dpm_adaptive``):
    from ``sigma(t_start) * noise`` (default ``t_max``; a thousandth of the time below it where
    the log-SNR is -inf there, as on a flow, as reverie's log-SNR grids start) to ``t_end``
    (default: the last point before the clean end of the process's default grid of 1000
    steps: sigma_min on EDM, t = 0 on a discrete VP, 1/1000 on a flow), each step
    solved by DPM-Solver-2 and -3 (``order=3``; -1 and -2 for ``order=2``) sharing their model
    calls, the error ``|x_low - x_high| / (atol + rtol max(|x_low|, |x_prev|))`` (RMS over the
    whole batch, so the batch shares its steps, as in k-diffusion) driving a PID controller of
    the step in ``lambda``; rejected steps are retried smaller. ``eta > 0``: ancestral noise
    after each accepted step (``noise_sampler``: ``"gaussian"``, ``"brownian_tree"`` or a
    :class:`reverie.BrownianTree`). Then one model call onto the clean end (the data
    prediction, as every reverie sampler ends). Tolerances act on ``x / alpha`` (k-diffusion's
    VE state). Returns :class:`AdaptiveOutput` with the model calls used."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init)):
        positive(name, value)
    if eta < 0 or s_noise < 0:
        raise ValueError(f"eta and s_noise must be >= 0, got eta={eta}, s_noise={s_noise}")
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise TypeError("noise must be a floating-point tensor (standard normal, batch first)")
    proc, cond = denoiser.process, dict(cond or {})
    if t_start is None:  # a thousandth below t_max where the log-SNR is -inf there (flows)
        t_start = float(proc.t_max)
        if not math.isfinite(float(proc.log_snr(torch.tensor(t_start, dtype=torch.float64)))):
            t_start -= (float(proc.t_max) - float(proc.t_clean)) / 1000
    if t_end is None:
        t_end = float(make_grid(proc, 1000, proc.default_grid)[-2])
    lam_of = lambda t: 0.5 * float(proc.log_snr(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    lam_start, lam_end = lam_of(t_start), lam_of(t_end)
    if not (math.isfinite(lam_start) and math.isfinite(lam_end)) or lam_end <= lam_start:
        raise ValueError(f"dpm_adaptive needs finite log-SNRs rising from t_start to t_end, got "
                         f"lambda {lam_start} -> {lam_end} (t {t_start} -> {t_end})")
    if not isinstance(noise_sampler, BrownianTree) and noise_sampler not in NOISE_SAMPLERS:
        raise ValueError(f"noise_sampler must be one of {', '.join(NOISE_SAMPLERS)} or a "
                         f"reverie.BrownianTree, got {noise_sampler!r}")
    if eta and noise_sampler == "brownian_tree":
        lo, hi = sorted((float(proc.t_clean), float(proc.t_max)))
        noise_sampler = BrownianTree.from_generator(generator, lo, hi)

    def t_of(lam: float) -> float:
        return float(proc.t_from_log_snr(torch.tensor(2 * lam, dtype=torch.float64)))

    calls = 0

    def eps_at(y: Tensor, lam: float) -> Tensor:  # eps from the data prediction, VE state y
        nonlocal calls
        calls += 1
        t = t_of(lam)
        a = float(proc.alpha(t))
        return (y - denoiser(a * y, t, **cond)) * math.exp(lam)  # (y - D) / kappa

    def kappa(lam: float) -> float:
        return math.exp(-lam)

    def solver(y: Tensor, s: float, t: float, eps0: Tensor) -> tuple[Tensor, Tensor]:
        """(x_low, x_high): DPM-Solver-1/2 or -2 (r1 = 1/3)/-3 from lambda s to t (Lu et al.
        2022, Alg. 1 and 2, noise prediction, in k-diffusion's VE form)."""
        h = t - s
        x1 = y - kappa(t) * math.expm1(h) * eps0  # DPM-Solver-1
        if order == 2:
            s1 = s + 0.5 * h
            u1 = y - kappa(s1) * math.expm1(0.5 * h) * eps0
            e1 = eps_at(u1, s1)
            x2 = x1 - kappa(t) / (2 * 0.5) * math.expm1(h) * (e1 - eps0)
            return x1, x2
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = s + r1 * h, s + r2 * h
        u1 = y - kappa(s1) * math.expm1(r1 * h) * eps0
        e1 = eps_at(u1, s1)  # shared by DPM-Solver-2 (r1 = 1/3) and -3
        x2 = x1 - kappa(t) / (2 * r1) * math.expm1(h) * (e1 - eps0)
        u2 = (y - kappa(s2) * math.expm1(r2 * h) * eps0
              - kappa(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - eps0))
        e2 = eps_at(u2, s2)
        x3 = x1 - kappa(t) / r2 * (math.expm1(h) / h - 1) * (e2 - eps0)
        return x2, x3

    a0 = float(proc.alpha(t_start))
    y = noise * (float(proc.sigma(t_start)) / a0)  # x / alpha at t_start
    y_prev = y
    pid = _PID(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, accepted, rejected, eps0 = lam_start, 0, 0, None
    atol_t = torch.tensor(atol, dtype=y.dtype)
    with torch.no_grad():
        while s < lam_end - 1e-5:
            if calls >= max_nfe:
                raise RuntimeError(f"dpm_adaptive used {calls} model calls without reaching "
                                   f"t_end (max_nfe={max_nfe}); loosen rtol/atol")
            t = min(lam_end, s + pid.h)
            t_, s_up = t, 0.0
            if eta:  # ancestral: solve to sigma_down, then add sigma_up (VE units)
                k_s, k_t = kappa(s), kappa(t)
                s_up = min(k_t, eta * math.sqrt(k_t**2 * (k_s**2 - k_t**2) / k_s**2))
                t_ = min(lam_end, -math.log(math.sqrt(k_t**2 - s_up**2)))
                s_up = math.sqrt(max(k_t**2 - kappa(t_) ** 2, 0.0))
            if eps0 is None:  # kept across rejected tries (k-diffusion calls it again)
                eps0 = eps_at(y, s)
            x_low, x_high = solver(y, s, t_, eps0)
            delta = torch.maximum(atol_t, rtol * torch.maximum(x_low.abs(), y_prev.abs()))
            error = float(torch.linalg.norm((x_low - x_high) / delta)) / x_low.numel() ** 0.5
            if pid.propose_step(error):
                if s_up:  # ancestral noise over [s, t] (in the process's time)
                    z = (noise_sampler.increment(t_of(s), t_of(t), y)
                         if isinstance(noise_sampler, BrownianTree) else randn_like(y, generator))
                    x_high = x_high + (s_up * s_noise) * z
                y_prev, y, s, eps0 = x_low, x_high, t, None
                accepted += 1
            else:
                rejected += 1
        t_last = t_of(s)
        x = float(proc.alpha(t_last)) * y
        calls += 1
        x0 = denoiser(x, t_last, **cond)  # onto the clean end: the data prediction
    return AdaptiveOutput(x0, calls, accepted, rejected)

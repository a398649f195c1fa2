"""Posterior samplers for ``y = A(x) + noise`` with a diffusion prior.

Every method is a function ``method(problem, steps=..., generator=..., **options) ->
(samples, Cost)`` registered in :data:`reverie.inverse.METHODS`; use them through
:func:`reverie.inverse.solve`. They walk a time grid of ``steps`` steps (the process's default
grid unless one is given) and build on the core samplers: guided methods wrap the prior
denoiser into a conditional one (:mod:`reverie.inverse.guidance`) or modify a sampler
transition, and the SMC methods reweight and resample the Gaussian kernels that
``SAMPLERS[name].transition`` exposes (resampling with ``State.select``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from reverie._checks import in_range
from reverie._random import Generators, randn, randn_like
from reverie._registry import Registry
from reverie.denoisers import DenoiserBase
from reverie.distributed import Population
from reverie.inverse.guidance import (
    DiffPIRDenoiser,
    Fixed,
    JointNoiseDenoiser,
    PiGDMDenoiser,
    posterior_variance,
)
from reverie.inverse.noise import GaussianNoise, NoiseModel
from reverie.inverse.operators import SVD, LinearOperator
from reverie.samplers import SAMPLERS, NonFiniteError, Schedule, State, run, walk

__all__ = ["Problem", "Cost", "Method", "METHODS", "register", "adapt_grid"]


@dataclass
class Problem:
    """A validated inverse problem: the prior ``denoiser``, the forward ``operator`` (a
    :class:`LinearOperator` or a differentiable function), the measurements ``y``
    ``[n, *out_shape]`` (one per requested sample), the ``noise`` model, the sample ``shape``
    (without batch), the solver ``dtype`` and the time ``grid``."""

    denoiser: DenoiserBase
    operator: LinearOperator | Callable[[Tensor], Tensor]
    y: Tensor
    noise: NoiseModel
    shape: tuple[int, ...]
    dtype: torch.dtype
    grid: Tensor
    extra: dict
    # solve(distributed=True): the SMC methods split their particles over the ranks
    split: bool = False

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def linear(self) -> bool:
        return isinstance(self.operator, LinearOperator)

    @property
    def noise_std(self) -> float:
        return self.noise.std  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        return self.operator.A(x) if self.linear else self.operator(x)

    def schedule(self, grid: Tensor | None = None) -> Schedule:
        return Schedule.build(self.denoiser.process, self.grid if grid is None else grid)

    def start(self, n: int, generator: Generators, sch: Schedule) -> Tensor:
        """``x`` at the first grid point: ``sigma(t_0) * N(0, I)``."""
        return sch.sigma[0] * randn((n, *self.shape), generator, dtype=self.dtype)


@dataclass(frozen=True)
class Cost:
    """Model calls per returned sample: ``nfe`` forward evaluations and ``vjp``
    vector-Jacobian products through the model."""

    nfe: int
    vjp: int = 0


@dataclass(frozen=True)
class Method:
    """A registered posterior sampler and what it needs."""

    name: str
    fn: Callable[..., tuple[Tensor, Cost]]
    paper: str
    linear: bool  # needs a LinearOperator
    svd: bool  # needs the operator's SVD
    gaussian: bool  # needs Gaussian noise
    particles: bool  # an SMC method (uses ``particles``)
    description: str

    @property
    def options(self) -> tuple[str, ...]:
        """The method's keyword options and their defaults are those of ``fn``."""
        sig = inspect.signature(self.fn)
        skip = {"problem", "steps", "generator", "particles", "_"}
        return tuple(p for p in sig.parameters if p not in skip and not p.startswith("_"))


#: All posterior samplers by name. ``list(METHODS)`` gives the names. Names are
#: case-insensitive and ``-`` / ``_`` are ignored (so ``"RED-diff"`` finds ``red_diff``).
METHODS: Registry[Method] = Registry(
    "method", "METHODS", fold=lambda name: name.lower().replace("-", "").replace("_", "")
)


def register(
    name: str,
    *,
    paper: str,
    description: str,
    linear: bool = False,
    svd: bool = False,
    gaussian: bool = False,
    particles: bool = False,
) -> Callable[[Callable[..., tuple[Tensor, Cost]]], Callable[..., tuple[Tensor, Cost]]]:
    """Decorator: add a method to :data:`METHODS` with what it needs (a linear operator, its
    SVD, Gaussian noise) and whether it is an SMC method using ``particles``."""

    def wrap(fn: Callable[..., tuple[Tensor, Cost]]) -> Callable[..., tuple[Tensor, Cost]]:
        METHODS.add(Method(name, fn, paper, linear, svd, gaussian, particles, description))
        return fn

    return wrap


_HINT = "try a smaller step size / guidance scale or more steps"


def _walk(sch: Schedule, state: State, step: Callable[[State], State], name: str,
          stop: int | None = None) -> State:
    """The core sampler loop (:func:`reverie.samplers.walk`) with this module's advice."""
    return walk(sch, state, step, name=name, stop=stop, hint=_HINT)


def _time(sch: Schedule, i: int) -> float:
    return sch.t[i]


# ---------------------------------------------------------------------------------------------
# DPS
# ---------------------------------------------------------------------------------------------


@register(
    "dps",
    paper="Chung et al., ICLR 2023",
    description="DPS: DDPM step + gradient of the residual norm through the network",
)
def dps(
    problem: Problem, *, steps: int, generator: Generators, scale: float = 1.0, **_: object
) -> tuple[Tensor, Cost]:
    """Diffusion posterior sampling (Chung et al., ICLR 2023, Alg. 1 Gaussian / Alg. 2 Poisson).

    Each step is the DDPM ancestral step (the core ``ddpm`` transition) followed by
    ``x_{i+1} -= scale * grad_{x_i} |W (y - A(D(x_i)))|`` with ``W`` the noise model's weighting
    (identity for Gaussian, ``diag(1/sqrt(2 y))`` for Poisson); the gradient goes through the
    network. ``scale`` is the paper's step size ``zeta'`` in the official code's normalisation
    (gradient of the norm, not of its square). Works with non-linear operators.
    """
    den, sch = problem.denoiser, problem.schedule()
    ddpm = SAMPLERS["ddpm"]
    state = State(problem.start(problem.n, generator, sch))
    y = problem.y

    def step(state: State) -> State:
        xr = state.x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = den(xr, _time(sch, state.i))
            norm = problem.noise.dps_residual(y, problem.forward(x0)).norm(dim=1)
            (grad,) = torch.autograd.grad(norm.sum(), xr)
        with torch.no_grad():
            state = ddpm.step(Fixed(x0.detach(), den.process), state, sch, generator=generator)
            return replace(state, x=state.x - scale * grad)  # x_{i+1} = x'_{i+1} - zeta grad

    state = _walk(sch, state, step, "dps")
    return state.x, Cost(sch.steps, sch.steps)


# ---------------------------------------------------------------------------------------------
# PiGDM, DiffPIR: conditional denoisers walked by a core sampler
# ---------------------------------------------------------------------------------------------


@register(
    "pigdm",
    paper="Song et al., ICLR 2023",
    linear=True,
    gaussian=True,
    description="pseudoinverse-guided diffusion: Gaussian likelihood with "
    "r_t^2 A A^T + sigma_y^2 I",
)
def pigdm(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    eta: float = 1.0,
    scale: float = 1.0,
    data_std: float = 1.0,
    **_: object,
) -> tuple[Tensor, Cost]:
    """Pseudoinverse-guided diffusion (Song et al., ICLR 2023): the DDIM sampler (``eta``; 1 =
    DDPM ancestral) on :class:`~reverie.inverse.guidance.PiGDMDenoiser`."""
    sch = problem.schedule()
    guided = PiGDMDenoiser(
        problem.denoiser,
        problem.operator,
        problem.y,
        problem.noise_std,
        scale=scale,
        data_std=data_std,
    )
    x = problem.start(problem.n, generator, sch)
    out = run("ddim", guided, x, problem.grid, generator=generator, eta=eta)
    return out.x0, Cost(sch.steps, sch.steps)


@register(
    "diffpir",
    paper="Zhu et al., CVPR 2023",
    linear=True,
    gaussian=True,
    description="plug-and-play: proximal data step on the prediction, then DDIM re-noising",
)
def diffpir(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    lam: float = 7.0,
    zeta: float = 0.1,
    **_: object,
) -> tuple[Tensor, Cost]:
    """DiffPIR (Zhu et al., CVPR 2023, Alg. 1): at each step the prediction is replaced by the
    data-consistent proximal point (:class:`~reverie.inverse.guidance.DiffPIRDenoiser`) and
    re-noised as ``alpha_{i+1} x0 + sigma_{i+1} (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)`` -- the
    core DDIM step whose noise ``eta_i`` is chosen so that its fresh-noise share is ``zeta``."""
    in_range("zeta", zeta, 0, 1)
    sch = problem.schedule()
    guided = DiffPIRDenoiser(
        problem.denoiser, problem.operator, problem.y, problem.noise_std, lam=lam
    )
    ddim = SAMPLERS["ddim"]
    state = State(problem.start(problem.n, generator, sch))

    def step(state: State) -> State:
        h = sch.h(state.i)
        # DDIM's noise std is eta sigma_j sqrt(1 - e^{-2h}); set it to sqrt(zeta) sigma_j
        eta = math.sqrt(zeta / -math.expm1(-2 * h)) if math.isfinite(h) else 0.0
        return ddim.step(guided, state, sch, generator=generator, eta=eta)

    with torch.no_grad():
        state = _walk(sch, state, step, "diffpir")
    return state.x, Cost(sch.steps)


# ---------------------------------------------------------------------------------------------
# DDRM
# ---------------------------------------------------------------------------------------------


def _spectral_measurement(svd: SVD, y: Tensor, noise_std: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(observed mask [n], ybar = (U^T y)_i / s_i [B, n], r_i = sigma_y / s_i [n])``."""
    s = svd.s.to(y.dtype)
    obs = s > 0
    safe = torch.where(obs, s, torch.ones_like(s))
    ybar = torch.where(obs, svd.Ut(y) / safe, 0.0)
    r = torch.where(obs, noise_std / safe, torch.full_like(s, math.inf))
    return obs, ybar, r


@register(
    "ddrm",
    paper="Kawar et al., NeurIPS 2022",
    linear=True,
    svd=True,
    gaussian=True,
    description="denoising diffusion restoration models, in the operator's SVD coordinates",
)
def ddrm(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    eta: float = 0.85,
    eta_b: float = 1.0,
    **_: object,
) -> tuple[Tensor, Cost]:
    """Denoising diffusion restoration models (Kawar et al., NeurIPS 2022, eq. 7-8), in the
    SVD coordinates ``xbar = V^T x / alpha`` (variance-exploding form) with ``ybar = U^T y / s``,
    ``r_i = sigma_y / s_i``. From ``sigma = sigma_ve(t_i)`` to ``sigma' = sigma_ve(t_{i+1})``:

    * unobserved (``s_i = 0``): ``x0 + sqrt(1 - eta^2) sigma' (xbar - x0) / sigma + eta sigma' z``
    * ``sigma' < r_i``: ``x0 + sqrt(1 - eta^2) sigma' (ybar - x0) / r_i + eta sigma' z``
    * ``sigma' >= r_i``: ``(1 - eta_b) x0 + eta_b ybar + sqrt(sigma'^2 - eta_b^2 r_i^2) z``

    and the start is ``ybar + sqrt(sigma_0^2 - r_i^2) z`` where ``sigma_0 >= r_i`` (eq. 7).
    """
    op: LinearOperator = problem.operator  # type: ignore[assignment]
    svd = op.svd
    den, sch = problem.denoiser, problem.schedule()
    obs, ybar, r = _spectral_measurement(svd, problem.y.to(problem.dtype), problem.noise_std)
    n, dim = problem.n, svd.s.numel()
    sig0 = sch.sigma_ve[0]
    z = randn((n, dim), generator, dtype=problem.dtype)
    start_obs = obs & (r <= sig0)
    xbar = torch.where(start_obs, ybar + torch.sqrt((sig0**2 - r**2).clamp(min=0)) * z, sig0 * z)

    def step(state: State) -> State:  # state.x: xbar
        i, xbar = state.i, state.x
        with torch.no_grad():
            x0 = svd.Vt(den(sch.alpha[i] * svd.V(xbar), _time(sch, i)))
        sc, sn = sch.sigma_ve[i], sch.sigma_ve[i + 1]
        z = randn((n, dim), generator, dtype=problem.dtype)
        c = math.sqrt(1 - eta**2)
        free = x0 + c * sn * (xbar - x0) / sc + eta * sn * z
        safe_r = torch.where(r > 0, r, torch.ones_like(r))
        below = x0 + c * sn * (ybar - x0) / safe_r + eta * sn * z
        above = (
            (1 - eta_b) * x0 + eta_b * ybar + torch.sqrt((sn**2 - eta_b**2 * r**2).clamp(min=0)) * z
        )
        return State(torch.where(~obs, free, torch.where(sn < r, below, above)), i + 1)

    xbar = _walk(sch, State(xbar), step, "ddrm").x
    return svd.V(xbar) * sch.alpha[-1], Cost(sch.steps)


# ---------------------------------------------------------------------------------------------
# RED-diff
# ---------------------------------------------------------------------------------------------


@register(
    "red_diff",
    paper="Mardani et al., ICLR 2024",
    description="variational: Adam on the data fit + a denoising regulariser, "
    "one model call per step",
)
def red_diff(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    lr: float = 0.1,
    lam: float = 0.25,
    obs_weight: float = 1.0,
    **_: object,
) -> tuple[Tensor, Cost]:
    """RED-diff (Mardani, Song, Kautz & Vahdat, ICLR 2024, Alg. 1): fit the mean ``mu`` of
    ``q(x0 | y) = N(mu, 0)`` with Adam on

        obs_weight * data_loss(y, A(mu)) + lam * (sigma_t / alpha_t) * <sg[eps_hat(x_t) - eps], mu>,

    ``x_t = alpha_t mu + sigma_t eps``, sweeping ``t`` down the grid (one model call per step,
    no network gradient). ``data_loss`` is ``|y - A mu|^2 / 2`` per measured entry (the official
    code) for Gaussian noise, the negative log-likelihood per entry otherwise. Each sample
    starts from ``A^+ y`` plus a random null-space component (a random point for a
    non-linear operator), so different samples explore different modes.
    """
    den, sch = problem.denoiser, problem.schedule()
    n, y = problem.n, problem.y.to(problem.dtype)
    xi = randn((n, *problem.shape), generator, dtype=problem.dtype)
    gaussian = isinstance(problem.noise, GaussianNoise)
    if problem.linear:
        op: LinearOperator = problem.operator  # type: ignore[assignment]
        # Tikhonov-regularised pseudo-inverse plus random content where A is (nearly) blind
        rho = max(problem.noise_std**2, 1e-3) if gaussian else 1e-3
        mu0 = xi + op.normal_solve(op.AT(y - op.A(xi)), 1.0, rho)
    else:
        mu0 = xi
    mu = mu0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99))
    m = y[0].numel()
    dims = tuple(range(1, mu.ndim))

    def step(state: State) -> State:  # state.x: mu, optimised in place
        i = state.i
        a, s = sch.alpha[i], sch.sigma[i]
        eps = randn_like(mu, generator)
        with torch.no_grad():
            eps_hat = den.eps(a * mu + s * eps, _time(sch, i))
        with torch.enable_grad():
            ax = problem.forward(mu)
            if gaussian:
                data = 0.5 * ((y - ax) ** 2).reshape(n, -1).sum(1) / m
            else:
                data = -problem.noise.log_likelihood(y, ax) / m
            reg = ((eps_hat - eps) * mu).mean(dims)
            loss = (obs_weight * data + lam * (s / a) * reg).sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
        return State(mu.detach(), i + 1)

    # no step from a noiseless grid point
    stop = next((i for i in range(sch.steps) if sch.sigma[i] == 0), sch.steps)
    _walk(sch, State(mu.detach()), step, "red_diff", stop)
    return mu.detach(), Cost(sch.steps)


# ---------------------------------------------------------------------------------------------
# SMC: shared helpers
# ---------------------------------------------------------------------------------------------


def _resample_clouds(
    logw: Tensor, p: int, generator: Generators, threshold: float = math.inf
) -> tuple[Tensor | None, Tensor]:
    """Multinomial resampling of each cloud of ``p`` consecutive particles whose effective
    sample size ``1 / sum w^2`` is below ``threshold * p`` (all clouds by default). Returns the
    flat ancestor indices (``None`` if no cloud resampled) and the new log-weights (0 in the
    resampled clouds)."""
    g = generator if isinstance(generator, torch.Generator) else None
    k = logw.numel() // p
    lw = logw.reshape(k, p).to(torch.float64)
    w = torch.softmax(lw, dim=1)
    do = (1.0 / (w**2).sum(1)) < threshold * p
    if not bool(do.any()):
        return None, logw
    draws = torch.multinomial(w, p, replacement=True, generator=g)
    keep = torch.arange(p).expand(k, p)
    idx = torch.where(do[:, None], draws, keep) + (torch.arange(k) * p)[:, None]
    new = torch.where(do[:, None], torch.zeros_like(lw), lw).reshape(-1).to(logw.dtype)
    return idx.reshape(-1), new


def _log_normal(x: Tensor, mean: Tensor, var: Tensor | float) -> Tensor:
    """Sum over all but the batch axis of ``log N(x; mean, var)`` (elementwise variances)."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    out = -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))
    return out.reshape(x.shape[0], -1).sum(1)


def _check_weights(logw: Tensor, p: int, name: str, i: int, sch: Schedule) -> None:
    """Raise :class:`NonFiniteError` naming the method and the step if a log-weight is NaN or
    +inf, or every particle of a cloud has weight 0 (``-inf``): resampling would be
    undefined. ``i``: the grid index the weights were computed at (0: the start)."""
    bad = torch.isnan(logw) | (logw == math.inf)
    dead = torch.isneginf(logw).reshape(-1, p).all(1)
    if bool(bad.any()) or bool(dead.any()):
        what = ("NaN or +inf in the SMC log-weights" if bool(bad.any()) else
                "every particle of a cloud has SMC weight 0 (log-weight -inf)")
        at = "at the start" if i == 0 else f"after step {i}/{sch.steps}"
        raise NonFiniteError(
            f"{name}: {what} {at} (t = {sch.t[i]:.6g}): the twist or the "
            "likelihood p(y | A(x)) is not finite there; check the forward model and the noise "
            "model, or use more steps")


def _clouds(problem: Problem, particles: int | None) -> tuple[int, int]:
    """``(clouds, particles per cloud)``: ``ceil(n / particles)`` independent SMC clouds, run
    side by side in one batch (the first ``n`` particles are returned)."""
    p = problem.n if particles is None else int(particles)
    if p < 1:
        raise ValueError(f"particles must be >= 1, got {particles}")
    return math.ceil(problem.n / p), p


def _inflated_nonlinear(
    xr: Tensor, x0: Tensor, resid: Tensor, r2: float, s2: float
) -> tuple[Tensor, Tensor]:
    """TDS's twist for a non-linear ``A`` with Gaussian noise: ``log N(y; A(x0), v I)`` (up to
    ``2 pi``) and its gradient in ``xr`` through the network, with the variance inflated as
    PiGDM's ``sigma_y^2 + r_t^2 A A^T`` for the linearisation ``A(x0) + J (x - x0)``, ``x ~
    N(x0, r_t^2 I)``, ``J`` the Jacobian of ``A`` at ``x0``, taken along the residual's
    direction ``u``: ``v = sigma_y^2 + r_t^2 |J^T u|^2`` (one vector-Jacobian product through
    ``A`` only; ``v`` is held fixed in the gradient). ``resid = y - A(x0)`` with ``x0 = D(xr)``
    in the autograd graph."""
    b = resid.shape[0]
    flat = resid.reshape(b, -1)
    u = flat.detach() / flat.detach().norm(dim=1, keepdim=True).clamp_min(1e-30)
    (jtu,) = torch.autograd.grad(resid, x0, u.reshape(resid.shape), retain_graph=True)
    v = s2 + r2 * jtu.detach().reshape(b, -1).pow(2).sum(1)  # u^T (s2 I + r2 J J^T) u
    ll = -0.5 * ((flat**2).sum(1) / v + flat.shape[1] * torch.log(v))
    (g,) = torch.autograd.grad(ll.sum(), xr)
    return ll.detach(), g


# ---------------------------------------------------------------------------------------------
# TDS
# ---------------------------------------------------------------------------------------------


@register(
    "tds",
    paper="Wu et al., NeurIPS 2023",
    particles=True,
    description="twisted SMC for any likelihood and differentiable operator (asymptotically exact)",
)
def tds(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    particles: int | None = None,
    twist_scale: float = 1.0,
    data_std: float = 1.0,
    inflate: bool | None = None,
    resample_ess: float = 0.5,
    **_: object,
) -> tuple[Tensor, Cost]:
    """Twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham, NeurIPS 2023, Alg. 1).

    Particles follow the DDPM kernel of the *twisted* conditional denoiser
    ``D + (sigma^2 / alpha) grad log p~_t(y | x_t)`` (the core ``ddpm`` transition) and are
    reweighted by

        w = p(x_{i+1} | x_i) p~_{i+1}(y | x_{i+1}) / [p~_i(y | x_i) q(x_{i+1} | x_i, y)],

    with the untwisted kernel ``p`` from the same transition on the prior prediction; resampling
    (multinomial) when the effective sample size drops below ``resample_ess * particles`` and
    at the end. The twist is ``p~_t(y | x_t) = p(y | A(D(x_t)))`` raised to ``twist_scale`` (any
    noise model, any differentiable operator); with Gaussian noise it is by default
    (``inflate``) widened by the denoiser's uncertainty ``r_t^2`` (``Var[x0 | x_t]`` for data of
    std ``data_std``): PiGDM's ``N(y; A D, sigma_y^2 + r_t^2 A A^T)`` for a linear operator, and
    for a non-linear ``A`` the same with the Jacobian ``J`` of ``A`` at ``D(x_t)`` taken along
    the residual, ``N(y; A(D), (sigma_y^2 + r_t^2 |J^T u|^2) I)``, ``u = (y - A(D)) / |y -
    A(D)|`` (:func:`_inflated_nonlinear`). The un-inflated twist (``inflate=False``) is too
    sharp when ``sigma_y`` is small: its gradient ``J^T (y - A(D)) / sigma_y^2`` throws the
    particles off (NaN on phase retrieval at ``sigma_y = 0.05``). Any twist leaves the target
    unchanged (the twists telescope in the weights): the last step onto ``sigma = 0`` is the
    plain prediction, weighted by the true likelihood ``p(y | x0)`` in place of the last twist,
    so the target ``p(x) p(y | x)`` is exact as the particles and steps grow. Log-weights are
    kept in log space (resampling by softmax); a NaN / +inf weight, or a cloud whose weights
    are all 0, raises :class:`~reverie.samplers.NonFiniteError` naming the step. Returns ``n``
    samples from ``ceil(n / particles)`` independent clouds (``particles`` defaults to ``n``:
    one cloud).
    """
    if isinstance(generator, (list, tuple)):
        raise ValueError("SMC methods resample across particles: pass one torch.Generator")
    den, sch = problem.denoiser, problem.schedule()
    ddpm = SAMPLERS["ddpm"]
    gauss = isinstance(problem.noise, GaussianNoise)
    if inflate is None:
        inflate = gauss
    if inflate and not gauss:
        raise ValueError("inflate=True needs Gaussian noise (the twist's variance is inflated)")
    if not inflate and gauss and problem.noise_std == 0:
        raise ValueError("a noiseless measurement needs the inflated twist (inflate=True)")
    y1 = problem.y[:1]
    exact_final = not (gauss and problem.noise_std == 0)

    def twist(x: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(D(x), log p~_i(y | x), grad_x log p~_i)`` at grid point ``i``."""
        xr = x.detach().requires_grad_(True)
        yb = y1.expand(x.shape[0], *y1.shape[1:])
        with torch.enable_grad():
            x0 = den(xr, _time(sch, i))
            ax = problem.forward(x0)
            if inflate:
                t = torch.tensor(sch.t[i], dtype=torch.float64)
                r2 = float(posterior_variance(den.process, t, data_std))
                resid = yb - ax
                if problem.linear:
                    op: LinearOperator = problem.operator  # type: ignore[assignment]
                    v = op.gram_solve(resid.detach(), r2, problem.noise_std**2)
                    # log N(y; A x0, Sigma) up to the x-independent normaliser
                    ll = -0.5 * (resid * v).reshape(x.shape[0], -1).sum(1)
                    (g,) = torch.autograd.grad(x0, xr, op.AT(v))
                else:
                    ll, g = _inflated_nonlinear(xr, x0, resid, r2, problem.noise_std**2)
            else:
                ll = problem.noise.log_likelihood(yb, ax)
                (g,) = torch.autograd.grad(ll.sum(), xr)
        return x0.detach(), twist_scale * ll.detach(), twist_scale * g

    k, p = _clouds(problem, particles)
    total = k * p
    pop = Population(total, problem.split, block=p)  # this rank's share of every cloud
    x = pop.local(problem.start(total, generator, sch))
    x0, ll, g = twist(x, 0)
    logw = ll.clone()
    _check_weights(pop.gather(logw), p, "tds", 0, sch)

    def step(state: State) -> State:
        nonlocal x0, ll, g, logw
        i = state.i
        idx, logw = _resample_clouds(pop.gather(logw), p, generator, resample_ess)
        logw = pop.local(logw)
        if idx is not None:
            x, x0, ll, g = pop.take(idx, state.x, x0, ll, g)
            state = State(x, state.i, (), state.nfe)
        if sch.sigma[i + 1] == 0:  # final step: the prediction itself
            state = ddpm.step(Fixed(x0, den.process), state, sch, generator=generator)
            if exact_final:  # replace the last twist by the true likelihood p(y | x0)
                yb = y1.expand(len(x0), *y1.shape[1:])
                with torch.no_grad():
                    logw = logw + problem.noise.log_likelihood(yb, problem.forward(state.x)) - ll
            _check_weights(pop.gather(logw), p, "tds", i + 1, sch)
            return state
        a, s = sch.alpha[i], sch.sigma[i]
        twisted = Fixed(x0 + (s**2 / a) * g, den.process)  # Tweedie with the twist
        prop = ddpm.transition(twisted, state, sch, generator=generator, cond={})
        base = ddpm.transition(Fixed(x0, den.process), state, sch, generator=generator, cond={})
        std = float(prop.std)
        z = randn((total, *prop.mean.shape[1:]), generator, dtype=prop.mean.dtype,
                  device=prop.mean.device)  # the whole population's noise: this rank's rows
        x_new = prop.mean + std * pop.local(z)
        x0, ll_new, g = twist(x_new, i + 1)
        # w = p(x'|x) p~'(y|x') / (p~(y|x) q(x'|x, y))
        logw = (
            logw
            + _log_normal(x_new, base.mean, std**2)
            + ll_new
            - ll
            - _log_normal(x_new, prop.mean, std**2)
        )
        ll = ll_new
        _check_weights(pop.gather(logw), p, "tds", i + 1, sch)
        return State(x_new, i + 1, (), state.nfe + 1)

    state = _walk(sch, State(x), step, "tds")
    idx, _ = _resample_clouds(pop.gather(logw), p, generator)
    samples = pop.gather(state.x)[idx][: problem.n]
    return samples, Cost(sch.steps, sch.steps - 1)


# ---------------------------------------------------------------------------------------------
# MCGdiff
# ---------------------------------------------------------------------------------------------


def adapt_grid(process, grid: Tensor, times: Tensor) -> Tensor:
    """Move, for each time in ``times`` (inside the grid's range), the nearest free interior
    grid point onto it (MCGdiff's ``get_optimal_timesteps_from_singular_values``), keeping the
    grid strictly decreasing and its length."""
    g = grid.clone()
    inner = list(range(1, g.numel() - 1))
    used: set[int] = set()
    lo, hi = float(g[-1]), float(g[0])
    for tau in sorted({float(t) for t in times.tolist() if lo < float(t) < hi}, reverse=True):
        free = [j for j in inner if j not in used]
        if not free:
            break
        j = min(free, key=lambda k: abs(float(g[k]) - tau))
        g[j] = tau
        used.add(j)
    g = torch.unique(g).flip(0)
    from reverie.grids import check_grid

    return check_grid(g, process)


@register(
    "mcg_diff",
    paper="Cardoso et al., ICLR 2024",
    linear=True,
    svd=True,
    gaussian=True,
    particles=True,
    description="SVD-based SMC filter for linear-Gaussian problems (asymptotically exact)",
)
def mcg_diff(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    particles: int | None = None,
    eta: float = 1.0,
    kappa: float = 1e-4,
    adapt: bool = True,
    resample_ess: float = 0.5,
    **_: object,
) -> tuple[Tensor, Cost]:
    """Monte Carlo guided diffusion (Cardoso, Janati, Le Corff & Moulines, ICLR 2024, Alg. 1)
    for linear-Gaussian problems, in the SVD coordinates ``z = V^T x``.

    Observed coordinate ``i`` (``s_i > 0``) sees ``ybar_i = x0_i + r_i e`` with ``r_i =
    sigma_y / s_i``: exactly the forward process at the time ``tau_i`` where ``sigma_ve = r_i``.
    So ``p(x0 | y) = p(x0 | z_{tau_i, i} = alpha_{tau_i} ybar_i for all i)``: an inpainting
    problem at times ``tau_i``. Before ``tau_i`` the particles are guided by the potential
    ``N(z_i; alpha_t ybar_i, sigma_t^2 - alpha_t^2 r_i^2 + kappa)`` (the pinned value diffused
    forward), at ``tau_i`` the coordinate is pinned (variance ``kappa``), afterwards it moves with
    the prior. Each step takes the core DDIM transition (``eta``; 1 = DDPM), weights by the
    predictive likelihood of the next potential over the current one (fully adapted: the
    weights depend only on the ancestor), resamples (multinomial) when the effective sample
    size falls below ``resample_ess * particles`` (the paper resamples every step, which only
    adds genealogical drift when the weights are even) and samples observed coordinates from
    the Gaussian product of kernel and potential. The grid is adapted so that each ``tau_i``
    is a grid point (``adapt``);
    coordinates with ``r_i`` above the starting noise are conditioned exactly at the start.
    """
    if isinstance(generator, (list, tuple)):
        raise ValueError("SMC methods resample across particles: pass one torch.Generator")
    op: LinearOperator = problem.operator  # type: ignore[assignment]
    svd = op.svd
    den = problem.denoiser
    proc = den.process
    dtype = problem.dtype
    obs, ybar, r = _spectral_measurement(svd, problem.y[:1].to(dtype), problem.noise_std)
    ybar = ybar[0]
    sig_start = float(proc.sigma_ve(problem.grid[0]))
    inside = obs & (r < sig_start)
    tau = torch.full_like(r, math.inf)
    if bool(inside.any()):
        tau[inside] = proc.t_from_sigma_ve(r[inside].to(torch.float64).clamp(min=1e-300)).to(dtype)
        tau[inside & (r == 0)] = proc.t_clean
    grid = adapt_grid(proc, problem.grid, tau[inside]) if adapt else problem.grid
    sch = problem.schedule(grid)
    t_grid = torch.tensor(sch.t, dtype=dtype)
    # pin index: the grid point where coordinate i is pinned (nearest to tau_i)
    pin = torch.full(r.shape, -1, dtype=torch.long)
    if bool(inside.any()):
        pin[inside] = (t_grid[None, :] - tau[inside][:, None]).abs().argmin(1)
    early = obs & ~inside  # r_i >= sigma_ve(t_0)
    ddim = SAMPLERS["ddim"]

    def potential_var(j: int, active: Tensor) -> Tensor:
        a, s = sch.alpha[j], sch.sigma[j]
        return (s**2 - a**2 * r[active] ** 2).clamp(min=0) + kappa

    k, p = _clouds(problem, particles)
    total = k * p
    pop = Population(total, problem.split, block=p)  # this rank's share of every cloud
    z = sch.sigma[0] * randn((total, svd.s.numel()), generator, dtype=dtype)
    if bool(early.any()):
        # exact conditioning at t_0: N(0, s0^2) x N(z; a0 ybar, a0^2 (r^2 - sve0^2))
        a0, s0 = sch.alpha[0], sch.sigma[0]
        lik_var = a0**2 * (r[early] ** 2 - sig_start**2)
        post_var = 1.0 / (1.0 / s0**2 + 1.0 / lik_var)
        post_mean = post_var * a0 * ybar[early] / lik_var
        z[:, early] = post_mean + post_var.sqrt() * z[:, early] / s0
    z = pop.local(z)
    # the initial weight g_0(z_0) cancels against the first step's division by g_0
    logw = torch.zeros(len(z), dtype=dtype)

    def step(state: State) -> State:
        nonlocal logw
        i = state.i
        j = i + 1
        with torch.no_grad():
            tr = ddim.transition(den, state, sch, generator=generator, cond={}, eta=eta)
        m = svd.Vt(tr.mean)
        c2 = float(tr.std) ** 2
        active = inside & (pin > j)  # still guided by a potential
        pinned = inside & (pin == j)
        guided = active | pinned
        var = torch.empty_like(r)
        var[active] = potential_var(j, active)
        var[pinned] = kappa
        target = sch.alpha[j] * ybar
        # fully adapted weights: predictive likelihood of the next potential / current one.
        # The explicit last step onto sigma = 0 is deterministic; for coordinates pinned there
        # (noiseless data) its kernel variance is taken as sigma_ve^2, the variance of x0 given
        # x_t at small noise (DDPM's last-step variance), so the weights do not degenerate.
        kern = torch.full_like(r, c2)
        if c2 == 0 and sch.sigma[j] == 0:
            kern[pinned] = sch.sigma_ve[i] ** 2
        logw = logw + _log_normal(
            target[guided].expand(len(m), -1), m[:, guided], kern[guided] + var[guided]
        )
        # adaptive resampling: resampling at even weights only adds genealogical drift
        idx, logw = _resample_clouds(pop.gather(logw), p, generator, resample_ess)
        logw = pop.local(logw)
        if idx is not None:
            (m,) = pop.take(idx, m)
        noise = pop.local(randn((total, m.shape[1]), generator, dtype=dtype))
        z_new = m + math.sqrt(c2) * noise  # prior kernel for free coordinates
        if bool(guided.any()):
            v = var[guided]
            mean = (m[:, guided] * v + target[guided] * c2) / (v + c2)
            z_new[:, guided] = mean + torch.sqrt(c2 * v / (v + c2)) * noise[:, guided]
        if sch.sigma[j] == 0 and bool(pinned.any()):
            z_new[:, pinned] = target[pinned]  # noiseless: exactly the observation
        # the next step divides by the current potential of the still-active coordinates
        logw = logw - _log_normal(z_new[:, active], target[active].expand(len(m), -1),
                                  var[active])
        return State(svd.V(z_new), j, (), state.nfe + 1)

    state = _walk(sch, State(svd.V(z)), step, "mcg_diff")
    idx, _ = _resample_clouds(pop.gather(logw), p, generator)
    samples = pop.gather(state.x)[idx][: problem.n]
    return samples, Cost(sch.steps)


# ---------------------------------------------------------------------------------------------
# Joint signal + structured noise
# ---------------------------------------------------------------------------------------------


@register(
    "structured_noise",
    paper="Stevens et al., TMLR 2025",
    linear=True,
    gaussian=True,
    description="joint posterior over signal and structured noise with two diffusion priors",
)
def structured_noise(
    problem: Problem,
    *,
    steps: int,
    generator: Generators,
    noise_denoiser: DenoiserBase | None = None,
    eta: float = 1.0,
    lam: float = 1.0,
    kappa: float = 1.0,
    data_std: float = 1.0,
    noise_data_std: float = 1.0,
    **_: object,
) -> tuple[Tensor, Cost]:
    """Joint posterior over signal and structured noise with two diffusion priors (Stevens,
    van Gorp, Meral, Shin, Yu, Robert & van Sloun, "Removing Structured Noise with Diffusion
    Models", TMLR 2025, Alg. 1): the DDIM sampler (``eta``) walks ``[x, n]`` with the joint
    conditional denoiser :class:`~reverie.inverse.guidance.JointNoiseDenoiser`. The noise ``n``
    has the measurement's shape; ``noise_std`` is the extra white noise (may be 0). The
    sampled noise is kept in ``problem.extra["noise"]``."""
    if noise_denoiser is None:
        raise ValueError("method 'structured_noise' needs noise_denoiser= (the prior of the noise)")
    if not isinstance(noise_denoiser, DenoiserBase):
        raise TypeError(
            f"noise_denoiser must be a reverie denoiser, got {type(noise_denoiser).__name__}"
        )
    p1, p2 = problem.denoiser.process, noise_denoiser.process
    probe = problem.grid[:-1]
    if type(p1) is not type(p2) or not (
        torch.allclose(p1.alpha(probe), p2.alpha(probe))
        and torch.allclose(p1.sigma(probe), p2.sigma(probe))
    ):
        raise ValueError(
            f"the signal and noise denoisers must share one noising process; got {p1!r} and {p2!r}"
        )
    op: LinearOperator = problem.operator  # type: ignore[assignment]
    sch = problem.schedule()
    joint = JointNoiseDenoiser(
        problem.denoiser,
        noise_denoiser,
        op,
        problem.y,
        problem.noise_std,
        lam=lam,
        kappa=kappa,
        data_std=data_std,
        noise_data_std=noise_data_std,
    )
    z = sch.sigma[0] * randn((problem.n, op.in_dim + op.out_dim), generator, dtype=problem.dtype)
    out = run("ddim", joint, z, problem.grid, generator=generator, eta=eta)
    x, n = joint.split(out.x0)
    problem.extra["noise"] = n
    return x, Cost(2 * sch.steps, 2 * sch.steps)


# the order in listings: the classic guided samplers first, then the SMC methods
METHODS.reorder(["dps", "pigdm", "ddrm", "red_diff", "diffpir", "tds", "mcg_diff"])

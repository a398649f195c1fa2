"""Training-free samplers for Gaussian diffusion and flow models.

Every sampler is written once, as a *transition* over an explicit state (DESIGN.md, idea 3):

    transition(denoiser, state, schedule, i) -> Transition(mean, std, x0, memory, nfe)

and ``x_{i+1} = mean + std * z``. A deterministic solver has ``std = 0``; a stochastic one
exposes its Gaussian kernel, which particle methods (SMC, search) reweight or twist. The
whole sampler is the loop :func:`run` over that transition; nothing is hidden in objects and
the state (``x``, grid index, the sampler's short memory of past predictions) can be copied,
indexed and resampled.

All samplers are written with ``x_t = alpha x0 + sigma eps`` and the half log-SNR
``lambda = log(alpha / sigma)``, so they work for any process (VP, VE, EDM, flows, custom
interpolants). Where a method is defined in the VE coordinates of EDM / k-diffusion
(``x / alpha``, ``sigma / alpha``), the step is written in those coordinates and mapped back.
The final step onto the clean end (``sigma = 0``) is taken explicitly by every sampler.

The registry :data:`SAMPLERS` maps names to :class:`Sampler` entries; each entry is also the
pure sampler function ``SAMPLERS[name](denoiser, x, grid, ...) -> x0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, positive_int
from reverie._progress import progress_bar
from reverie._random import Generators, randn_like, split_generators
from reverie._registry import Registry
from reverie._tensor import bcast
from reverie.brownian import step_noise
from reverie.denoisers import DenoiserBase
from reverie.grids import GRIDS, check_grid, make_grid
from reverie.process import GaussianProcess, RectifiedFlow

__all__ = [
    "Schedule",
    "State",
    "Transition",
    "Sampler",
    "SAMPLERS",
    "SampleOutput",
    "NonFiniteError",
    "run",
    "walk",
    "check_finite",
    "sample",
    "resolve_grid",
    "default_grid_name",
    "warm_start",
]


class NonFiniteError(FloatingPointError):
    """A sampler produced NaN or inf; the message names the step."""


# ---------------------------------------------------------------------------------------------
# Schedule, state and transition
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A grid with its process coefficients, as float64 Python numbers.

    ``lam[i] = log(alpha[i] / sigma[i])`` (+inf at the clean end, -inf where alpha = 0) and
    ``sigma_ve[i] = sigma[i] / alpha[i]``.
    """

    process: GaussianProcess
    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    sigma_ve: tuple[float, ...]

    @classmethod
    def build(cls, process: GaussianProcess, grid: Tensor) -> Schedule:
        grid = check_grid(grid, process)
        a = process.alpha(grid)
        s = process.sigma(grid)
        s[-1] = 0.0  # the clean end, exactly
        with torch.no_grad():
            lam = torch.log(a) - torch.log(s)
            sve = torch.where(a > 0, s / a, torch.full_like(s, math.inf))
        return cls(
            process,
            tuple(grid.tolist()),
            tuple(a.tolist()),
            tuple(s.tolist()),
            tuple(lam.tolist()),
            tuple(sve.tolist()),
        )

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def h(self, i: int) -> float:
        """Log-SNR step ``lambda_{i+1} - lambda_i`` (> 0; +inf onto the clean end)."""
        return self.lam[i + 1] - self.lam[i]


@dataclass(frozen=True)
class State:
    """Where a sampler stands: ``x`` at grid index ``i``, the sampler's ``memory`` (e.g. past
    data predictions, newest last, each with the batch first), and the model calls so far."""

    x: Tensor
    i: int = 0
    memory: tuple[Tensor, ...] = ()
    nfe: int = 0

    def select(self, index: Tensor | list[int]) -> State:
        """The sub-batch (or resampled batch) ``index`` of this state."""
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index, dtype=torch.long)
        index = index.to(self.x.device)
        return replace(self, x=self.x[index], memory=tuple(m[index] for m in self.memory))


@dataclass(frozen=True)
class Transition:
    """One step's Gaussian kernel ``x_{i+1} ~ N(mean, std^2 I)`` (``std = 0``: deterministic),
    the data prediction ``x0`` made at this step, the new memory and the model calls used."""

    mean: Tensor
    std: float | Tensor
    x0: Tensor
    memory: tuple[Tensor, ...] = ()
    nfe: int = 1
    # the unit normal to add (``x_{i+1} = mean + std * z``) where the sampler chose it itself
    # (Brownian-tree noise); ``None``: a fresh draw from the generator
    z: Tensor | None = None


TransitionFn = Callable[..., Transition]


@dataclass(frozen=True)
class Sampler:
    """A registered sampler. ``order`` is the global order measured against the exact ODE
    solution of a Gaussian (tests/test_samplers.py::test_convergence_order), not the nominal
    order of the method's formula. Call it as the pure function
    ``sampler(denoiser, x, grid, generator=None, cond=None, progress=False, **options) -> x0``."""

    name: str
    transition: TransitionFn
    order: int
    stochastic: bool
    # the default grid: a name from GRIDS, "process" (the process's own default), or a mapping
    # from process class names (or "*") to those, e.g. {"VP": "leading", "*": "karras"}
    grid: str | Mapping[str, str]
    description: str
    nfe_per_step: int = 1  # model calls per step; the final step onto sigma = 0 costs one
    options: Mapping[str, Any] = field(default_factory=dict)
    # False where a step also draws noise inside (DPM++ SDE's midpoint): then the step given
    # ``x_i`` is not the Gaussian kernel N(mean, std^2) alone
    gaussian_kernel: bool = True

    def nfe(self, steps: int) -> int:
        """Model calls used by ``steps`` steps."""
        return self.nfe_per_step * (steps - 1) + 1

    def step(
        self,
        denoiser: DenoiserBase,
        state: State,
        schedule: Schedule,
        *,
        generator: Generators = None,
        cond: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> State:
        """Advance ``state`` by one grid step."""
        opts = {**self.options, **options}
        tr = self.transition(
            denoiser, state, schedule, generator=generator, cond=cond or {}, **opts
        )
        x = tr.mean
        if not _is_zero(tr.std):
            std = tr.std
            if isinstance(std, Tensor):
                std = bcast(std, x).to(x.dtype)
            z = tr.z if tr.z is not None else randn_like(x, generator)
            x = x + std * z
        return State(x, state.i + 1, tr.memory, state.nfe + tr.nfe)

    def __call__(
        self,
        denoiser: DenoiserBase,
        x: Tensor,
        grid: Tensor,
        *,
        generator: Generators = None,
        cond: Mapping[str, Any] | None = None,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        return run(
            self, denoiser, x, grid, generator=generator, cond=cond, progress=progress, **options
        ).x0


def _is_zero(std: float | Tensor) -> bool:
    if isinstance(std, Tensor):
        return bool((std == 0).all())
    return std == 0


#: All samplers by name. ``list(SAMPLERS)`` gives the names.
SAMPLERS: Registry[Sampler] = Registry("sampler", "SAMPLERS")


def register(
    name: str,
    *,
    order: int,
    stochastic: bool,
    grid: str | Mapping[str, str],
    description: str,
    nfe_per_step: int = 1,
    gaussian_kernel: bool = True,
    **options: Any,
) -> Callable[[TransitionFn], TransitionFn]:
    """Decorator: register a transition function as a sampler."""

    def wrap(fn: TransitionFn) -> TransitionFn:
        SAMPLERS.add(Sampler(name, fn, order, stochastic, grid, description, nfe_per_step, options,
                             gaussian_kernel))
        return fn

    return wrap


# ---------------------------------------------------------------------------------------------
# Shared primitives
# ---------------------------------------------------------------------------------------------


def _axpby(a: float, x: Tensor, b: float, y: Tensor) -> Tensor:
    """``a x + b y`` in two fused kernels (the hot path of every step)."""
    return torch.add(x * a, y, alpha=b)


def _eps(x: Tensor, x0: Tensor, sch: Schedule, i: int) -> Tensor:
    """Predicted noise ``(x - alpha_i x0) / sigma_i`` (== EDM's ``d = (x/a - x0) / sigma_ve``)."""
    return torch.sub(x, x0, alpha=sch.alpha[i]).div_(sch.sigma[i])


def _ddim(x0: Tensor, eps: Tensor, sch: Schedule, j: int) -> Tensor:
    """Re-noise a prediction to grid point ``j``: ``alpha_j x0 + sigma_j eps`` (DDIM eq. 12 with
    eta = 0; equal to an Euler step of the probability-flow ODE in ``sigma / alpha``)."""
    if sch.sigma[j] == 0:
        return sch.alpha[j] * x0
    return _axpby(sch.alpha[j], x0, sch.sigma[j], eps)


def _exp_first_order(
    x: Tensor, x0: Tensor, sch: Schedule, i: int, j: int, eta: float = 0.0
) -> Tensor:
    """Mean of the first-order exponential-integrator step from ``i`` to ``j`` in data
    prediction (DPM-Solver++ eq. 9; its SDE variant with ``eta`` > 0, Lu et al. 2022 / Gonzalez
    et al.):  ``(sigma_j/sigma_i) e^{-eta h} x + alpha_j (1 - e^{-(1+eta) h}) x0``."""
    h = sch.lam[j] - sch.lam[i]
    if sch.sigma[j] == 0:
        return sch.alpha[j] * x0
    damp = math.exp(-eta * h) if eta else 1.0  # (0 * inf is NaN where alpha_i = 0)
    return _axpby(
        (sch.sigma[j] / sch.sigma[i]) * damp, x, sch.alpha[j] * -math.expm1(-(1 + eta) * h), x0
    )


def _sde_std(sch: Schedule, i: int, j: int, eta: float) -> float:
    """Noise std of the exponential-integrator SDE step: ``sigma_j sqrt(1 - e^{-2 eta h})``."""
    if eta == 0 or sch.sigma[j] == 0:
        return 0.0
    return sch.sigma[j] * math.sqrt(-math.expm1(-2 * eta * sch.h(i)))


def _model(denoiser: DenoiserBase, x: Tensor, t: float, cond: Mapping[str, Any]) -> Tensor:
    return denoiser(x, t, **cond)


def _churn(
    denoiser_process: GaussianProcess,
    x: Tensor,
    sch: Schedule,
    i: int,
    generator: Generators,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[Tensor, float, float, float]:
    """EDM Algorithm 2, lines 4-6: raise the noise level from ``sigma_ve_i`` to
    ``sigma_ve_i (1 + gamma)`` by adding fresh noise. Returns ``(x_hat, t_hat, alpha_hat,
    sigma_hat)``; without churn this is the grid point itself."""
    t, a, s, sve = sch.t[i], sch.alpha[i], sch.sigma[i], sch.sigma_ve[i]
    gamma = min(s_churn / sch.steps, math.sqrt(2) - 1) if s_tmin <= sve <= s_tmax else 0.0
    if gamma == 0 or not math.isfinite(sve):
        return x, t, a, s
    proc = denoiser_process
    sve_hat = min(sve * (1 + gamma), float(proc.sigma_ve(proc.t_max)))
    t_hat = float(proc.t_from_sigma_ve(sve_hat))
    a_hat, s_hat = float(proc.alpha(t_hat)), float(proc.sigma(t_hat))
    sve_hat = s_hat / a_hat
    # x_hat / a_hat = x / a + sqrt(sve_hat^2 - sve^2) * S_noise * z
    z = randn_like(x, generator)
    x_hat = a_hat * (x / a + math.sqrt(max(sve_hat**2 - sve**2, 0.0)) * s_noise * z)
    return x_hat, t_hat, a_hat, s_hat


# Default grids. On a discrete-time VP (every diffusers DDPM-family model) a grid that evaluates
# the model at t_min (sigma ~ 0.01: the log-SNR and Karras grids) wastes one of few evaluations;
# the choices below are diffusers' own spacings or better on random mixtures (BENCHMARKS.md,
# "samplers: defaults"): DDIM-like first-order steps want `leading` (last call at t = 0), the
# multistep solvers `trailing` (last call near t = T / N, then one step to the clean end).
# Elsewhere (continuous VP, VE, EDM, flows) each sampler keeps its paper's spacing.
_LEADING_ON_VP = {"VP": "leading", "*": "process"}
_TRAILING_ON_VP = {"VP": "trailing", "*": "logsnr"}


# ---------------------------------------------------------------------------------------------
# First-order samplers
# ---------------------------------------------------------------------------------------------


@register(
    "ddim",
    order=1,
    stochastic=False,
    grid=_LEADING_ON_VP,
    eta=0.0,
    description="DDIM (Song et al. 2021): x0 and eps re-noised; eta>0 adds DDPM-like noise",
)
def ddim(denoiser, state, sch, *, generator, cond, eta: float = 0.0) -> Transition:
    """DDIM, Song et al. (2021) eq. 12, in ``alpha``/``sigma`` form for any process.

    ``x_{i+1} = alpha_{i+1} x0 + sqrt(sigma_{i+1}^2 - c^2) eps + c z`` with
    ``c = eta sigma_{i+1} sqrt(1 - e^{-2h})`` (eq. 16); eta = 1 is DDPM's ancestral step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    i, x = state.i, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    j = i + 1
    if sch.sigma[j] == 0:  # explicit final step: the data prediction itself
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    c = eta * _sde_std(sch, i, j, 1.0)
    eps = _eps(x, x0, sch, i)
    mean = sch.alpha[j] * x0 + math.sqrt(max(sch.sigma[j] ** 2 - c**2, 0.0)) * eps
    return Transition(mean, c, x0)


@register(
    "ddpm",
    order=1,
    stochastic=True,
    grid=_LEADING_ON_VP,
    variance=None,
    description="DDPM ancestral sampling (Ho et al. 2020): the exact Gaussian posterior step",
)
def ddpm(denoiser, state, sch, *, generator, cond, variance=None) -> Transition:
    """Ancestral sampling, Ho et al. (2020) eq. 6-7: ``x_{i+1} ~ q(x_{i+1} | x_i, x0_hat)``,
    the forward-process posterior with the model's data prediction plugged in.

    ``variance``: a learned reverse variance (Sohl-Dickstein et al. 2015; Nichol & Dhariwal
    2021), a callable ``(t_from, t_to) -> Sigma`` (e.g. :class:`reverie.vlb.ReverseVariance`);
    the mean stays the posterior mean, the noise variance becomes ``Sigma``."""
    step = ddim(denoiser, state, sch, generator=generator, cond=cond, eta=1.0)
    if variance is None or sch.sigma[state.i + 1] == 0:
        return step
    return Transition(step.mean, math.sqrt(float(variance(sch.t[state.i], sch.t[state.i + 1]))),
                      step.x0)


@register(
    "euler",
    order=1,
    stochastic=False,
    grid={"VP": "uniform", "*": "karras"},  # on a VP: diffusers' Euler "linspace" grid
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=math.inf,
    s_noise=1.0,
    description="Euler on the probability-flow ODE in sigma/alpha (EDM Alg. 2 first order, churn)",
)
def euler(denoiser, state, sch, *, generator, cond, s_churn, s_tmin, s_tmax, s_noise) -> Transition:
    """Euler step of the probability-flow ODE ``dx/dsigma = (x - D(x)) / sigma`` in EDM's VE
    coordinates (Karras et al. 2022, Alg. 2 without the correction), with optional churn.
    Without churn it equals DDIM (eta = 0)."""
    i = state.i
    x_hat, t_hat, a_hat, s_hat = _churn(
        denoiser.process, state.x, sch, i, generator, s_churn, s_tmin, s_tmax, s_noise
    )
    x0 = _model(denoiser, x_hat, t_hat, cond)
    eps = (x_hat - a_hat * x0) / s_hat  # = d, the ODE's slope in VE coordinates
    return Transition(_ddim(x0, eps, sch, i + 1), 0.0, x0)


@register(
    "heun",
    order=2,
    stochastic=False,
    # on a flow: diffusers' FlowMatchHeun grid (t uniform down to t_min), which trailing does
    # not beat everywhere
    grid={"VP": "trailing", "RectifiedFlow": "uniform", "*": "karras"},
    nfe_per_step=2,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=math.inf,
    s_noise=1.0,
    space="auto",
    description="EDM's Heun sampler (Karras et al. 2022, Alg. 2) with optional churn; "
    "Heun in t on flows",
)
def heun(
    denoiser, state, sch, *, generator, cond, s_churn, s_tmin, s_tmax, s_noise, space
) -> Transition:
    """Karras et al. (2022) Algorithm 2: Euler predictor and trapezoidal corrector in
    ``(x / alpha, sigma / alpha)``; the last step onto sigma = 0 is an Euler step (NFE = 2N - 1).

    ``space="t"``: the same predictor and corrector in ``t`` on ``dx/dt = v(x, t)``, the
    flow's own ODE (diffusers' ``FlowMatchHeunDiscreteScheduler``). ``"auto"`` (default) takes
    ``"t"`` for a :class:`~reverie.process.RectifiedFlow` and ``"ve"`` otherwise; a step from
    ``alpha = 0`` (where sigma / alpha is infinite) is always taken in ``t``."""
    if space not in ("auto", "ve", "t"):
        raise ValueError(f"space must be 'auto', 've' or 't', got {space!r}")
    i, j = state.i, state.i + 1
    proc = denoiser.process
    x_hat, t_hat, a_hat, s_hat = _churn(
        proc, state.x, sch, i, generator, s_churn, s_tmin, s_tmax, s_noise
    )
    x0 = _model(denoiser, x_hat, t_hat, cond)  # D(x_hat; t_hat)
    d = torch.sub(x_hat, x0, alpha=a_hat).div_(s_hat)  # d_i = (x_hat - D) / t_hat
    if space == "auto":
        space = "t" if isinstance(proc, RectifiedFlow) else "ve"
    if (space == "t" or a_hat == 0) and sch.sigma[j] > 0:
        return _heun_in_t(denoiser, x_hat, x0, d, t_hat, sch, j, cond)
    x_euler = _ddim(x0, d, sch, j)  # x_{i+1} = x_hat + (t_{i+1} - t_hat) d_i
    if sch.sigma[j] == 0:
        return Transition(x_euler, 0.0, x0)
    x0_next = _model(denoiser, x_euler, sch.t[j], cond)  # D(x_{i+1}; t_{i+1})
    d_next = _eps(x_euler, x0_next, sch, j)  # d'_i
    # x_{i+1} = x_hat + (t_{i+1} - t_hat) (d_i / 2 + d'_i / 2) in VE coordinates (x / alpha)
    half_step = 0.5 * sch.alpha[j] * (sch.sigma_ve[j] - s_hat / a_hat)
    return Transition(
        _axpby(sch.alpha[j] / a_hat, x_hat, half_step, d.add_(d_next)), 0.0, x0_next, nfe=2
    )


def _heun_in_t(denoiser, x, x0, eps, t, sch, j, cond) -> Transition:
    """Heun's method in ``t`` on the probability-flow ODE ``dx/dt = alpha'(t) x0 + sigma'(t)
    eps`` (valid where ``alpha = 0``, where EDM's sigma / alpha is infinite)."""
    proc = denoiser.process
    dt = sch.t[j] - t

    def velocity(x0_, eps_, at):
        at = torch.tensor(at, dtype=torch.float64)
        return _axpby(float(proc.d_alpha(at)), x0_, float(proc.d_sigma(at)), eps_)

    v = velocity(x0, eps, t)
    x_euler = x + dt * v  # Euler predictor
    x0_next = _model(denoiser, x_euler, sch.t[j], cond)
    v_next = velocity(x0_next, _eps(x_euler, x0_next, sch, j), sch.t[j])
    return Transition(x + (0.5 * dt) * (v + v_next), 0.0, x0_next, nfe=2)  # trapezoidal


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ family
# ---------------------------------------------------------------------------------------------


@register(
    "dpmpp_2m",
    order=2,
    stochastic=False,
    grid=_TRAILING_ON_VP,
    description="DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction",
)
def dpmpp_2m(denoiser, state, sch, *, generator, cond) -> Transition:
    """DPM-Solver++(2M), Lu et al. (2022) Algorithm 2. First order on the first step and on
    the final step onto sigma = 0 (k-diffusion, diffusers ``final_sigmas_type="zero"``)."""
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    x0_hat = x0
    if state.memory and sch.sigma[j] > 0:
        h, h_last = sch.h(i), sch.h(i - 1)
        if math.isfinite(h_last):
            r = h_last / h
            # D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
            x0_hat = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * state.memory[-1]
    return Transition(_exp_first_order(x, x0_hat, sch, i, j), 0.0, x0, (x0,))


@register(
    "dpmpp_2s",
    order=2,
    stochastic=False,
    grid={"VP": "trailing/calls", "*": "logsnr"},
    nfe_per_step=2,
    description="DPM-Solver++(2S) (Lu et al. 2022): second-order single-step, midpoint in log-SNR",
)
def dpmpp_2s(denoiser, state, sch, *, generator, cond) -> Transition:
    """DPM-Solver++(2S), Lu et al. (2022) Algorithm 1 with ``r = 1/2``: an intermediate point
    half way in log-SNR, then the step with its data prediction. The final step is first order."""
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    proc = denoiser.process
    h = sch.h(i)
    lam_mid = sch.lam[i] + 0.5 * h if math.isfinite(sch.lam[i]) else sch.lam[j] - 0.5 * math.log(2)
    t_mid = float(proc.t_from_log_snr(2 * lam_mid))
    a_mid, s_mid = float(proc.alpha(t_mid)), float(proc.sigma(t_mid))
    h_mid = lam_mid - sch.lam[i]
    # u = (sigma_s / sigma_i) x - alpha_s (e^{-h/2} - 1) x0
    u = (s_mid / sch.sigma[i]) * x + a_mid * (-math.expm1(-h_mid)) * x0
    x0_mid = _model(denoiser, u, t_mid, cond)
    # x_{i+1} = (sigma_{i+1} / sigma_i) x - alpha_{i+1} (e^{-h} - 1) D(u)
    mean = (sch.sigma[j] / sch.sigma[i]) * x + sch.alpha[j] * (-math.expm1(-h)) * x0_mid
    return Transition(mean, 0.0, x0_mid, nfe=2)


@register(
    "dpmpp_2m_sde",
    order=2,
    stochastic=True,
    grid=_TRAILING_ON_VP,
    eta=1.0,
    s_noise=1.0,
    noise_sampler="gaussian",
    description="DPM-Solver++(2M) SDE (midpoint variant, as in k-diffusion)",
)
def dpmpp_2m_sde(
    denoiser, state, sch, *, generator, cond, eta, s_noise, noise_sampler
) -> Transition:
    """SDE-DPM-Solver++(2M), Lu et al. (2022) Appendix (k-diffusion ``sample_dpmpp_2m_sde``,
    midpoint): a second-order exponential integrator of the reverse SDE with noise ``eta``.
    ``noise_sampler="brownian_tree"``: Brownian-tree noise (:mod:`reverie.brownian`)."""
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0, (x0,))
    h = sch.h(i)
    mean = _exp_first_order(x, x0, sch, i, j, eta)
    if state.memory and math.isfinite(sch.h(i - 1)):
        r = sch.h(i - 1) / h
        # + alpha_{i+1} (1 - e^{-(1+eta) h}) / (2r) (x0_i - x0_{i-1})
        mean = mean + sch.alpha[j] * (-math.expm1(-(1 + eta) * h)) * (0.5 / r) * (
            x0 - state.memory[-1]
        )
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if eta else None
    return Transition(mean, _sde_std(sch, i, j, eta) * s_noise, x0, (x0,), z=z)


def _dpmpp_3m(
    denoiser, state, sch, *, cond, eta, s_noise, legacy, lower_order_final=False,
    generator=None, noise_sampler="gaussian",
) -> Transition:
    """DPM-Solver++(3M) with ``eta``-SDE noise (k-diffusion ``sample_dpmpp_3m_sde``).

    With ``D2 = (D1_0 - D1_1) / (r0 + r1) ~ h^2 x0'' / 2``, the Taylor expansion of the
    exponential integrator needs the term ``-2 phi_3 D2``; the reference implementations
    (dpm-solver, k-diffusion, diffusers) use ``-phi_3 D2``, which leaves an O(h^3) local error
    (second order overall). ``legacy=True`` reproduces them exactly. ``lower_order_final``:
    on grids of fewer than 15 steps the step before the final one is second order (diffusers'
    ``lower_order_final``; third-order extrapolation over a few long steps is unstable)."""
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    memory = (*state.memory[-1:], x0)
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0, memory)
    h = sch.h(i)
    h_eta = h * (eta + 1)
    mean = _exp_first_order(x, x0, sch, i, j, eta)
    # k-diffusion's phi_2 = (e^{-h_eta} - 1) / h_eta + 1 and phi_3 = phi_2 / h_eta - 1/2
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    phi_3 = phi_2 / h_eta - 0.5
    hist = state.memory
    h1 = sch.h(i - 1) if len(hist) >= 1 else math.inf
    h2 = sch.h(i - 2) if len(hist) >= 2 else math.inf
    if lower_order_final and sch.steps < 15 and j == sch.steps - 1:
        h2 = math.inf  # second order onto the last point before the clean end
    if math.isfinite(h1) and math.isfinite(h2):  # third order: two past predictions
        r0, r1 = h1 / h, h2 / h
        d1_0 = (x0 - hist[-1]) / r0
        d1_1 = (hist[-1] - hist[-2]) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        c2 = 1.0 if legacy else 2.0
        mean = mean + sch.alpha[j] * (phi_2 * d1 - c2 * phi_3 * d2)
    elif math.isfinite(h1):  # second order while the history fills
        mean = mean + sch.alpha[j] * phi_2 * (x0 - hist[-1]) / (h1 / h)
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if eta else None
    return Transition(mean, _sde_std(sch, i, j, eta) * s_noise, x0, memory, z=z)


@register(
    "dpmpp_3m_sde",
    order=3,
    stochastic=True,
    grid=_TRAILING_ON_VP,
    eta=1.0,
    s_noise=1.0,
    legacy=False,
    noise_sampler="gaussian",
    description="DPM-Solver++(3M) SDE (third-order multistep with noise, as in k-diffusion)",
)
def dpmpp_3m_sde(
    denoiser, state, sch, *, generator, cond, eta, s_noise, legacy, noise_sampler
) -> Transition:
    """SDE-DPM-Solver++(3M): k-diffusion's ``sample_dpmpp_3m_sde`` in alpha/sigma form, with
    the third-order coefficient corrected (``legacy=True`` for the reference one);
    ``noise_sampler="brownian_tree"``: Brownian-tree noise (:mod:`reverie.brownian`)."""
    return _dpmpp_3m(denoiser, state, sch, cond=cond, eta=eta, s_noise=s_noise, legacy=legacy,
                     generator=generator, noise_sampler=noise_sampler)


@register(
    "dpmpp_3m",
    order=2,  # measured with the default legacy=True; legacy=False is third order
    stochastic=False,
    grid=_TRAILING_ON_VP,
    legacy=True,
    lower_order_final=True,
    description="DPM-Solver++(3M) (Lu et al. 2022): third-order multistep, data prediction",
)
def dpmpp_3m(
    denoiser, state, sch, *, generator, cond, legacy, lower_order_final
) -> Transition:
    """DPM-Solver++(3M), the deterministic (eta = 0) member of :func:`dpmpp_3m_sde`;
    the defaults (``legacy=True``, ``lower_order_final=True``) are diffusers'
    ``DPMSolverMultistepScheduler(solver_order=3)``: its coefficient, which is second order,
    and its second-order step before the final one below 15 steps. ``legacy=False`` is third
    order on single trajectories but was 1-3% worse in distribution error at 20 NFE on the
    tuning mixtures, and ``lower_order_final=False`` better at 5 NFE on a VP but worse at 10 on
    flows (docs/samplers.md), so neither is the default."""
    return _dpmpp_3m(denoiser, state, sch, cond=cond, eta=0.0, s_noise=1.0, legacy=legacy,
                     lower_order_final=lower_order_final)


# ---------------------------------------------------------------------------------------------
# UniPC
# ---------------------------------------------------------------------------------------------


def _unipc_terms(
    h: float, rks: list[float], order: int, variant: str
) -> tuple[float, float, Tensor, Tensor]:
    """UniPC's ``h phi_1(h)``, ``B(h)`` and the linear system ``R rho = b`` (Zhao et al. 2023,
    Alg. 2/3, data prediction). ``rks`` are the history ratios ``r_k = (lambda_{s_k} -
    lambda_s0) / h``, with 1 appended."""
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    r = torch.tensor(rks, dtype=torch.float64)
    rows, b = [], []
    factorial = 1
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.tensor(b, dtype=torch.float64)


def _unipc_update(
    x: Tensor,
    m0: Tensor,
    hist: list[Tensor],
    sch: Schedule,
    i: int,
    j: int,
    order: int,
    variant: str,
    model_t: Tensor | None,
) -> Tensor:
    """UniP (``model_t is None``) or UniC (``model_t`` = the data prediction at ``j``) update
    from grid point ``i`` to ``j``, with ``m0`` the prediction at ``i`` and ``hist`` the earlier
    ones (newest first)."""
    h = sch.lam[j] - sch.lam[i]
    rks, d1s = [], []
    for k in range(1, order):
        lam_k = sch.lam[i - k]
        rk = (lam_k - sch.lam[i]) / h
        rks.append(rk)
        d1s.append((hist[k - 1] - m0) / rk)
    rks.append(1.0)
    h_phi_1, b_h, R, b = _unipc_terms(h, rks, order, variant)
    x_t = (sch.sigma[j] / sch.sigma[i]) * x - sch.alpha[j] * h_phi_1 * m0
    if model_t is None:  # predictor UniP-p
        if d1s:
            rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            res = sum(rho * d for rho, d in zip(rhos, d1s))
            x_t = x_t - sch.alpha[j] * b_h * res
        return x_t
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()  # corrector UniC-p
    res = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s)), torch.zeros_like(x))
    return x_t - sch.alpha[j] * b_h * (res + rhos_c[-1] * (model_t - m0))


@register(
    "unipc",
    order=3,  # measured: UniPC-2 with its corrector is third order (Zhao et al. 2023, Thm 3.1)
    stochastic=False,
    grid=_TRAILING_ON_VP,
    solver_order=2,
    variant="bh2",
    description="UniPC (Zhao et al. 2023): multistep predictor + corrector, B(h)=e^h-1 (bh2)",
)
def unipc(denoiser, state, sch, *, generator, cond, solver_order: int, variant: str) -> Transition:
    """UniPC, Zhao et al. (2023), data prediction, multistep (diffusers' UniPCMultistep with
    ``lower_order_final``). The corrector UniC refines ``x_i`` with the model output at ``x_i``
    (which the predictor then reuses: no extra model call).

    memory = ``(x_{i-1} (corrected), x0 predictions..., newest last)``.
    """
    if solver_order not in (1, 2, 3):
        raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    preds: list[Tensor] = []
    if state.memory:
        x_prev, *preds = state.memory
        hist = preds[::-1]  # newest first: x0_{i-1}, x0_{i-2}, ...
        if sch.sigma[j] > 0:  # on the final step the corrected x_i would be discarded
            prev_order = min(solver_order, len(preds), sch.steps - i + 1)
            x = _unipc_update(x_prev, hist[0], hist[1:], sch, i - 1, i, prev_order, variant, x0)
    preds = (preds + [x0])[-solver_order:]
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0, ())
    order = min(solver_order, len(preds), sch.steps - i)  # warm-up and lower_order_final
    hist = preds[::-1]
    mean = _unipc_update(x, hist[0], hist[1:], sch, i, j, order, variant, None)
    return Transition(mean, 0.0, x0, (x, *preds))


# ---------------------------------------------------------------------------------------------
# iPNDM
# ---------------------------------------------------------------------------------------------

_AB = {  # Adams-Bashforth coefficients, newest slope first
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@register(
    "ipndm",
    order=2,  # measured on log-SNR grids: the fixed AB weights are exact only on uniform steps
    stochastic=False,
    grid={"VP": "trailing", "*": "karras"},
    max_order=4,
    description="iPNDM (Zhang & Chen 2023): Adams-Bashforth up to 4th order on the EDM ODE",
)
def ipndm(denoiser, state, sch, *, generator, cond, max_order: int) -> Transition:
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, eq. 16-17): explicit Adams-Bashforth on
    ``dx/dsigma = eps(x, sigma)`` in EDM's VE coordinates, with lower orders while the history
    fills up, and the full order also on the final step onto sigma = 0 (zju-pi diff-solvers,
    ComfyUI ``sample_ipndm``)."""
    if max_order not in _AB:
        raise ValueError(f"max_order must be 1..4, got {max_order}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    d = _eps(x, x0, sch, i)
    slopes = [d, *state.memory[::-1]]  # newest first
    order = min(max_order, len(slopes))
    memory = (*state.memory, d)[-(max_order - 1) :] if max_order > 1 else ()
    if order == 1 or sch.alpha[i] == 0:
        return Transition(_ddim(x0, d, sch, j), 0.0, x0, memory)
    slope = sum(c * s for c, s in zip(_AB[order], slopes))
    x_ve = x / sch.alpha[i] + (sch.sigma_ve[j] - sch.sigma_ve[i]) * slope
    return Transition(sch.alpha[j] * x_ve, 0.0, x0, memory)


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama on the reverse SDE
# ---------------------------------------------------------------------------------------------


@register(
    "euler_maruyama",
    order=1,
    stochastic=True,
    grid="process",
    diffusion=None,
    description="Euler-Maruyama on the reverse SDE; any diffusion g(t) with the same marginals",
)
def euler_maruyama(denoiser, state, sch, *, generator, cond, diffusion) -> Transition:
    """Euler-Maruyama on the reverse-time SDE family with the model's marginals (Song et al.
    2021; for flows, Kim et al. 2025 / Singh & Fischer 2024):

        dx = [v(x, t) - g(t)^2 / 2 * score(x, t)] dt + g(t) dW,

    ``v`` the probability-flow velocity. ``diffusion`` picks ``g``: ``None`` -- the forward
    process's own ``g`` (the standard reverse SDE) where it is finite on the grid, else
    ``g = sigma(t)``; a float ``c`` -- ``g = c sigma(t)``; a callable ``t -> g(t)``."""
    i, j, x = state.i, state.i + 1, state.x
    proc = denoiser.process
    x0 = _model(denoiser, x, sch.t[i], cond)
    if sch.sigma[j] == 0:
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    t, dt = sch.t[i], sch.t[j] - sch.t[i]
    if diffusion is None:
        _, g2 = proc.drift_diffusion(t)
        g2 = float(g2)
        if not math.isfinite(g2):
            g2 = sch.sigma[i] ** 2
    elif callable(diffusion):
        g2 = float(diffusion(torch.tensor(t, dtype=torch.float64))) ** 2
    else:
        g2 = (float(diffusion) * sch.sigma[i]) ** 2
    eps = _eps(x, x0, sch, i)
    velocity = float(proc.d_alpha(t)) * x0 + float(proc.d_sigma(t)) * eps
    score = -eps / sch.sigma[i]
    mean = x + (velocity - 0.5 * g2 * score) * dt
    return Transition(mean, math.sqrt(g2 * -dt), x0)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOutput:
    """What :func:`run` returns: the samples, the model calls used and the grid walked."""

    x0: Tensor
    nfe: int
    grid: Tensor


def default_grid_name(sampler: Sampler, process: GaussianProcess) -> str:
    """The grid name ``sampler`` walks on ``process`` when none is given: the entry for the
    process's class (or a base class) in the sampler's ``grid`` mapping, else its ``"*"``
    entry; ``"process"`` means the process's own default."""
    spec = sampler.grid
    if isinstance(spec, Mapping):
        names = [cls.__name__ for cls in type(process).__mro__]
        spec = next((spec[n] for n in names if n in spec), spec.get("*", "process"))
    return process.default_grid if spec == "process" else spec


def resolve_grid(
    sampler: Sampler, process: GaussianProcess, steps: int, grid: str | Tensor | None
) -> Tensor:
    """The grid a sampler walks: a tensor is validated; a name is built with ``steps`` steps;
    ``None`` uses the sampler's preferred spacing (or the process's default grid when the
    log-SNR is infinite at ``t_max``, e.g. a flow at t = 1)."""
    if isinstance(grid, Tensor):
        return check_grid(grid, process)
    default = grid is None
    if default:
        grid = default_grid_name(sampler, process)
        if grid in ("logsnr", "karras") and not math.isfinite(
            float(process.log_snr(process.t_max))
        ):
            if grid == "logsnr":
                # an exponential integrator's multistep extrapolation is lost from a start at
                # log-SNR = -inf (a flow at t = 1); start a thousandth below, as diffusers'
                # flow sigmas do (BENCHMARKS.md "flows": within 2% of diffusers' DPM-Solver++ /
                # UniPC in 99 of 100 cells; from t = 1 up to 6% worse at 5 NFE on the tuning
                # mixtures)
                top = process.t_max - (process.t_max - process.t_clean) / 1000
                return make_grid(process, steps, "trailing", t_max=top)
            grid = (
                process.default_grid
                if process.default_grid not in ("logsnr", "karras")
                else "trailing"
            )
    if not isinstance(grid, str):
        raise TypeError(f"grid must be a name, a tensor or None, got {type(grid).__name__}")
    if grid.removesuffix("/calls") not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; expected one of {', '.join(GRIDS)}")
    if default and grid.endswith("/calls"):
        # the named spacing over the model calls: for a sampler with k calls per step, a grid
        # of k (steps - 1) + 1 intervals of which every k-th point is a step (the others are
        # near the step's inner evaluations), so the last call sits where a one-call sampler's
        # would (DPM-Solver's single-step schedules)
        k = sampler.nfe_per_step
        fine = make_grid(process, k * (steps - 1) + 1, grid.removesuffix("/calls"))
        return torch.cat([fine[:-1][::k], fine[-1:]])
    if grid == "leading" and default:
        if steps == 1:  # one step starts at t_max, not at t_min
            return make_grid(process, steps, "trailing")
        try:
            return make_grid(process, steps, grid)
        except ValueError:  # more steps than whole training strides: the default falls back
            grid = "trailing"
    return make_grid(process, steps, grid)


Hook = Callable[[State, Schedule], "State | None"]


def check_finite(x: Tensor, name: str, i: int, schedule: Schedule, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if ``x`` (the state after step ``i``) holds NaN or inf."""
    # one reduction (NaN and inf propagate through a sum); confirm before raising
    x = x.detach()
    if math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all()):
        return
    sch = schedule
    raise NonFiniteError(
        f"{name}: NaN or inf in the sample after step {i + 1}/{sch.steps} "
        f"(t = {sch.t[i]:.6g} -> {sch.t[i + 1]:.6g}); "
        + (hint or f"check the model's output at t = {sch.t[i]:.6g} and the input dtype")
    )


def walk(
    schedule: Schedule,
    state: State,
    step: Callable[[State], State],
    *,
    name: str,
    stop: int | None = None,
    hook: Hook | None = None,
    callback: Callable[[State, Schedule], None] | None = None,
    progress: bool = False,
    hint: str = "",
) -> State:
    """The sampler loop, the only one: from ``state`` (at grid index ``state.i``) to grid index
    ``stop`` (default: the clean end). Each pass takes ``step(state)`` (the state one grid
    point further), then ``hook(state, schedule)`` (a correction, resampling or guidance step;
    a returned state replaces the current one), checks for NaN / inf (:class:`NonFiniteError`
    naming the step, with ``hint`` as the advice), calls ``callback(state, schedule)`` and
    advances the progress bar. Every method that walks a grid (samplers, correctors, SMC,
    search, inverse solvers, density estimators) runs through here."""
    stop = schedule.steps if stop is None else stop
    bar = progress_bar(stop - state.i, progress, name)
    try:
        for i in range(state.i, stop):
            state = step(state)
            if hook is not None:
                new = hook(state, schedule)
                state = state if new is None else new
            check_finite(state.x, name, i, schedule, hint)
            if callback is not None:
                callback(state, schedule)
            bar.update(1)
    finally:
        bar.close()
    return state


def run(
    sampler: str | Sampler,
    denoiser: DenoiserBase,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generators = None,
    cond: Mapping[str, Any] | None = None,
    progress: bool = False,
    callback: Callable[[State, Schedule], None] | None = None,
    hook: Hook | None = None,
    **options: Any,
) -> SampleOutput:
    """Walk ``grid`` from ``x`` (a sample at ``grid[0]``, not unit noise) with ``sampler``.

    ``hook(state, schedule)`` runs after every step and may return a new state to continue
    from (e.g. after an MCMC correction); ``callback(state, schedule)`` only observes.
    Raises :class:`NonFiniteError` naming the step where NaN or inf first appears.
    """
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(
            f"denoiser must be a reverie denoiser (e.g. reverie.Denoiser(fn, process, "
            f"prediction)), got {type(denoiser).__name__}"
        )
    check_options("sampler", info.name, options, info.options)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError("x must be a floating-point tensor with the batch first")
    if isinstance(generator, (list, tuple)) and len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    hook = _with_denoiser_hook(denoiser, info, hook)
    sch = Schedule.build(denoiser.process, grid)

    def step(state: State) -> State:
        return info.step(denoiser, state, sch, generator=generator, cond=cond, **options)

    hint = "" if hook is None else (
        "check the model's output, the input dtype and the hook's step (e.g. a corrector's "
        "step size)"
    )
    with torch.no_grad():
        state = walk(sch, State(x), step, name=info.name, hook=hook, callback=callback,
                     progress=progress, hint=hint)
    return SampleOutput(state.x, state.nfe, torch.tensor(sch.t, dtype=torch.float64))


def _with_denoiser_hook(denoiser: DenoiserBase, info: Sampler, hook: Hook | None) -> Hook | None:
    """A denoiser that changes the update itself (e.g. CFG++ guidance) carries a ``step_hook``
    and the samplers it is exact for (``samplers``); it runs before the caller's ``hook``."""
    own = getattr(denoiser, "step_hook", None)
    if own is None:
        return hook
    allowed = getattr(denoiser, "samplers", None)
    if allowed is not None and info.name not in allowed:
        raise ValueError(f"this denoiser's guidance changes the sampler's update and works "
                         f"with {', '.join(allowed)}, not {info.name!r}")
    if hook is None:
        return own

    def both(state: State, schedule: Schedule) -> State | None:
        new = own(state, schedule)
        state = state if new is None else new
        again = hook(state, schedule)
        return state if again is None else again

    return both


def sample(
    denoiser: DenoiserBase,
    noise: Tensor,
    sampler: str = "dpmpp_2m",
    steps: int = 10,
    grid: str | Tensor | None = None,
    generator: Generators = None,
    progress: bool = False,
    *,
    cond: Mapping[str, Any] | None = None,
    distributed: bool = False,
    init: Tensor | None = None,
    strength: float | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples: start from ``sigma(t_0) * noise`` and walk the grid with ``sampler``.

    ``noise`` is standard normal with the batch first; its dtype is the solver state's
    (float64 for reference-grade accuracy; the network runs in its own dtype). ``grid`` is a
    name from :data:`reverie.grids.GRIDS`, a tensor (then ``steps`` is its length - 1), or
    ``None`` for the sampler's preferred spacing. ``generator`` may be one generator or one per
    sample. ``cond`` is passed to every model call; ``options`` go to the sampler (e.g.
    ``eta`` for DDIM, ``s_churn`` for Heun). ``distributed``: shard the samples over the
    ``torch.distributed`` process group (one generator per sample, or none for a deterministic
    sampler) and gather them on every rank, equal to one process's
    (:func:`reverie.distributed.sample`). ``init`` and ``strength`` (SDEdit / warm start,
    :func:`warm_start`): start from ``init`` noised to the grid point where the last
    ``int(steps * strength)`` steps begin. Returns the samples ``x0``.
    """
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    positive_int("steps", steps)
    g = resolve_grid(info, denoiser.process, steps, grid)
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise TypeError("noise must be a floating-point tensor (standard normal, batch first)")
    if distributed:  # each rank runs this function on its rows (reverie.distributed)
        from reverie import distributed as _dist

        if init is not None or strength is not None:
            raise ValueError("init/strength (SDEdit) do not run with distributed=True yet")
        kwargs = {"sampler": info, "steps": steps, "grid": grid, **options}
        return _dist.sample(sample, denoiser, noise, generator, info.stochastic, cond, progress,
                            kwargs)
    x = noise * float(denoiser.process.sigma(g[0]))
    if init is not None or strength is not None:  # SDEdit / warm start
        g, x = warm_start(denoiser.process, g, noise, init, strength)
    return run(
        info, denoiser, x, g, generator=generator, cond=cond, progress=progress, **options
    ).x0


def select_generators(generator: Generators, index: Tensor) -> Generators:
    """Generators of a sub-batch (for particle methods that split a batch)."""
    return split_generators(generator, index)


def warm_start(
    process: GaussianProcess, grid: Tensor, noise: Tensor, init: Tensor | None,
    strength: float | None,
) -> tuple[Tensor, Tensor]:
    """SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
    differential equations") and warm starts: of a grid of ``N`` steps keep the last
    ``int(N * strength)`` (diffusers' img2img rule) and start there from ``init`` noised by
    the forward process, ``x = alpha(t_k) init + sigma(t_k) noise``. Returns ``(grid[k:], x)``.
    At ``strength = 1`` the start is the prior ``sigma(t_0) noise`` and ``init`` is unused:
    exactly sampling from ``noise`` (diffusers' img2img keeps ``alpha(t_0) init`` there)."""
    if init is None or strength is None:
        raise ValueError("init and strength go together: pass both (strength in (0, 1]) or "
                         "neither")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
        0 < strength <= 1
    ):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if not isinstance(init, Tensor) or init.shape != noise.shape:
        got = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise ValueError(f"init must be a tensor shaped like noise {tuple(noise.shape)}, "
                         f"got {got}")
    steps = len(grid) - 1
    run_steps = min(int(steps * strength), steps)
    if run_steps < 1:
        raise ValueError(f"strength {strength} of {steps} steps leaves no step to run "
                         f"(int(steps * strength) = 0); raise steps or strength")
    k = steps - run_steps
    if k == 0:
        return grid, noise * float(process.sigma(grid[0]))
    t = grid[k]
    x = float(process.alpha(t)) * init.to(noise) + float(process.sigma(t)) * noise
    return grid[k:], x

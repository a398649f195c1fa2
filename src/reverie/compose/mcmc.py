"""MCMC correctors at each noise level, and the sampler loop that applies them.

Du et al. (2023), "Reduce, Reuse, Recycle", sec. 4 / Alg. 1-2: to sample a composed model
(e.g. a product), interleave the reverse-diffusion steps with MCMC steps that target the
composed density ``q~_t(x)`` of the current noise level:

* **ULA** (unadjusted Langevin): ``x <- x + eta grad log q~ + sqrt(2 eta) xi``;
* **MALA**: the same proposal, accepted with probability
  ``min(1, q~(x') k(x | x') / (q~(x) k(x' | x)))``, ``k(x' | x) = N(x'; x + eta grad log q~(x),
  2 eta I)`` -- needs the log-density (energy);
* **HMC**: ``leapfrog_steps`` leapfrog steps of size ``eps = sqrt(2 eta)`` (one leapfrog step
  with a fresh momentum is MALA's proposal), momentum refreshed as ``p <- rho p +
  sqrt(1 - rho^2) xi`` (``rho = damping``), with a Metropolis test on the Hamiltonian
  ``-log q~(x) + |p|^2 / 2`` (needs the energy) or without one (**U-HMC**, the paper's
  "UHA", score only).

``step_size`` is relative to the scale of the noised data: ``eta = step_size * (alpha(t)^2 *
data_variance + sigma(t)^2)`` (the variance of ``x_t`` for data of variance ``data_variance``),
or any ``t -> eta`` callable. The Metropolis-adjusted correctors (MALA, HMC) default to
``data_variance = 1``: steps shrink with the noise but not below the data's own scale, so the
chain still moves at low noise, and a step too large for a narrow target is rejected, not
taken. The unadjusted ones (ULA, U-HMC) default to ``data_variance = 0``, ``eta = step_size *
sigma^2``: every noised density has features no narrower than ``sigma``, so such steps are
stable for any data (thin manifolds included), at the price of slower mixing near the data.

The correctors take the model, the batch and the time, so any loop (this module's
:func:`sample_with_corrector`, particle methods) can use them; randomness comes from the
generator(s) passed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from reverie._checks import check_options, in_range, positive_int
from reverie._random import Generators, randn_like
from reverie._registry import Registry
from reverie.compose.energy import require_energy
from reverie.denoisers import DenoiserBase
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid, run

__all__ = [
    "CORRECTORS",
    "Corrector",
    "CorrectorResult",
    "ULA",
    "MALA",
    "HMC",
    "UHMC",
    "make_corrector",
    "CorrectedSample",
    "sample_with_corrector",
]


@dataclass(frozen=True)
class CorrectorResult:
    """The corrected batch, the mean acceptance rate (1.0 for unadjusted methods) and the
    model evaluations used (scores and log-densities)."""

    x: Tensor
    acceptance: float
    evaluations: int


def _uniform(like: Tensor, generator: Generators) -> Tensor:
    """One uniform number per sample, from one generator or one generator per sample."""
    n = like.shape[0]
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else like.device
        return torch.rand(n, generator=generator, dtype=torch.float64, device=dev).to(like.device)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for a batch of {n}")
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=g.device)
                      for g in gens]).to(like.device)


def _sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


class Corrector(ABC):
    """``steps`` MCMC steps targeting the model's noise level ``t``: ``corrector(model, x, t,
    generator=..., cond=...) -> CorrectorResult``."""

    name: str = ""
    needs_energy: bool = False

    def __init__(
        self,
        steps: int = 5,
        step_size: float | Callable[[float], float] = 0.05,
        data_variance: float = 1.0,
    ):
        positive_int("steps", steps)
        if not callable(step_size) and not float(step_size) > 0:
            raise ValueError(f"step_size must be positive or a function of t, got {step_size!r}")
        if not data_variance >= 0:
            raise ValueError(f"data_variance must be >= 0, got {data_variance}")
        self.steps = steps
        self.step_size = step_size
        self.data_variance = float(data_variance)

    def eta(self, model: DenoiserBase, t: float) -> float:
        """The Langevin step ``eta`` at time ``t``."""
        if callable(self.step_size):
            eta = float(self.step_size(t))
        else:
            a, s = float(model.process.alpha(t)), float(model.process.sigma(t))
            eta = float(self.step_size) * (a**2 * self.data_variance + s**2)
        if not eta > 0:
            raise ValueError(f"the MCMC step at t={t} must be positive, got {eta}")
        return eta

    def __call__(
        self,
        model: DenoiserBase,
        x: Tensor,
        t: float,
        *,
        generator: Generators = None,
        cond: Mapping[str, Any] | None = None,
    ) -> CorrectorResult:
        if not isinstance(model, DenoiserBase):
            raise TypeError(f"model must be a reverie DenoiserBase, got {type(model).__name__}")
        if self.needs_energy:
            require_energy(model, f"{type(self).__name__} (a Metropolis-adjusted corrector)")
        return self._run(model, x, float(t), self.eta(model, float(t)), generator, dict(cond or {}))

    @abstractmethod
    def _run(self, model, x, t, eta, generator, cond) -> CorrectorResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, step_size={self.step_size})"

    @property
    def label(self) -> str:
        """A short name for tables: ``MALA x5 (0.2, dv 1)``."""
        size = "custom" if callable(self.step_size) else f"{self.step_size:g}"
        return f"{type(self).__name__} x{self.steps} ({size}, dv {self.data_variance:g})"


#: Corrector classes by name (filled by :func:`register`).
CORRECTORS: Registry[type[Corrector]] = Registry("corrector", "CORRECTORS")

C = TypeVar("C", bound=type)


def register(cls: C) -> C:
    """Class decorator: add a :class:`Corrector` subclass to :data:`CORRECTORS` under its
    ``name``."""
    CORRECTORS.add(cls, cls.name)
    return cls


@register
class ULA(Corrector):
    """Unadjusted Langevin (Du et al. 2023, Alg. 1; Roberts & Tweedie 1996):
    ``x <- x + eta grad log q~_t(x) + sqrt(2 eta) xi``. Score only."""

    name = "ula"

    def __init__(self, steps: int = 5, step_size: float | Callable[[float], float] = 0.05,
                 data_variance: float = 0.0):
        super().__init__(steps, step_size, data_variance)

    def _run(self, model, x, t, eta, generator, cond) -> CorrectorResult:
        for _ in range(self.steps):
            x = x + eta * model.score(x, t, **cond) + math.sqrt(2 * eta) * randn_like(x, generator)
        return CorrectorResult(x, 1.0, self.steps)


@register
class MALA(Corrector):
    """Metropolis-adjusted Langevin (Du et al. 2023, sec. 4; Roberts & Tweedie 1996): the ULA
    proposal with a Metropolis-Hastings test. Needs the energy."""

    name = "mala"
    needs_energy = True

    def __init__(self, steps: int = 5, step_size: float | Callable[[float], float] = 0.2,
                 data_variance: float = 1.0):
        super().__init__(steps, step_size, data_variance)

    def _run(self, model, x, t, eta, generator, cond) -> CorrectorResult:
        ld, sc = model.log_density_and_score(x, t, **cond)
        accepted = 0.0
        for _ in range(self.steps):
            prop = x + eta * sc + math.sqrt(2 * eta) * randn_like(x, generator)
            ld_p, sc_p = model.log_density_and_score(prop, t, **cond)
            # log k(x | x') - log k(x' | x), k(b | a) = N(b; a + eta s(a), 2 eta I)
            fwd = _sum((prop - x - eta * sc) ** 2)
            bwd = _sum((x - prop - eta * sc_p) ** 2)
            log_alpha = (ld_p - ld).to(torch.float64) + ((fwd - bwd) / (4 * eta)).to(torch.float64)
            accept = torch.log(_uniform(x, generator)) < log_alpha
            x = _where(accept, prop, x)
            sc = _where(accept, sc_p, sc)
            ld = torch.where(accept, ld_p, ld)
            accepted += float(accept.double().mean())
        return CorrectorResult(x, accepted / self.steps, self.steps + 1)


@register
class HMC(Corrector):
    """Hamiltonian Monte Carlo (Neal 2011; Du et al. 2023, sec. 4): ``leapfrog_steps``
    leapfrog steps of size ``sqrt(2 eta)`` with unit mass, momentum refreshed with
    ``damping`` (0: a fresh momentum each step), and -- when ``adjusted`` -- a Metropolis test
    on the Hamiltonian (needs the energy; on rejection the momentum is negated, Horowitz 1991).
    """

    name = "hmc"

    def __init__(
        self,
        steps: int = 3,
        step_size: float | Callable[[float], float] = 0.1,
        leapfrog_steps: int = 3,
        damping: float = 0.0,
        adjusted: bool = True,
        data_variance: float = 1.0,
    ):
        super().__init__(steps, step_size, data_variance)
        positive_int("leapfrog_steps", leapfrog_steps)
        in_range("damping", damping, 0, 1, hi_open=True)
        self.leapfrog_steps = leapfrog_steps
        self.damping = float(damping)
        self.adjusted = bool(adjusted)
        self.needs_energy = self.adjusted

    def _run(self, model, x, t, eta, generator, cond) -> CorrectorResult:
        eps = math.sqrt(2 * eta)
        rho = self.damping
        if self.adjusted:
            ld, sc = model.log_density_and_score(x, t, **cond)
        else:
            ld, sc = None, model.score(x, t, **cond)
        evals = 1
        p = randn_like(x, generator)
        accepted = 0.0
        for _ in range(self.steps):
            p = rho * p + math.sqrt(1 - rho**2) * randn_like(x, generator)
            xn, pn, scn = x, p, sc
            for _ in range(self.leapfrog_steps):
                pn = pn + 0.5 * eps * scn                     # half step in momentum
                xn = xn + eps * pn                            # full step in position
                if self.adjusted:
                    ldn, scn = model.log_density_and_score(xn, t, **cond)
                else:
                    scn = model.score(xn, t, **cond)
                evals += 1
                pn = pn + 0.5 * eps * scn                     # half step in momentum
            if not self.adjusted:
                x, p, sc = xn, pn, scn
                accepted += 1.0
                continue
            # H = -log q~(x) + |p|^2 / 2
            kinetic = 0.5 * (_sum(pn**2) - _sum(p**2)).to(torch.float64)
            log_alpha = (ldn - ld).to(torch.float64) - kinetic
            accept = torch.log(_uniform(x, generator)) < log_alpha
            x = _where(accept, xn, x)
            sc = _where(accept, scn, sc)
            ld = torch.where(accept, ldn, ld)
            p = _where(accept, pn, -p)
            accepted += float(accept.double().mean())
        return CorrectorResult(x, accepted / self.steps, evals)

    @property
    def label(self) -> str:
        size = "custom" if callable(self.step_size) else f"{self.step_size:g}"
        return (f"{type(self).__name__} {self.steps}x{self.leapfrog_steps} "
                f"({size}, dv {self.data_variance:g})")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, step_size={self.step_size}, "
                f"leapfrog_steps={self.leapfrog_steps}, damping={self.damping}, "
                f"adjusted={self.adjusted})")


@register
class UHMC(HMC):
    """Unadjusted HMC with partial momentum refresh (Du et al. 2023's "UHA"; score only):
    :class:`HMC` with ``adjusted=False`` and ``damping=0.5`` by default."""

    name = "uhmc"

    def __init__(
        self,
        steps: int = 3,
        step_size: float | Callable[[float], float] = 0.05,
        leapfrog_steps: int = 3,
        damping: float = 0.5,
        data_variance: float = 0.0,
    ):
        super().__init__(steps, step_size, leapfrog_steps, damping, adjusted=False,
                         data_variance=data_variance)


def make_corrector(name: str, **kwargs: Any) -> Corrector:
    """A corrector by name (``ula``, ``mala``, ``hmc``, ``uhmc``) with its keyword arguments."""
    return CORRECTORS[name](**kwargs)


@dataclass(frozen=True)
class CorrectedSample:
    """Samples, model calls of the sampler (``nfe``) and of the corrector (``corrector_evals``),
    the mean acceptance rate at each corrected level (``[levels]``) and the grid walked."""

    x0: Tensor
    nfe: int
    corrector_evals: int
    acceptance: Tensor
    grid: Tensor


def sample_with_corrector(
    model: DenoiserBase,
    noise: Tensor,
    corrector: Corrector | None,
    sampler: str = "ddpm",
    steps: int = 50,
    grid: str | Tensor | None = None,
    generator: Generators = None,
    *,
    cond: Mapping[str, Any] | None = None,
    t_range: tuple[float, float] | None = None,
    progress: bool = False,
    **options: Any,
) -> CorrectedSample:
    """Any core sampler with MCMC correction at each noise level (Du et al. 2023, Alg. 2).

    Starts from ``sigma(t_0) * noise``; the corrector runs at ``t_0`` (where a product's
    ``q~`` is not the sampler's Gaussian start) and after every step that lands on a noisy
    grid point, for the times in ``t_range = (lo, hi)`` (all by default). ``corrector=None``
    is the plain sampler (for comparisons). ``sampler``/``steps``/``grid``/``options`` are as in
    :func:`reverie.samplers.sample`.
    """
    if corrector is not None and not isinstance(corrector, Corrector):
        raise TypeError(f"corrector must be a Corrector (ULA, MALA, HMC, UHMC) or None, "
                        f"got {type(corrector).__name__}")
    if not isinstance(model, DenoiserBase):
        raise TypeError(f"model must be a reverie DenoiserBase, got {type(model).__name__}")
    if corrector is not None and corrector.needs_energy:
        require_energy(model, f"{type(corrector).__name__} (a Metropolis-adjusted corrector)")
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    check_options("sampler", info.name, options, info.options)
    shape = getattr(model, "sample_shape", None)
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        raise ValueError("noise must be a floating-point tensor [batch, *sample_shape]")
    if shape is not None and tuple(noise.shape[1:]) != tuple(shape):
        raise ValueError(f"noise has samples of shape {tuple(noise.shape[1:])}, but the model "
                         f"expects {tuple(shape)}")
    process = model.process
    g = resolve_grid(info, process, steps, grid)
    sch = Schedule.build(process, g)
    lo, hi = t_range if t_range is not None else (-math.inf, math.inf)
    cond = dict(cond or {})
    acceptance: list[float] = []
    evals = 0

    def correct(st: State, t: float) -> State:
        nonlocal evals
        if corrector is None or not lo <= t <= hi:
            return st
        with torch.no_grad():
            res = corrector(model, st.x, t, generator=generator, cond=cond)
        acceptance.append(res.acceptance)
        evals += res.evaluations
        return replace(st, x=res.x)

    def hook(st: State, sch: Schedule) -> State | None:
        return correct(st, sch.t[st.i]) if sch.sigma[st.i] > 0 else None

    x = correct(State(noise * float(process.sigma(g[0]))), sch.t[0]).x
    out = run(info, model, x, g, generator=generator, cond=cond, progress=progress, hook=hook,
              **options)
    return CorrectedSample(out.x0, out.nfe, evals,
                           torch.tensor(acceptance, dtype=torch.float64), g)

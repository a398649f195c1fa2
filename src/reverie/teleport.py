"""Analytical teleportation: skip the Gaussian phase of sampling in closed form.

Wang & Vastola (2023), "The hidden linear structure in score-based models and its application"
(arXiv:2311.10892): at high noise the learned denoiser is that of a Gaussian with the data's
mean and covariance, whose probability-flow ODE has a closed-form solution, so the first part
of sampling can be replaced by that solution ("teleportation") and the model calls spent below.

* :func:`fit_gaussian` reads the Gaussian off the model itself (no data): at a high-noise time
  ``t`` the denoiser is linear, ``D(x) = mu + B (x - alpha mu)`` with
  ``B = alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1`` (Tweedie), so a least-squares fit of ``D`` on
  ``x`` over ``n > dim`` points gives ``B`` and, per eigenvalue ``b`` of ``B``, the data
  variance ``lambda = sigma^2 b / (alpha (1 - alpha b))`` and the mean. The paper fits the same
  Gaussian from the training set (:meth:`GaussianFit.from_data`).
* :meth:`GaussianFit.teleport` is the exact ODE map of that Gaussian
  (:meth:`reverie.reference.Gaussian.ode_map`).
* :func:`sample` teleports from ``t_max`` to the time where ``sigma / alpha`` equals ``skip``
  times the largest data standard deviation and runs a sampler on a grid from there.

On the benchmark mixtures the failure this removes is the first step of a few-step sampler: a
first-order jump from ``sigma / alpha ~ 157`` onto the scale of the data contracts the widest
direction (by ``sigma_1 / sqrt(lambda + sigma_1^2)``), which moves the decision between far-apart
modes (BENCHMARKS.md, "samplers: analytical teleportation").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import randn
from reverie.denoisers import DenoiserBase
from reverie.grids import make_grid
from reverie.reference import Gaussian
from reverie.samplers import SampleOutput, run

__all__ = ["GaussianFit", "fit_gaussian", "sample", "SKIP", "SAMPLER"]

# chosen at 5 NFE on the tuning mixtures 1, 2, 101-104 (split A; BENCHMARKS.md, "samplers:
# analytical teleportation"): skip in {0.5, 0.75, 1, 1.5, 2}, sampler in {ipndm, unipc, dpmpp_3m}
SKIP, SAMPLER = 1.0, "unipc"


@dataclass(frozen=True)
class GaussianFit:
    """A Gaussian ``N(mean, cov)`` standing in for the data at high noise, the sample ``shape``
    and the model calls its fit cost (``nfe``)."""

    gaussian: Gaussian
    shape: tuple[int, ...]
    nfe: int = 0

    @classmethod
    def from_moments(cls, mean: Tensor, cov: Tensor, shape: tuple[int, ...] | None = None
                     ) -> GaussianFit:
        """The Gaussian of a known mean ``[d]`` and covariance ``[d, d]``."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        return cls(Gaussian(mean, torch.as_tensor(cov, dtype=torch.float64)),
                   tuple(shape) if shape is not None else (mean.numel(),))

    @classmethod
    def from_data(cls, x: Tensor) -> GaussianFit:
        """The paper's fit: the mean and covariance of data samples ``x`` (batch first)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[0] <= flat.shape[1]:
            raise ValueError(f"need more samples than dimensions for a covariance, got "
                             f"{flat.shape[0]} samples of dimension {flat.shape[1]}")
        return cls.from_moments(flat.mean(0), torch.cov(flat.T), tuple(x.shape[1:]))

    @property
    def mean(self) -> Tensor:
        return self.gaussian.means[0]

    @property
    def cov(self) -> Tensor:
        return self.gaussian.covariances[0]

    @property
    def scale(self) -> float:
        """The largest standard deviation of the data (``sqrt`` of the top eigenvalue)."""
        return math.sqrt(float(self.gaussian.evals.max()))

    def teleport(self, x: Tensor, t_from: float, t_to: float, process) -> Tensor:
        """The exact probability-flow ODE map of this Gaussian from ``t_from`` to ``t_to``."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"this fit is for samples of shape {self.shape}, got "
                             f"{tuple(x.shape[1:])}")
        return self.gaussian.ode_map(x, float(t_from), float(t_to), process)


def fit_gaussian(
    denoiser: DenoiserBase,
    shape: tuple[int, ...] | list[int],
    *,
    n: int | None = None,
    t: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> GaussianFit:
    """The data's mean and covariance read off the model at the high-noise time ``t`` (default
    ``t_max``; a thousandth below where ``alpha(t_max) = 0``): ``n`` model calls (default
    ``max(256, 4 dim)``) at ``x = sigma(t) z`` and a least-squares fit of the linear denoiser
    (module docstring). Exact for Gaussian data; at high noise, the data's first two moments
    for any data (Wang & Vastola 2023, Sec. 4)."""
    shape = tuple(shape)
    dim = math.prod(shape)
    n = max(256, 4 * dim) if n is None else n
    positive_int("n", n)
    if n <= dim + 1:
        raise ValueError(f"fit_gaussian needs more model calls n than dimensions + 1 for the "
                         f"linear fit, got n={n} for dimension {dim}")
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
    proc = denoiser.process
    if t is None:
        t = proc.t_max
        if float(proc.alpha(t)) == 0:  # x carries no information at alpha = 0
            t = proc.t_max - (proc.t_max - proc.t_clean) / 1000
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    if not (a > 0 and s > 0):
        raise ValueError(f"fit_gaussian needs alpha(t) > 0 and sigma(t) > 0, got {a} and {s} "
                         f"at t={t}")
    x = randn((n, *shape), generator, dtype=dtype) * s
    with torch.no_grad():
        d = denoiser(x, t, **(cond or {}))
    xf, df = (v.reshape(n, dim).to(torch.float64) for v in (x, d))
    xm, dm = xf.mean(0), df.mean(0)
    b = torch.linalg.lstsq(xf - xm, df - dm).solution.T  # D(x) ~ dm + B (x - xm)
    b_ev, u = torch.linalg.eigh((b + b.T) / 2)
    b_ev = b_ev.clamp(0.0, (1 - 1e-9) / a)
    lam = s**2 * b_ev / (a * (1 - a * b_ev))  # B = a S (a^2 S + s^2)^-1, per eigenvalue
    # dm = mu + B (xm - a mu)  ->  mu = (I - a B)^-1 (dm - B xm)
    mu = u @ (((dm - b @ xm) @ u) / (1 - a * b_ev))
    return GaussianFit(Gaussian(mu, (u * lam) @ u.T), shape, n)


def sample(
    denoiser: DenoiserBase,
    noise: Tensor,
    sampler: str = SAMPLER,
    steps: int = 5,
    *,
    fit: GaussianFit,
    grid: str = "angle",
    skip: float = SKIP,
    generator=None,
    cond: Mapping[str, Any] | None = None,
    **options: Any,
) -> SampleOutput:
    """Teleport ``sigma(t_max) * noise`` with ``fit`` to ``t_1``, where ``sigma / alpha =
    skip * fit.scale`` (no teleport if that is above ``t_max``), then walk the named ``grid``
    of ``steps`` steps from ``t_1`` with ``sampler``; the model calls are the sampler's alone
    (the fit's ``fit.nfe`` are paid once per model). Defaults: chosen at 5 NFE
    (:data:`SAMPLER`, :data:`SKIP`, the ``angle`` grid)."""
    if not isinstance(fit, GaussianFit):
        raise TypeError(f"fit must be a GaussianFit (reverie.teleport.fit_gaussian), "
                        f"got {type(fit).__name__}")
    if isinstance(skip, bool) or not isinstance(skip, (int, float)) or not skip > 0:
        raise ValueError(f"skip must be a positive number, got {skip!r}")
    if not isinstance(grid, str):
        raise TypeError(f"grid must be a grid name (the walk starts at the teleport's time), "
                        f"got {type(grid).__name__}")
    proc = denoiser.process
    s1 = torch.tensor(skip * fit.scale, dtype=torch.float64)
    t1 = min(float(proc.t_from_sigma_ve(s1)), proc.t_max)
    if not t1 > proc.t_min:
        raise ValueError(f"skip={skip} teleports to t={t1}, at or below t_min={proc.t_min}; "
                         f"use a larger skip")
    g = make_grid(proc, steps, grid, t_max=t1)
    x = noise * float(proc.sigma(proc.t_max))
    if t1 < proc.t_max:
        x = fit.teleport(x, proc.t_max, t1, proc).to(noise.dtype)
    return run(sampler, denoiser, x, g, generator=generator, cond=cond, **options)

"""Synthetic seasonal series with an exactly known law.

A :class:`SeasonalGP` is a stationary Gaussian process on ``length`` equally spaced time steps,
the sum of four independent parts (Rasmussen & Williams 2006, ch. 4 for the kernels):

* a seasonal part with the periodic kernel ``a^2 exp(-2 sin^2(pi |i - j| / period) / ell^2)``;
* an AR(1) / Ornstein-Uhlenbeck part ``b^2 phi^|i - j|`` (short-term persistence);
* a slow level with the squared-exponential kernel ``c^2 exp(-(i - j)^2 / (2 L^2))``;
* white observation noise ``nu^2 delta_ij``,

plus a constant ``level``. Its mean and covariance are exact, so the law of any forecast window
or any set of missing values given the observed ones is a closed-form Gaussian
(:meth:`SeasonalGP.conditional`), and its denoiser under every Gaussian process is exact
(:meth:`SeasonalGP.denoiser`, through :class:`reverie.reference.Gaussian`). These are the
references of :mod:`reverie.timeseries` (TSDiff, Kollovieh et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference import Gaussian, linear_gaussian_posterior

__all__ = ["SeasonalGP", "forecast_mask", "check_mask"]


@dataclass(frozen=True)
class SeasonalGP:
    """The seasonal Gaussian process of the module docstring (defaults: the bundled
    ``seasonal`` model's data: 48 steps, period 12)."""

    length: int = 48
    period: float = 12.0
    seasonal_scale: float = 1.0
    seasonal_lengthscale: float = 1.0
    ar_scale: float = 0.5
    ar_coef: float = 0.8
    level_scale: float = 0.5
    level_lengthscale: float = 16.0
    noise: float = 0.1
    level: float = 0.0

    def __post_init__(self) -> None:
        positive_int("length", self.length)
        if not 0.0 <= self.ar_coef < 1.0:
            raise ValueError(f"ar_coef must be in [0, 1) for a stationary AR(1), got "
                             f"{self.ar_coef}")
        for name in ("period", "seasonal_lengthscale", "level_lengthscale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def mean(self) -> Tensor:
        """The exact mean ``[length]`` (float64): the constant ``level``."""
        return torch.full((self.length,), float(self.level), dtype=torch.float64)

    def covariance(self) -> Tensor:
        """The exact covariance ``[length, length]`` (float64): the sum of the four kernels."""
        i = torch.arange(self.length, dtype=torch.float64)
        lag = (i[:, None] - i[None, :]).abs()
        seasonal = self.seasonal_scale**2 * torch.exp(
            -2.0 * torch.sin(math.pi * lag / self.period) ** 2 / self.seasonal_lengthscale**2)
        ar = self.ar_scale**2 * self.ar_coef**lag
        slow = self.level_scale**2 * torch.exp(-0.5 * lag**2 / self.level_lengthscale**2)
        return seasonal + ar + slow + self.noise**2 * torch.eye(self.length, dtype=torch.float64)

    def gaussian(self) -> Gaussian:
        """The law as a :class:`reverie.reference.Gaussian` (exact denoiser, score, density)."""
        return Gaussian(self.mean(), self.covariance())

    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` exact series ``[n, length]`` (float64)."""
        return self.gaussian().sample(positive_int("n", n), generator)

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """The exact denoiser ``E[x0 | x_t]`` under ``process`` (prediction ``"x0"``)."""
        return self.gaussian().denoiser(process)

    def conditional(self, y: Tensor, mask: Tensor) -> Gaussian:
        """The exact law of the whole series given its values ``y`` where ``mask`` is true.

        ``y``: ``[length]`` (values where ``mask`` is false are ignored); ``mask``: ``[length]``
        bool. Returns a :class:`Gaussian` on all ``length`` steps (the observed ones with
        their values and zero variance, up to round-off)."""
        mask = check_mask(mask, self.length)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if y.shape != (self.length,):
            raise ValueError(f"y must hold {self.length} values, got shape {tuple(y.shape)}")
        if not bool(mask.any()):
            return self.gaussian()
        rows = torch.eye(self.length, dtype=torch.float64)[mask]  # the selection operator
        post = linear_gaussian_posterior(self.gaussian(), rows, y[mask], 0.0)
        return Gaussian(post.means[0], post.covariances[0])


def forecast_mask(length: int, horizon: int) -> Tensor:
    """The observation mask ``[length]`` of forecasting the last ``horizon`` steps from the
    ones before (true = observed)."""
    positive_int("horizon", horizon)
    if horizon >= length:
        raise ValueError(f"the forecast horizon ({horizon}) must be shorter than the series "
                         f"({length} steps), leaving at least one observed step")
    mask = torch.ones(length, dtype=torch.bool)
    mask[length - horizon:] = False
    return mask


def check_mask(mask: Tensor, length: int) -> Tensor:
    """``mask`` as a bool ``[length]`` tensor, or a one-line error."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor of shape [{length}], got "
                        f"{type(mask).__name__}")
    if mask.shape != (length,):
        raise ValueError(f"mask must have shape [{length}] (one entry per time step), got "
                         f"{tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    return mask

"""Measurement noise models: ``y ~ p(y | A(x))``.

A noise model draws measurements (:meth:`sample`) and scores them
(:meth:`log_likelihood`, differentiable in ``A(x)``), so likelihood-based methods (DPS, TDS,
RED-diff) work with any of them; the linear-Gaussian methods (PiGDM, DDRM, DiffPIR, MCGdiff)
need :class:`GaussianNoise`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive
from reverie._random import Generators, randn_like

__all__ = ["NoiseModel", "GaussianNoise", "PoissonNoise", "as_noise_model"]


class NoiseModel:
    """Base class of measurement noise models."""

    def sample(self, ax: Tensor, generator: Generators = None) -> Tensor:
        """A measurement ``y`` given the clean measurement ``A(x)`` ``[B, ...]``."""
        raise TypeError(f"{type(self).__name__} cannot draw measurements")

    def log_likelihood(self, y: Tensor, ax: Tensor) -> Tensor:
        """``log p(y | A(x))`` per sample ``[B]`` (differentiable in ``ax``)."""
        raise TypeError(f"{type(self).__name__} has no log-likelihood")

    def dps_residual(self, y: Tensor, ax: Tensor) -> Tensor:
        """The weighted residual whose norm DPS descends (Chung et al. 2023, Alg. 1 / 2)."""
        raise TypeError(f"{type(self).__name__} has no DPS residual")


class GaussianNoise(NoiseModel):
    """``y = A(x) + std * eps``; ``std = 0`` is a noiseless measurement."""

    def __init__(self, std: float):
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std):
            raise TypeError(f"noise_std must be a finite number, got {std!r}")
        if std < 0:
            raise ValueError(f"noise_std must be >= 0, got {std}")
        self.std = float(std)

    def sample(self, ax: Tensor, generator: Generators = None) -> Tensor:
        if self.std == 0:
            return ax.clone()
        return ax + self.std * randn_like(ax, generator)

    def log_likelihood(self, y: Tensor, ax: Tensor) -> Tensor:
        if self.std == 0:
            raise ValueError("a noiseless measurement (noise_std = 0) has no finite likelihood")
        r = (y - ax).reshape(ax.shape[0], -1)
        d = r.shape[1]
        log_norm = d * (math.log(self.std) + 0.5 * math.log(2 * math.pi))
        return -0.5 * (r**2).sum(1) / self.std**2 - log_norm

    def dps_residual(self, y: Tensor, ax: Tensor) -> Tensor:
        # DPS Alg. 1: || y - A(x0_hat) ||
        return (y - ax).reshape(ax.shape[0], -1)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class PoissonNoise(NoiseModel):
    """Shot noise: ``rate * y ~ Poisson(rate * A(x))`` (so ``E[y] = A(x)`` and ``Var[y] =
    A(x) / rate``); ``A(x)`` must be non-negative (it is clamped at ``eps``)."""

    def __init__(self, rate: float, eps: float = 1e-6):
        self.rate = positive("rate", rate)
        self.eps = float(eps)

    def sample(self, ax: Tensor, generator: Generators = None) -> Tensor:
        lam = self.rate * ax.clamp(min=0.0)
        if isinstance(generator, (list, tuple)):
            rows = [torch.poisson(lam[i : i + 1], generator=g) for i, g in enumerate(generator)]
            return torch.cat(rows) / self.rate
        return torch.poisson(lam, generator=generator) / self.rate

    def log_likelihood(self, y: Tensor, ax: Tensor) -> Tensor:
        k = (self.rate * y).reshape(y.shape[0], -1)
        lam = (self.rate * ax.clamp(min=self.eps)).reshape(ax.shape[0], -1)
        return (k * torch.log(lam) - lam - torch.lgamma(k + 1)).sum(1)

    def dps_residual(self, y: Tensor, ax: Tensor) -> Tensor:
        # DPS Alg. 2: || y - A(x0_hat) ||_Lambda with Lambda_ii = 1 / (2 y_i) (in counts)
        k = (self.rate * y).reshape(y.shape[0], -1)
        r = self.rate * (y - ax).reshape(ax.shape[0], -1)
        return r / torch.sqrt(2.0 * k.clamp(min=1.0))

    def __repr__(self) -> str:
        return f"PoissonNoise(rate={self.rate})"


def as_noise_model(noise: float | NoiseModel) -> NoiseModel:
    """A noise model from ``noise_std`` (a number: Gaussian) or a :class:`NoiseModel`."""
    if isinstance(noise, NoiseModel):
        return noise
    if isinstance(noise, Tensor) and noise.numel() == 1:
        noise = float(noise)
    return GaussianNoise(noise)

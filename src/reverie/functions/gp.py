"""Gaussian-process data over functions: exact samples at any locations, the exact posterior
given observed points and the exact denoiser of function values at any set of locations.

A sample is a set of pairs ``(x_i, y_i)`` at arbitrary input locations ``x_i`` in a 1-D
``domain`` (Neural Diffusion Processes, Dutordoir et al. 2023; Functional Diffusion
Processes, Franzese et al. 2023). Under ``y ~ GP(0, k) + N(0, noise^2)`` the values at
locations ``x`` are ``N(0, C)`` with ``C = k(x, x) + noise^2 I``, so noising them by any
reverie process, ``y_t = alpha y + sigma eps``, keeps them Gaussian and the denoiser is

    E[y | y_t] = alpha C (alpha^2 C + sigma^2 I)^-1 y_t

at every location set (:class:`reverie.reference.Gaussian` for a shared set, a batched solve
for one set per sample). Values and locations are ``[B, N]`` (locations may be one shared
``[N]`` set).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive
from reverie._random import Generators, randn
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess
from reverie.reference import Gaussian

__all__ = ["KERNELS", "Kernel", "GP", "GPDenoiser"]

#: Stationary correlations of the scaled distance ``r = |x - x'| / lengthscale``; the periodic
#: kernel (MacKay) takes ``|x - x'|`` and its period instead.
KERNELS = ("se", "matern12", "matern32", "matern52", "periodic")


class Kernel:
    """A stationary covariance ``variance * rho(|x - x'|)`` on 1-D inputs (Rasmussen &
    Williams 2006, ch. 4): squared exponential ``exp(-r^2/2)``, Matern 1/2, 3/2, 5/2, or
    periodic ``exp(-2 sin^2(pi |x - x'| / period) / lengthscale^2)``."""

    def __init__(self, name: str = "se", lengthscale: float = 0.25, variance: float = 1.0,
                 period: float = 1.0):
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; expected one of {', '.join(KERNELS)}")
        self.name = name
        self.lengthscale = positive("lengthscale", lengthscale)
        self.variance = positive("variance", variance)
        self.period = positive("period", period)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """``k(a_i, b_j)``: ``[..., Na]`` and ``[..., Nb]`` locations to ``[..., Na, Nb]``."""
        d = (a.to(torch.float64)[..., :, None] - b.to(torch.float64)[..., None, :]).abs()
        if self.name == "periodic":
            s = torch.sin(math.pi * d / self.period)
            return self.variance * torch.exp(-2 * s**2 / self.lengthscale**2)
        r = d / self.lengthscale
        if self.name == "se":
            rho = torch.exp(-0.5 * r**2)
        elif self.name == "matern12":
            rho = torch.exp(-r)
        elif self.name == "matern32":
            rho = (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
        else:
            rho = (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r)
        return self.variance * rho

    def __repr__(self) -> str:
        extra = f", period={self.period}" if self.name == "periodic" else ""
        return (f"Kernel({self.name!r}, lengthscale={self.lengthscale}, "
                f"variance={self.variance}{extra})")


class GP:
    """``y(x) = f(x) + noise * eps`` with ``f ~ GP(0, kernel)`` on ``domain = (lo, hi)``;
    ``jitter`` is added to the diagonal for numerically stable factorisations."""

    def __init__(self, kernel: Kernel | None = None, noise: float = 0.0,
                 domain: tuple[float, float] = (-1.0, 1.0), jitter: float = 1e-6):
        self.kernel = Kernel() if kernel is None else kernel
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a reverie.functions.Kernel, got "
                            f"{type(self.kernel).__name__}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        lo, hi = (float(v) for v in domain)
        if not lo < hi:
            raise ValueError(f"domain must be (lo, hi) with lo < hi, got {domain}")
        self.noise, self.domain, self.jitter = float(noise), (lo, hi), float(jitter)

    # ---- checks ------------------------------------------------------------------------------
    def check_locations(self, x: Tensor, name: str = "locations") -> Tensor:
        """``x`` as float64 ``[N]`` or ``[B, N]``; raise if a location is outside the domain."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim not in (1, 2) or x.shape[-1] == 0:
            raise ValueError(f"{name} must be [N] or [B, N] with N >= 1, got {list(x.shape)}")
        lo, hi = self.domain
        if not bool(torch.isfinite(x).all()) or bool(((x < lo) | (x > hi)).any()):
            raise ValueError(f"{name} must lie in the domain [{lo}, {hi}]; got values in "
                             f"[{float(x.min())}, {float(x.max())}]")
        return x

    @staticmethod
    def check_pairs(x: Tensor, y: Tensor, name: str = "observations") -> None:
        """Raise unless values ``y`` ``[B, N]`` (or ``[N]``) match locations ``x`` point for
        point."""
        if y.shape[-1] != x.shape[-1] or (x.ndim == 2 and y.shape[:-1] != x.shape[:-1]):
            raise ValueError(f"{name}: locations {list(x.shape)} and values {list(y.shape)} "
                             f"must have the same number of points")

    # ---- exact law ---------------------------------------------------------------------------
    def cov(self, x: Tensor) -> Tensor:
        """Covariance of the values at ``x``: ``k(x, x) + (noise^2 + jitter) I``."""
        x = torch.as_tensor(x, dtype=torch.float64)
        eye = torch.eye(x.shape[-1], dtype=torch.float64)
        return self.kernel(x, x) + (self.noise**2 + self.jitter) * eye

    def locations(self, n: int, points: int, generator: Generators = None) -> Tensor:
        """``[n, points]`` locations uniform on the domain."""
        lo, hi = self.domain
        u = torch.rand((n, points), generator=generator, dtype=torch.float64)
        return lo + (hi - lo) * u

    def sample(self, x: Tensor, n: int | None = None, generator: Generators = None) -> Tensor:
        """Exact values at ``x``: ``[n, N]`` for shared ``x`` ``[N]``, ``[B, N]`` for ``[B, N]``."""
        x = self.check_locations(x)
        b = x.shape[0] if x.ndim == 2 else (1 if n is None else int(n))
        chol = torch.linalg.cholesky(self.cov(x))
        z = randn((b, x.shape[-1]), generator, dtype=torch.float64)
        return (chol @ z[..., None])[..., 0]

    def posterior(self, x_obs: Tensor, y_obs: Tensor, x_target: Tensor) -> tuple[Tensor, Tensor]:
        """The exact law of the values at ``x_target`` given ``y_obs`` at ``x_obs`` (Rasmussen &
        Williams eq. 2.22-2.24): mean ``K_to C_oo^-1 y`` and covariance ``C_tt - K_to C_oo^-1
        K_ot``. Shared ``[M]``/``[N]`` locations or batched ``[B, M]``/``[B, N]``."""
        x_obs = self.check_locations(x_obs, "observed locations")
        x_target = self.check_locations(x_target, "target locations")
        y_obs = torch.as_tensor(y_obs, dtype=torch.float64)
        self.check_pairs(x_obs, y_obs)
        c_oo = self.cov(x_obs)
        k_to = self.kernel(x_target, x_obs)
        chol = torch.linalg.cholesky(c_oo)
        w = torch.cholesky_solve(k_to.transpose(-1, -2), chol)  # C_oo^-1 K_ot
        mean = (w.transpose(-1, -2) @ y_obs[..., None])[..., 0]
        return mean, self.cov(x_target) - k_to @ w

    def denoise_at(self, y: Tensor, x: Tensor, alpha: Tensor | float,
                   sigma: Tensor | float) -> Tensor:
        """``E[y | y_t]`` for ``y_t = alpha y + sigma eps`` at locations ``x`` (module doc)."""
        x = self.check_locations(x)
        self.check_pairs(x, y, "noisy values")
        if x.ndim == 1:  # one location set: the reference Gaussian
            return Gaussian(torch.zeros(x.shape[0]), self.cov(x)).denoise_at(y, alpha, sigma)
        b = y.shape[0]
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).expand(b)[:, None, None]
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(b)[:, None, None]
        c = self.cov(x)
        eye = torch.eye(x.shape[-1], dtype=torch.float64)
        out = a * c @ torch.linalg.solve(a**2 * c + s**2 * eye, y.to(torch.float64)[..., None])
        return out[..., 0].to(y.dtype)

    def denoiser(self, process: GaussianProcess) -> GPDenoiser:
        """The exact denoiser of these values under ``process``; call it with
        ``locations=`` (``[N]`` or ``[B, N]``)."""
        return GPDenoiser(self, process)

    def __repr__(self) -> str:
        return f"GP({self.kernel!r}, noise={self.noise}, domain={self.domain})"


class GPDenoiser(DenoiserBase):
    """The exact denoiser of :class:`GP` values; the locations come as ``cond``
    (``denoiser(y_t, t, locations=x)``), so any sampler runs at any set of points."""

    def __init__(self, gp: GP, process: GaussianProcess):
        self.gp, self.process = gp, process

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if "locations" not in cond:
            raise ValueError("a function denoiser needs the locations: pass cond={'locations': "
                             "x} ([N] or [B, N])")
        tt = time_tensor(t, x).to(torch.float64)
        return self.gp.denoise_at(x, cond["locations"], self.process.alpha(tt),
                                  self.process.sigma(tt))

    def __repr__(self) -> str:
        return f"GPDenoiser({self.gp!r}, {self.process!r})"

"""Stationary Gaussian random fields: exact denoisers at any size, the reference for tiled,
panoramic and long-sequence generation (:mod:`reverie.large`).

A zero-mean Gaussian field with covariance ``C`` over a grid (1-D, 2-D, or frames x space)
has the exact denoiser, for a state ``x = A x0 + S eps`` with diagonal ``A`` (the ``alpha`` of
each entry) and ``S`` (its ``sigma``),

    E[x0 | x] = C A (A C A + S^2)^-1 x,

which at one common noise level is ``U diag(a l / (a^2 l + s^2)) U^T x`` in the eigenbasis of
``C``. The same field restricted to a window is the "window model" that tiled generation
runs; the big field's covariance is what the tiled output should have. Samplers without
noise injection are linear maps of their starting noise when the denoiser is linear, so
:func:`linear_covariance` gives the *exact* covariance of their output (no Monte Carlo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess

__all__ = ["GaussianField", "linear_covariance", "KERNELS"]

#: Stationary correlation functions of the distance ``r`` in units of the lengthscale.
KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "se": lambda r: torch.exp(-0.5 * r**2),  # squared exponential
    "matern32": lambda r: (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r),
    "matern52": lambda r: (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r),
}


def _axis_offsets(n: int, periodic: bool) -> Tensor:
    """``[n, n, m]`` signed offsets ``i - j (+ k n)`` along one axis (``m`` images of a ring)."""
    d = torch.arange(n, dtype=torch.float64)
    diff = d[:, None] - d[None, :]
    if not periodic:
        return diff[..., None]
    return diff[..., None] + n * torch.arange(-3, 4, dtype=torch.float64)  # wrapped images


class GaussianField:
    """A zero-mean Gaussian field over a grid of ``shape`` with a dense covariance ``cov``
    (``[D, D]``, ``D = prod(shape)``, row-major order)."""

    def __init__(self, cov: Tensor, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        d = math.prod(self.shape)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise ValueError(f"cov must be [{d}, {d}] for shape {self.shape}, got "
                             f"{tuple(cov.shape)}")
        self.cov = 0.5 * (cov + cov.T)
        evals, self.evecs = torch.linalg.eigh(self.cov)
        if float(evals.min()) < -1e-8 * float(evals.max()):
            raise ValueError("cov must be positive semi-definite")
        self.evals = evals.clamp(min=0.0)

    @classmethod
    def stationary(cls, shape: int | Sequence[int], lengthscale: float, *, kernel: str = "se",
                   variance: float = 1.0, periodic: bool | Sequence[bool] = False,
                   nugget: float = 1e-6) -> GaussianField:
        """A stationary field ``k(|i - j| / lengthscale)`` on a grid; ``periodic`` (per axis)
        makes the axis a ring (the kernel summed over the ring's images: a circulant, positive
        semi-definite covariance). ``nugget`` adds a little white noise (keeps ``cov``
        invertible, as the exact frame denoiser needs)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
        per = (periodic,) * len(shape) if isinstance(periodic, bool) else tuple(periodic)
        if len(per) != len(shape):
            raise ValueError(f"periodic has {len(per)} entries for a {len(shape)}-d grid")
        cov = _stationary_cov(shape, per, lengthscale, KERNELS[kernel])
        d = math.prod(shape)
        return cls(variance * cov + nugget * torch.eye(d, dtype=torch.float64), shape)

    @classmethod
    def ar1(cls, frames: int, rho: float, space: GaussianField) -> GaussianField:
        """Frames of a stationary AR(1) process in time, ``x_{k+1} = rho x_k + sqrt(1 - rho^2)
        xi`` with ``xi ~ space``: covariance ``rho^|k - l| C_space`` (frames along dim 1)."""
        k = torch.arange(frames, dtype=torch.float64)
        r = float(rho) ** (k[:, None] - k[None, :]).abs()
        return cls(torch.kron(r, space.cov), (frames, *space.shape))

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def window(self, start: Sequence[int], size: Sequence[int]) -> GaussianField:
        """The field restricted to the box ``start : start + size`` (its marginal)."""
        idx = torch.arange(self.dim).reshape(self.shape)
        for a, (s, n) in enumerate(zip(start, size)):
            idx = idx.narrow(a, s, n)
        flat = idx.reshape(-1)
        return GaussianField(self.cov[flat][:, flat], tuple(size))

    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` exact samples ``[n, *shape]`` (float64)."""
        z = randn((n, self.dim), generator, dtype=torch.float64)
        return (z * self.evals.sqrt() @ self.evecs.T).reshape(n, *self.shape)

    def denoise_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """``E[x0 | x]`` for ``x = alpha x0 + sigma eps`` ``[B, *shape]``. ``alpha`` and
        ``sigma`` are numbers, ``[B]`` (one level per sample) or ``[B, *shape[:k]]`` (one per
        entry of the leading axes, e.g. one per frame)."""
        b = x.shape[0]
        x64 = x.reshape(b, self.dim).to(torch.float64)
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if a.numel() in (1, b) and s.numel() in (1, b):  # one level per sample: eigenbasis
            a, s = a.expand(b)[:, None], s.expand(b)[:, None]
            gain = a * self.evals / (a**2 * self.evals + s**2)  # [B, D]
            out = ((x64 @ self.evecs) * gain) @ self.evecs.T
            return out.reshape(x.shape).to(x.dtype)
        # one level per entry of the leading axes: C A (A C A + S^2)^-1 x, per distinct ladder
        a = _per_entry(alpha, b, self.shape)
        s = _per_entry(sigma, b, self.shape)
        out = torch.empty_like(x64)
        levels = torch.cat([a, s], 1)
        for row in levels.unique(dim=0):
            sel = (levels == row).all(1)
            ai, si = row[: self.dim], row[self.dim:]
            m = ai[:, None] * self.cov * ai[None, :] + torch.diag(si**2)
            out[sel] = (ai * torch.linalg.solve(m, x64[sel].T).T) @ self.cov
        return out.reshape(x.shape).to(x.dtype)

    def denoiser(self, process: GaussianProcess) -> FieldDenoiser:
        """The exact denoiser under ``process``; ``t`` is ``[B]`` (a reverie denoiser) or
        ``[B, F]`` (one time per frame along dim 1, for :func:`reverie.large.fifo`)."""
        return FieldDenoiser(self, process)

    def __repr__(self) -> str:
        return f"GaussianField(shape={self.shape})"


class FieldDenoiser(DenoiserBase):
    """The exact denoiser of a :class:`GaussianField`; ``window`` is its frame count (for a
    sequence field) so :func:`reverie.large.fifo` can check the queue against it."""

    def __init__(self, field: GaussianField, process: GaussianProcess):
        self.field, self.process = field, process
        self.sample_shape = field.shape
        self.window = field.shape[0]

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if x.shape[1:] != self.field.shape:
            raise ValueError(f"this field denoiser takes samples of shape {list(self.field.shape)}"
                             f", got {list(x.shape[1:])}")
        if isinstance(t, Tensor) and t.ndim == 2:  # one time per frame
            tt = t.to(torch.float64)
            return self.field.denoise_at(x, self.process.alpha(tt), self.process.sigma(tt))
        tt = time_tensor(t, x).to(torch.float64)
        return self.field.denoise_at(x, self.process.alpha(tt), self.process.sigma(tt))

    def __repr__(self) -> str:
        return f"FieldDenoiser({self.field!r}, {self.process!r})"


def _per_entry(v: Tensor | float, b: int, shape: tuple[int, ...]) -> Tensor:
    """A level given per sample or per entry of the leading axes, as ``[B, D]``."""
    v = torch.as_tensor(v, dtype=torch.float64)
    v = v.reshape(v.shape + (1,) * (1 + len(shape) - v.ndim)) if v.ndim else v
    return v.expand(b, *shape).reshape(b, -1)


def _stationary_cov(shape: tuple[int, ...], periodic: tuple[bool, ...], lengthscale: float,
                    k: Callable[[Tensor], Tensor]) -> Tensor:
    """``sum over images of k(r / l)`` for every pair of grid points, ``[D, D]``."""
    # squared offsets per axis with the images as a trailing dim, combined as an outer sum
    r2 = torch.zeros((1, 1, 1), dtype=torch.float64)  # [D_sofar, D_sofar, M_sofar]
    for n, p in zip(shape, periodic):
        off2 = _axis_offsets(n, p) ** 2  # [n, n, m]
        r2 = (r2[:, None, :, None, :, None] + off2[None, :, None, :, None, :])
        d0, d1, d2, d3, m0, m1 = r2.shape
        r2 = r2.reshape(d0 * d1, d2 * d3, m0 * m1)
    return k(r2.sqrt() / float(lengthscale)).sum(-1)


def linear_covariance(fn: Callable[[Tensor], Tensor], dim: int, *,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact covariance of ``fn(z)``, ``z ~ N(0, I_dim)``, for a *linear* ``fn`` (a
    deterministic sampler of a linear denoiser, any fusion of its windows): push the
    identity through (``fn`` maps ``[B, dim]`` to ``[B, ...]``) and return ``M^T M``."""
    m = fn(torch.eye(dim, dtype=dtype)).reshape(dim, -1).to(torch.float64)
    return m.T @ m

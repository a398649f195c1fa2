"""Pointwise mutual information from denoising errors (information decomposition).

Kong, Brekelmans, Ver Steeg et al., "Interpretable Diffusion via Information Decomposition"
(ICLR 2024), building on the pointwise I-MMSE relation of "Information-Theoretic Diffusion"
(Kong et al., ICLR 2023): with ``z = sqrt(g) x + eps`` and the optimal denoisers ``x^(z)``,
``x^(z | y)``,

    log p(x | y) - log p(x) = 1/2 int_0^inf E_eps[ |x - x^(z)|^2 - |x - x^(z | y)|^2 ] dg,

exactly for every ``x`` (the expectation is over the noise only). In the log-SNR variable
``l = log g`` the measure is ``dg = g dl``; the integral runs over the process's log-SNR range
on a trapezoid grid with ``noise`` draws per grid point, shared by both denoisers (common random
numbers). :func:`mmse_gap` returns the integrand so that other weights can be tried;
:func:`pointwise_information` integrates it; :func:`mutual_information` averages it over data.

Pixel-wise decomposition (Kong et al. 2024, sec. 3.2): the squared errors are sums over
coordinates, so the integrand splits per coordinate (pixel) ``j``,

    log p(x | y) - log p(x) = sum_j 1/2 int E_eps[ (x_j - x^_j(z))^2 - (x_j - x^_j(z | y))^2 ] dg,

and :func:`pixel_information` returns the per-pixel terms, a map of the shape of ``x`` whose sum
is :func:`pointwise_information` (same noise draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn_like
from reverie.denoisers import DenoiserBase

__all__ = ["MmseGap", "mmse_gap", "mutual_information", "pixel_information",
           "pointwise_information"]


@dataclass(frozen=True)
class MmseGap:
    """The I-MMSE integrand on a log-SNR grid: ``log_snr`` ``[L]`` and ``gap`` ``[L, B]`` =
    ``E|x - x^(z)|^2 - E|x - x^(z | y)|^2`` per grid point and data row (float64), and the
    conditional error ``cond_error`` = ``E|x - x^(z | y)|^2`` ``[L, B]``; with ``pixelwise=True``
    also the per-coordinate gap ``pixel_gap`` ``[L, B, ...]`` (``gap`` is its sum)."""

    log_snr: Tensor
    gap: Tensor
    cond_error: Tensor
    pixel_gap: Tensor | None = None

    def integrate(self) -> Tensor:
        """``1/2 int gap dg = 1/2 int gap e^l dl`` (trapezoid), ``[B]``."""
        return _integrate(self.gap, self.log_snr)

    def integrate_pixels(self) -> Tensor:
        """The per-pixel integrals ``[B, ...]`` (they sum to :meth:`integrate`)."""
        if self.pixel_gap is None:
            raise ValueError("no per-pixel gap: call mmse_gap(..., pixelwise=True)")
        return _integrate(self.pixel_gap, self.log_snr)


def _integrate(gap: Tensor, log_snr: Tensor) -> Tensor:
    w = torch.exp(log_snr).reshape(-1, *([1] * (gap.ndim - 1)))  # dg = e^l dl
    return 0.5 * torch.trapezoid(gap * w, log_snr, dim=0)


def _log_snr_grid(denoiser: DenoiserBase, log_snr_range: tuple[float, float] | None,
                  points: int) -> Tensor:
    proc = denoiser.process
    if log_snr_range is None:  # the process's whole range
        lo, hi = float(proc.log_snr(proc.t_max)), float(proc.log_snr(proc.t_min))
    else:
        lo, hi = map(float, log_snr_range)
    if not lo < hi or points < 2:
        raise ValueError(f"need log_snr_range lo < hi and points >= 2, got ({lo}, {hi}), {points}")
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def mmse_gap(denoiser: DenoiserBase, x: Tensor, cond: dict[str, Any],
             uncond: dict[str, Any] | None = None, *, log_snr_range: tuple[float, float] | None
             = None, points: int = 64, noise: int = 32, generator: Generators = None,
             pixelwise: bool = False) -> MmseGap:
    """The pointwise MMSE gap between the unconditional (``uncond`` keyword arguments of the
    denoiser, none by default) and conditional (``cond``) data predictions at clean data ``x``
    ``[B, ...]``: see the module docstring; ``pixelwise`` also keeps it per coordinate."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a [batch, ...] tensor, got {getattr(x, 'shape', type(x))}")
    if noise < 1:
        raise ValueError(f"noise must be >= 1, got {noise}")
    proc, uncond = denoiser.process, uncond or {}
    grid = _log_snr_grid(denoiser, log_snr_range, points)
    b = x.shape[0]
    rep = x.repeat(noise, *([1] * (x.ndim - 1)))  # [noise * B, ...]
    rep_c = {k: _repeat(v, noise, b) for k, v in cond.items()}
    rep_u = {k: _repeat(v, noise, b) for k, v in uncond.items()}
    gaps, conds, pixels = [], [], []
    for lam in grid:
        t = proc.t_from_log_snr(lam)
        a, s = proc.alpha(t).to(x.dtype), proc.sigma(t).to(x.dtype)
        z = a * rep + s * randn_like(rep, generator)  # z = alpha x + sigma eps, eps shared
        tt = torch.full((rep.shape[0],), float(t), dtype=x.dtype)
        sq_u = (rep - denoiser(z, tt, **rep_u)).double().pow(2)  # per-pixel squared errors
        sq_c = (rep - denoiser(z, tt, **rep_c)).double().pow(2)
        pix = (sq_u - sq_c).reshape(noise, *x.shape).mean(0)  # E_eps over the draws, [B, ...]
        gaps.append(pix.flatten(1).sum(1))  # the gap of the summed errors
        conds.append(sq_c.flatten(1).sum(1).reshape(noise, b).mean(0))
        if pixelwise:
            pixels.append(pix)
    return MmseGap(grid, torch.stack(gaps), torch.stack(conds),
                   torch.stack(pixels) if pixelwise else None)


def _repeat(v: Any, noise: int, b: int) -> Any:
    """Repeat a per-row conditioning tensor like the data rows (scalars pass through)."""
    if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b:
        return v.repeat(noise, *([1] * (v.ndim - 1)))
    return v


def pointwise_information(denoiser: DenoiserBase, x: Tensor, cond: dict[str, Any],
                          uncond: dict[str, Any] | None = None, **options: Any) -> Tensor:
    """``log p(x | y) - log p(x)`` per row of ``x`` from denoising errors (Kong et al. 2024,
    eq. 5): the integral of :func:`mmse_gap` (same options), ``[B]`` float64."""
    return mmse_gap(denoiser, x, cond, uncond, **options).integrate()


def pixel_information(denoiser: DenoiserBase, x: Tensor, cond: dict[str, Any],
                      uncond: dict[str, Any] | None = None, **options: Any) -> Tensor:
    """The pixel-wise decomposition of ``log p(x | y) - log p(x)`` (Kong et al. 2024, sec. 3.2):
    the per-coordinate integrals of the squared-error gap, a ``[B, ...]`` float64 map of the
    shape of ``x`` that sums to :func:`pointwise_information` with the same noise draws."""
    return mmse_gap(denoiser, x, cond, uncond, pixelwise=True, **options).integrate_pixels()


def mutual_information(denoiser: DenoiserBase, x: Tensor, cond: dict[str, Any],
                       uncond: dict[str, Any] | None = None, **options: Any) -> Tensor:
    """``I(x; y)``: :func:`pointwise_information` averaged over joint samples ``(x, y)`` (a
    scalar, nats)."""
    return pointwise_information(denoiser, x, cond, uncond, **options).mean()

"""Stationary fields on a ring in Fourier space: a circulant covariance is diagonal in the
unitary DFT basis, so a field is its *spectrum* (one variance per frequency). The reference
for FAM diffusion's frequency modulation (:mod:`reverie.large.fam`): a high-resolution
"truth", the same field seen at a lower resolution (the trained model), and a
high-resolution model with the truth's high frequencies but wrong low ones (a model run above
its training resolution).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.reference.fields import GaussianField

__all__ = ["circulant", "crop_matrix", "resolution_pair", "ring_spectrum"]


def _dft(n: int) -> Tensor:
    return torch.fft.fft(torch.eye(n, dtype=torch.float64), dim=0, norm="ortho")


def circulant(spectrum: Tensor) -> Tensor:
    """The covariance ``[n, n]`` of the ring field with per-frequency variances ``spectrum``
    (in ``torch.fft.fftfreq`` order; symmetric in the frequency for a real field)."""
    f = _dft(spectrum.numel())
    return (f.conj().T @ torch.diag(spectrum.to(torch.complex128)) @ f).real


def ring_spectrum(cov: Tensor) -> Tensor:
    """The diagonal of ``cov`` in the unitary DFT basis (its spectrum when circulant)."""
    f = _dft(cov.shape[0])
    return torch.diagonal(f @ cov.to(torch.complex128) @ f.conj().T).real


def crop_matrix(n: int, m: int) -> Tensor:
    """``[n, m]``: ``x @ crop_matrix(n, m)`` keeps the frequencies ``|f| < m / 2`` of ``x``
    (amplitudes unchanged) and folds the two bins ``+-m/2`` into the Nyquist bin of ``m``: the
    ring seen at ``m`` points."""
    fr = torch.fft.fftfreq(n, 1 / n).round().long()
    coef = torch.fft.fft(torch.eye(n, dtype=torch.float64), dim=-1, norm="forward")
    low = torch.zeros(n, m, dtype=coef.dtype)
    keep = fr.abs() < m // 2
    low[:, fr[keep] % m] = coef[:, keep]
    low[:, m // 2] = coef[:, m // 2] + coef[:, -(m // 2)]
    return torch.fft.ifft(low, dim=-1, norm="forward").real


def resolution_pair(n: int = 64, m: int = 32, cut: int = 12, lengthscale: float = 6.0,
                    texture: float = 0.3) -> tuple[GaussianField, GaussianField, GaussianField]:
    """``(truth, trained, native)``: the truth on ``n`` points (a smooth layout of SE
    ``lengthscale`` plus ``texture`` times a rough SE field of lengthscale 0.8), the truth seen
    at ``m`` points (:func:`crop_matrix`), and a field on ``n`` points with the truth's
    spectrum above frequency ``cut`` and a wrong one (the layout at a 4x shorter lengthscale)
    at and below it."""
    fine = texture * GaussianField.stationary(n, 0.8, periodic=True).cov
    truth = GaussianField(GaussianField.stationary(n, lengthscale, periodic=True).cov + fine,
                          (n,))
    rough = ring_spectrum(GaussianField.stationary(n, lengthscale / 4, periodic=True).cov + fine)
    freq = torch.fft.fftfreq(n, 1 / n).abs()
    native = GaussianField(circulant(torch.where(freq <= cut, rough, ring_spectrum(truth.cov))),
                           (n,))
    down = crop_matrix(n, m)
    return truth, GaussianField(down.T @ truth.cov @ down, (m,)), native

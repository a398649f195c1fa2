"""Structured noise: phase-preserving and frequency-selective noise for images.

NeuralRemaster (Zeng et al., "Phase-Preserving Diffusion for Structure-Aligned Generation"):
white Gaussian noise has random Fourier magnitudes *and* random phases, and the phases carry
an image's spatial structure. Phase-preserving noise (phi-PD) keeps the random magnitudes of a
Gaussian draw and takes its phases from a reference image, so noising keeps the reference's
layout; frequency-selective structured (FSS) noise does so only below a radial frequency cutoff
and leaves the higher frequencies' phases random, a single knob between structure-locked
(``cutoff = 1``: every bin) and white noise (``cutoff = 0``: none). ``cutoff`` is a fraction of
the largest radial frequency of the grid (the corner bin, ``sqrt(2)`` times the Nyquist
frequency of an axis).

The noise has exactly the energy of the Gaussian draw it comes from (Parseval: magnitudes are
untouched), so it replaces ``eps`` in ``x_t = alpha x0 + sigma eps`` for training and as a
sampler's starting noise (:func:`structured_add_noise`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie._random import Generators, randn_like
from reverie.process import GaussianProcess

__all__ = ["phase_preserving_noise", "structured_add_noise", "radial_frequency"]


def radial_frequency(h: int, w: int) -> Tensor:
    """Radial frequency of each ``rfft2`` bin of an ``h x w`` image, scaled so that the
    Nyquist frequency along an axis is 1 (``[h, w // 2 + 1]``, float64)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * 2
    fx = torch.fft.rfftfreq(w, dtype=torch.float64) * 2
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def phase_preserving_noise(reference: Tensor, generator: Generators = None,
                           cutoff: float | None = None, noise: Tensor | None = None) -> Tensor:
    """Noise shaped like ``reference [..., H, W]`` whose 2-D Fourier magnitudes are those of a
    standard Gaussian draw (``noise``, or fresh from ``generator``) and whose phases are the
    reference's (phi-PD); with ``cutoff`` in ``[0, 1]`` only bins of radial frequency at most
    ``cutoff`` times the largest take the reference's phase (FSS noise; ``cutoff = 0`` is the
    Gaussian draw itself). Returns the reference's dtype."""
    if not isinstance(reference, Tensor) or reference.ndim < 2 or not reference.is_floating_point():
        raise TypeError("reference must be a floating-point tensor [..., H, W]")
    if cutoff is not None and not 0.0 <= cutoff <= 1.0:
        raise ValueError(f"cutoff must lie in [0, 1] (a fraction of the largest radial "
                         f"frequency), got {cutoff}")
    if noise is None:
        noise = randn_like(reference, generator)
    elif noise.shape != reference.shape:
        raise ValueError(f"noise must have the reference's shape {tuple(reference.shape)}, "
                         f"got {tuple(noise.shape)}")
    h, w = reference.shape[-2:]
    spec_n = torch.fft.rfft2(noise.to(torch.float64))
    spec_r = torch.fft.rfft2(reference.to(torch.float64))
    # unit phasors of the reference (a bin with zero amplitude keeps the noise's phase)
    amp_r = spec_r.abs()
    phase_r = torch.where(amp_r > 1e-12, spec_r / amp_r.clamp(min=1e-300),
                          spec_n / spec_n.abs().clamp(min=1e-300))
    locked = spec_n.abs() * phase_r  # random magnitudes, reference phases
    if cutoff is not None:
        freq = radial_frequency(h, w)
        low = (freq <= cutoff * float(freq.max()) + 1e-12) & (cutoff > 0)
        locked = torch.where(low, locked, spec_n)
    return torch.fft.irfft2(locked, s=(h, w)).to(reference.dtype)


def structured_add_noise(process: GaussianProcess, x0: Tensor, reference: Tensor,
                         t: float | Tensor, generator: Generators = None,
                         cutoff: float | None = None) -> Tensor:
    """``alpha(t) x0 + sigma(t) eps_phi`` with ``eps_phi`` the phase-preserving (or, with
    ``cutoff``, frequency-selective) noise of ``reference``."""
    return process.add_noise(x0, phase_preserving_noise(reference, generator, cutoff), t)

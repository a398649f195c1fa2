"""Grad-TTS's data-dependent prior as a process (Popov et al. 2021, "Grad-TTS: A Diffusion
Probabilistic Model for Text-to-Speech", Sec. 2).

The forward SDE (eq. 1 with ``Sigma = I``) pulls the data towards a per-example mean ``mu``
(the aligned text-encoder output), not towards zero:

    dX_t = 1/2 (mu - X_t) beta_t dt + sqrt(beta_t) dW_t,   beta_t = beta_0 + (beta_1 - beta_0) t,

so its marginals (eq. 3-4) are

    X_t | X_0 ~ N((1 - a_t) mu + a_t X_0, (1 - a_t^2) I),   a_t = exp(-1/2 int_0^t beta_s ds),

and the terminal law is ``N(mu, I)`` (up to ``a_1 = e^-5``). Equivalently ``Y = X - mu`` is the
variance-preserving :class:`~reverie.process.VPLinear` process: ``Y_t = a_t Y_0 + sigma_t eps``.
:class:`GradTTS` is that wrapper: the network sees ``X_t`` and ``mu``, every reverie sampler
walks ``Y`` with ``mu`` as conditioning, and the sample is ``Y_0 + mu``; starting from
``sigma(t_max) z`` in ``Y`` is Grad-TTS's start from ``N(mu, I)``.

The "speech" example (:func:`tone_frames`, :func:`align_means`) is a synthetic note sequence
turned into mel-like frames, with ``mu`` from a trivial aligner (each note's mean frame
repeated over its duration) and frames ``mu + R``, ``R ~`` :func:`frame_residual`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn
from reverie._tensor import as64, bcast
from reverie.denoisers import Denoiser, DenoiserBase
from reverie.process import VPLinear
from reverie.reference import Gaussian
from reverie.samplers import sample as _sample

__all__ = ["GradTTS", "tone_frames", "align_means", "mel_template", "frame_residual"]


class GradTTS:
    """The Grad-TTS process with prior mean ``mu``: ``beta_t`` linear from ``beta_min`` to
    ``beta_max`` on ``t`` in ``[0, 1]`` (the paper's 0.05 and 20). ``process`` is the VP
    process of ``Y = X - mu`` that the samplers walk."""

    def __init__(self, beta_min: float = 0.05, beta_max: float = 20.0, t_min: float = 1e-3):
        self.process = VPLinear(beta_min, beta_max, t_min)

    def beta(self, t: float | Tensor) -> Tensor:
        p = self.process
        return p.beta_min + (p.beta_max - p.beta_min) * as64(t)

    # ---- the forward process in the paper's form ----------------------------------------------
    def drift_diffusion(self, x: Tensor, t: float | Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 1: the drift ``1/2 (mu - x) beta_t`` and the diffusion ``sqrt(beta_t)``."""
        b = bcast(self.beta(t), x)
        return 0.5 * (mu - x) * b, b.sqrt()

    def marginal(self, x0: Tensor, mu: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 3-4: the mean ``(1 - a_t) mu + a_t x0`` and the standard deviation
        ``sqrt(1 - a_t^2)`` of ``X_t | X_0 = x0``."""
        a = bcast(self.process.alpha(t), x0)
        return (1 - a) * mu + a * x0, bcast(self.process.sigma(t), x0)

    def add_noise(self, x0: Tensor, mu: Tensor, eps: Tensor, t: float | Tensor) -> Tensor:
        """A draw of ``X_t``: ``mu + a_t (x0 - mu) + sigma_t eps``."""
        mean, std = self.marginal(x0, mu, t)
        return mean + std * eps

    def prior(self, mu: Tensor, generator: Generators = None) -> Tensor:
        """The terminal law ``N(mu, I)``."""
        return mu + randn(mu.shape, generator, dtype=mu.dtype)

    # ---- denoisers and sampling ----------------------------------------------------------------
    def denoiser(self, fn: Callable[..., Tensor], prediction: str = "score") -> Denoiser:
        """A reverie denoiser over ``Y = X - mu`` (``cond``: ``mu``) from a network
        ``fn(x_t, t, mu)`` in data coordinates predicting the ``score`` (Grad-TTS's
        ``s_theta(X_t, mu, t)``), the noise ``eps`` or the data ``x0``."""
        if prediction not in ("score", "eps", "x0"):
            raise ValueError(f"a Grad-TTS network predicts 'score', 'eps' or 'x0', got "
                             f"{prediction!r} (v and flow targets are not shift-invariant)")

        def in_y(y: Tensor, t: Tensor, mu: Tensor, **cond: Any) -> Tensor:
            mu = mu.to(y)
            out = fn(y + mu, t, mu, **cond)
            return out - mu if prediction == "x0" else out  # score, eps: the same in Y and X

        return Denoiser(in_y, self.process, prediction)

    def exact_denoiser(self, residual: Gaussian) -> Denoiser:
        """The exact denoiser of data ``X_0 = mu + R`` with ``R ~ residual`` independent of
        ``mu`` (a reference for tests and benchmarks)."""
        proc = self.process

        def fn(x: Tensor, t: Tensor, mu: Tensor) -> Tensor:
            return residual.denoise_at(x - mu, proc.alpha(t), proc.sigma(t)) + mu

        return self.denoiser(fn, prediction="x0")

    def sample(self, denoiser: DenoiserBase, mu: Tensor, sampler: str = "dpmpp_2m",
               steps: int = 20, *, noise: Tensor | None = None, generator: Generators = None,
               **options: Any) -> Tensor:
        """Samples ``X_0`` for the prior means ``mu`` ``[B, ...]``: any reverie ``sampler`` on
        ``Y`` from ``sigma(t_max) z`` (``X_T ~ N(mu, I)``), plus ``mu``."""
        if not isinstance(mu, Tensor) or not mu.is_floating_point():
            raise TypeError("mu must be a floating-point tensor [B, ...]")
        if noise is None:
            noise = randn(mu.shape, generator, dtype=mu.dtype)
        elif noise.shape != mu.shape:
            raise ValueError(f"noise must be shaped like mu {list(mu.shape)}, got "
                             f"{list(noise.shape)}")
        y = _sample(denoiser, noise, sampler, steps, generator=generator, cond={"mu": mu},
                    **options)
        return y + mu

    def __repr__(self) -> str:
        return f"GradTTS(beta_min={self.process.beta_min}, beta_max={self.process.beta_max})"


# ---------------------------------------------------------------------------------------------
# A synthetic "speech" example: notes -> mel-like frames
# ---------------------------------------------------------------------------------------------


def mel_template(pitch: float, bins: int = 20, width: float = 1.2) -> Tensor:
    """The mean mel-like frame of a tone of ``pitch`` (in bins): a Gaussian bump with a weaker
    second harmonic, ``[bins]``."""
    k = torch.arange(bins, dtype=torch.float64)
    fund = torch.exp(-0.5 * ((k - pitch) / width) ** 2)
    harm = 0.5 * torch.exp(-0.5 * ((k - 2 * pitch) / width) ** 2)
    return fund + harm


def frame_residual(bins: int = 20, std: float = 0.15, lengthscale: float = 2.0) -> Gaussian:
    """The law of a frame around its note's mean: smooth noise along the mel axis,
    ``N(0, std^2 k_se(|i - j| / lengthscale))``."""
    from reverie.functions.gp import Kernel

    k = torch.arange(bins, dtype=torch.float64)
    cov = Kernel("se", lengthscale, std**2)(k, k) + 1e-8 * torch.eye(bins, dtype=torch.float64)
    return Gaussian(torch.zeros(bins, dtype=torch.float64), cov)


def align_means(pitches: Sequence[float], durations: Sequence[int], bins: int = 20) -> Tensor:
    """The trivial aligner: each note's mean frame repeated over its ``durations`` frames,
    ``[T, bins]`` (Grad-TTS's aligned encoder output ``mu``)."""
    if len(pitches) != len(durations) or not pitches:
        raise ValueError(f"pitches and durations must be non-empty and of the same length, got "
                         f"{len(pitches)} and {len(durations)}")
    if any(int(d) < 1 for d in durations):
        raise ValueError(f"durations must be >= 1 frame, got {list(durations)}")
    return torch.cat([mel_template(float(p), bins).expand(int(d), bins)
                      for p, d in zip(pitches, durations)])


def tone_frames(pitches: Sequence[float], durations: Sequence[int], bins: int = 20,
                generator: Generators = None) -> Tensor:
    """Frames ``[T, bins]`` of a note sequence: the aligned mean frames plus
    :func:`frame_residual` noise (so ``X_0 | mu ~ N(mu, C)`` exactly)."""
    mu = align_means(pitches, durations, bins)
    return mu + frame_residual(bins).sample(mu.shape[0], generator)

"""DoD in miniature (Yue et al. 2024, "Diffusion Models Need Visual Priors for Image
Generation", "Diffusion on Diffusion"): generate in stages, each stage conditioned on a
*visual prior* of the previous stage's sample -- a compact embedding of it that keeps the
layout and drops the low-level detail -- so a later stage refines a sample that already has
a plausible structure.

:func:`dod_sample` is the two-stage pipeline on reverie's API: a first sample ``x1`` (any
callable, e.g. a few-step sampler of an unconditional model), its prior ``z = prior(x1)``
(here an LRDM encoder, :mod:`reverie.representation.lrdm`, plays DoD's latent embedding
module) and a second sample from the prior-conditioned denoiser. DoD's DiT stages, its
embedding module's training and its ImageNet experiments are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from reverie.denoisers import DenoiserBase
from reverie.representation.lrdm import reconstruct

__all__ = ["dod_sample"]


def dod_sample(first: Callable[[Tensor], Tensor], prior: Callable[[Tensor], Tensor],
               second: DenoiserBase, noise1: Tensor, noise2: Tensor, *,
               sampler: str = "dpmpp_2m", steps: int = 20, **options: Any
               ) -> tuple[Tensor, Tensor]:
    """Stage 1 ``x1 = first(noise1)``; visual prior ``z = prior(x1)`` ``[B, k]``; stage 2
    ``x2`` from ``second`` given ``z`` (cond ``z=``), started from ``noise2``. Returns
    ``(x1, x2)``."""
    if noise1.shape[0] != noise2.shape[0]:
        raise ValueError(f"noise1 and noise2 need one batch size, got {noise1.shape[0]} and "
                         f"{noise2.shape[0]}")
    x1 = first(noise1)
    return x1, reconstruct(second, prior(x1), noise2, sampler=sampler, steps=steps, **options)

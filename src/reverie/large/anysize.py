"""Any-Size-Diffusion (Zheng et al. 2024, "Any-Size-Diffusion: toward efficient text-driven
synthesis for any-size HD images"): generate at the trained size with the target's aspect
ratio (ARAD), then enlarge and refine with Fast Seamless Tiled Diffusion (FSTD): SDEdit from
the enlarged image at a chosen strength, on randomly shifted non-overlapping tiles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from reverie._checks import in_range
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.large.tiled import tiled

__all__ = ["aspect_shape", "upscale", "any_size"]


def aspect_shape(target: Sequence[int], trained: Sequence[int], multiple: int = 1
                 ) -> tuple[int, ...]:
    """The shape of the trained area (``prod(trained)`` entries) with the aspect ratio of
    ``target``, each side rounded to a ``multiple`` (ARAD's first stage: the model composes at
    the size it knows, in the shape it is asked for)."""
    target, trained = tuple(target), tuple(trained)
    if len(target) != len(trained):
        raise ValueError(f"target {list(target)} and trained {list(trained)} differ in rank")
    scale = (math.prod(trained) / math.prod(target)) ** (1 / len(target))
    return tuple(max(multiple, multiple * round(n * scale / multiple)) for n in target)


def upscale(denoiser: DenoiserBase, image: Tensor, size: Sequence[int], *,
            tile: int | Sequence[int], overlap: int | Sequence[int] = 0, shift: bool = True,
            weights: str = "uniform", strength: float = 0.5, sampler: str = "dpmpp_2m",
            steps: int = 20, noise: Tensor | None = None, generator: Generators = None,
            mode: str = "bilinear", cond: Mapping[str, Any] | None = None) -> Tensor:
    """FSTD (Any-Size-Diffusion sec. 3.3): interpolate ``image`` ``[B, C, ...]`` to ``size``
    (its trailing axes) with ``mode``, then SDEdit it (:func:`reverie.sample` with ``init`` and
    ``strength``) under :func:`tiled` windows of ``tile`` (by default non-overlapping with a
    random shift per step: the seams move, the cost stays one window per tile). ``noise``:
    standard normal like the output (default drawn from ``generator``)."""
    from reverie.samplers import sample

    in_range("strength", strength, 0, 1, lo_open=True)
    size = tuple(int(s) for s in size)
    up = F.interpolate(image, size=size, mode=mode,
                       **({"align_corners": False} if "linear" in mode else {}))
    if noise is None:
        noise = randn(up.shape, generator, dtype=up.dtype)
    gen = generator if isinstance(generator, torch.Generator) else None
    den = tiled(denoiser, tile, overlap, weights=weights, shift=shift, generator=gen)
    return sample(den, noise, sampler, steps, init=up, strength=strength, cond=cond)


def any_size(denoiser: DenoiserBase, shape: Sequence[int], *, trained: Sequence[int],
             base_denoiser: DenoiserBase | None = None, multiple: int = 1,
             sampler: str = "dpmpp_2m", steps: int = 20, generator: Generators = None,
             noise: tuple[Tensor, Tensor] | None = None, **refine: Any) -> Tensor:
    """Any-Size-Diffusion's two stages for an output of ``shape`` ``[B, C, *size]``: sample at
    :func:`aspect_shape` of the trained size with ``base_denoiser`` (default ``denoiser``),
    then :func:`upscale` to ``size`` with tiles of the ``trained`` size (``refine``: its
    options, e.g. ``strength``, ``overlap``). ``noise``: the two stages' standard-normal
    inputs (default drawn from ``generator``)."""
    from reverie.samplers import sample

    shape = tuple(shape)
    base = aspect_shape(shape[2:], trained, multiple)
    z1, z2 = noise if noise is not None else (
        randn((*shape[:2], *base), generator, dtype=torch.float32),
        randn(shape, generator, dtype=torch.float32))
    small = sample(base_denoiser or denoiser, z1, sampler, steps, generator=generator)
    return upscale(denoiser, small, shape[2:], tile=refine.pop("tile", tuple(trained)),
                   sampler=sampler, steps=steps, noise=z2, generator=generator, **refine)

"""Outpainting (PanoDiffusion's setting, Wu et al. 2024, "PanoDiffusion: 360-degree panorama
outpainting via diffusion"): keep a known region and generate the rest, on a canvas of any
size (a :func:`reverie.large.tiled` denoiser, with ``wrap`` for a 360-degree panorama)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace as _replace
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn, randn_like
from reverie.denoisers import DenoiserBase

__all__ = ["outpaint"]


def outpaint(denoiser: DenoiserBase, known: Tensor, mask: Tensor, *, method: str = "replace",
             sampler: str = "ddim", steps: int = 50, n: int | None = None,
             generator: Generators = None, noise: Tensor | None = None,
             cond: Mapping[str, Any] | None = None, **options: Any) -> Tensor:
    """Samples that equal ``known`` where ``mask`` is true and are generated elsewhere.

    ``method="replace"`` (the latent-diffusion outpainting that PanoDiffusion runs, Song et
    al. 2021's replacement): after every step of ``sampler`` the known entries are set to
    ``known`` pushed through the forward process to the step's time (fresh noise from
    ``generator``), and to ``known`` itself at the end. Any other ``method`` is a posterior
    sampler of :data:`reverie.inverse.METHODS` for the noiseless inpainting operator (e.g.
    ``"ddrm"``, ``"pigdm"``, ``"mcg_diff"``), with ``options`` passed on. ``known``: one
    canvas (``n`` samples, default 1) or ``[n, ...]``; ``mask``: the shape of one sample."""
    from reverie import inverse
    from reverie.samplers import SAMPLERS, resolve_grid, run

    mask = torch.as_tensor(mask, dtype=torch.bool)
    one = known.shape == mask.shape
    if not one and known.shape[1:] != mask.shape:
        raise ValueError(f"known must be shaped like mask {list(mask.shape)} or "
                         f"[n, {', '.join(map(str, mask.shape))}], got {list(known.shape)}")
    n = n or (1 if one else known.shape[0])
    y = known.expand(n, *mask.shape) if one else known
    if method != "replace":
        op = inverse.Inpainting(mask)
        return inverse.solve(denoiser, op, op.A(y), 0.0, method, steps=steps, n=n,
                             generator=generator, **options)
    proc = denoiser.process
    grid = resolve_grid(SAMPLERS[sampler], proc, steps, None)
    z = noise if noise is not None else randn((n, *mask.shape), generator, dtype=y.dtype)
    keep = mask.to(y.device)

    def replace(state, schedule):  # x_t on the known region: alpha y + sigma eps
        j = state.i
        fresh = randn_like(y, generator) if schedule.sigma[j] > 0 else 0.0
        xk = schedule.alpha[j] * y + schedule.sigma[j] * fresh
        return _replace(state, x=torch.where(keep, xk, state.x))

    x = float(proc.sigma(grid[0])) * z
    x = torch.where(keep, float(proc.alpha(grid[0])) * y + x, x)
    return run(sampler, denoiser, x, grid, generator=generator, cond=cond, hook=replace,
               **options).x0

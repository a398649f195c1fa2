"""Image jobs of ``reverie serve``: continuous models (a class-conditional or unconditional
:class:`~reverie.hub.LoadedModel`, or a text-to-image :class:`~reverie.LatentPipeline`)
sampled with any reverie sampler, returned as base64 PNGs. A request's ``n`` images are one
model call; requests are not merged (each is its own batch in the queue)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

__all__ = ["ImageWork", "is_image_shape", "png_b64", "run_images"]


@dataclass
class ImageWork:
    model: Any
    text_to_image: bool
    n: int
    seed: int
    sampler: str
    steps: int
    prompt: str = ""
    negative_prompt: str | None = None
    label: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Samples of this shape are grey (1 channel) or RGB (3) images."""
    return len(shape) == 3 and shape[0] in (1, 3)


def png_b64(image: Any, value_range: tuple[float, float]) -> str:
    """One ``[C, H, W]`` image (``value_range`` -> 0..255) as base64 PNG text. Grey images
    are drawn as the library plots them (``gray_r``: high values dark, ink on paper)."""
    import numpy as np
    from PIL import Image

    lo, hi = value_range
    x = ((image.detach().float().cpu().clamp(lo, hi) - lo) / (hi - lo)).numpy()
    if x.shape[0] == 1:
        pixels = Image.fromarray(np.round(255 * (1 - x[0])).astype(np.uint8))  # mode L
    else:
        pixels = Image.fromarray(np.round(255 * x.transpose(1, 2, 0)).astype(np.uint8))  # RGB
    buf = io.BytesIO()
    pixels.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def run_images(jobs: list[Any]) -> None:
    """The runner of image jobs (one job per call)."""
    import torch

    for job in jobs:
        w: ImageWork = job.work
        if w.text_to_image:
            gens = [torch.Generator().manual_seed(w.seed + k) for k in range(w.n)]
            images = w.model.sample(
                w.prompt, w.negative_prompt, sampler=w.sampler, steps=w.steps,
                guidance_scale=w.guidance_scale, height=w.height, width=w.width, n=w.n,
                generator=gens, output_type="pt",
            )
            value_range = (0.0, 1.0)
        else:
            images = w.model.sample(
                w.n, sampler=w.sampler, steps=w.steps, seed=w.seed, labels=w.label,
                cfg_scale=1.0 if w.guidance_scale is None else w.guidance_scale,
            )
            value_range = (-1.0, 1.0)
        if is_image_shape(tuple(images.shape[1:])):
            data = [{"b64_json": png_b64(im, value_range)} for im in images]
        else:  # e.g. 2-D points (two-moons): the raw sample
            data = [{"b64_json": None, "sample": im.flatten().tolist()} for im in images]
        job.finish(data)

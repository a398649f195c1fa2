"""Image jobs of ``reverie serve``: continuous models (a class-conditional or unconditional
:class:`~reverie.hub.LoadedModel`, or a text-to-image :class:`~reverie.LatentPipeline`)
sampled with any reverie sampler, returned as base64 PNGs. A request's ``n`` images are one
model call; requests are not merged (each is its own batch in the queue)."""

from __future__ import annotations

import base64
import io
import secrets
from dataclasses import dataclass
from typing import Any

from reverie.serve.schemas import APIError

__all__ = ["ImageWork", "image_guidance", "image_work", "is_image_shape", "png_b64", "run_images"]

#: The default sampler of image models.
IMAGE_SAMPLER = "dpmpp_2m"


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
    grid: str | None = None
    guidance: str = "cfg"


def image_guidance() -> list[str]:
    """The guidance methods an image request may name: the classifier-free methods of
    :data:`reverie.guidance.METHODS` that need only the unconditional branch (the null class,
    or the empty prompt) -- not autoguidance's weaker model."""
    from reverie.guidance import METHODS

    return [name for name, m in METHODS.items()
            if m.family == "cfg" and m.needs == ("uncond",) and not m.weak_model]


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
                generator=gens, output_type="pt", grid=w.grid, guidance=w.guidance,
            )
            value_range = (0.0, 1.0)
        else:
            images = w.model.sample(
                w.n, sampler=w.sampler, steps=w.steps, seed=w.seed, labels=w.label,
                cfg_scale=1.0 if w.guidance_scale is None else w.guidance_scale,
                grid=w.grid, guidance=w.guidance,
            )
            value_range = (-1.0, 1.0)
        if is_image_shape(tuple(images.shape[1:])):
            data = [{"b64_json": png_b64(im, value_range)} for im in images]
        else:  # e.g. 2-D points (two-moons): the raw sample
            data = [{"b64_json": None, "sample": im.flatten().tolist()} for im in images]
        job.finish(data)


def image_work(model_id: str, kind: str, model: Any, req: Any, max_n: int) -> ImageWork:
    """The work of an images request, checked (400s raised as :class:`APIError`)."""
    from reverie.grids import GRIDS
    from reverie.guidance import METHODS
    from reverie.samplers import SAMPLERS

    if req.n > max_n:
        raise APIError(400, f"n must be at most {max_n}, got {req.n}", "n")
    if req.response_format == "url":
        raise APIError(400, "response_format 'url' is not supported (the server stores no "
                            "files); use 'b64_json'", "response_format")
    sampler = req.sampler or IMAGE_SAMPLER
    if sampler not in SAMPLERS:
        raise APIError(400, f"unknown sampler {sampler!r}; expected one of "
                            f"{', '.join(SAMPLERS)}", "sampler")
    sampler = SAMPLERS[sampler].name
    height = width = None
    if req.size is not None:
        try:
            height, width = (int(v) for v in req.size.lower().split("x"))
        except ValueError:
            raise APIError(400, f"size must be HEIGHTxWIDTH, got {req.size!r}",
                           "size") from None
    if req.grid is not None and req.grid not in GRIDS:
        raise APIError(400, f"unknown grid {req.grid!r}; expected one of {', '.join(GRIDS)}",
                       "grid")
    guidance = req.guidance or "cfg"
    if guidance not in image_guidance():
        raise APIError(400, f"unknown guidance {guidance!r}; expected one of "
                            f"{', '.join(image_guidance())}", "guidance")
    method = METHODS[guidance]
    scale = req.guidance_scale
    if scale is None:
        scale = model.default_guidance if kind == "text-to-image" else 1.0
    lo, hi = method.scale_range
    if not lo <= scale <= hi:
        raise APIError(400, f"guidance_scale {scale:g} is outside {guidance}'s range "
                            f"[{lo:g}, {hi:g}]", "guidance_scale")
    if method.samplers is not None and sampler not in method.samplers:
        raise APIError(400, f"guidance {guidance!r} runs with the sampler(s) "
                            f"{', '.join(method.samplers)} only, got {sampler!r}", "sampler")
    seed = req.seed if req.seed is not None else secrets.randbits(62)
    work = ImageWork(model=model, text_to_image=kind == "text-to-image", n=req.n,
                     seed=seed, sampler=sampler, steps=req.steps or 0,
                     guidance_scale=req.guidance_scale, grid=req.grid, guidance=guidance)
    if work.text_to_image:
        if not req.prompt:
            raise APIError(400, f"the model {model_id!r} draws from a text prompt: pass prompt",
                           "prompt")
        if req.label is not None:
            raise APIError(400, f"the model {model_id!r} takes a prompt, not a label", "label")
        try:
            model.check_size(height or model.default_size()[0],
                             width or model.default_size()[1])
        except ValueError as err:
            raise APIError(400, str(err), "size") from None
        work.prompt, work.negative_prompt = req.prompt, req.negative_prompt
        work.height, work.width, work.steps = height, width, req.steps or 20
        return work
    if req.size is not None and (height, width) != tuple(model.sample_shape[-2:]):
        raise APIError(400, f"the model {model_id!r} draws {_size(model.sample_shape)} samples "
                            f"only, got size {req.size!r}", "size")
    if req.negative_prompt is not None:
        raise APIError(400, f"the model {model_id!r} takes no negative prompt",
                       "negative_prompt")
    work.label = _label(model_id, model, req)
    if (req.guidance_scale not in (None, 1.0) or guidance != "cfg") and work.label is None:
        raise APIError(400, "guidance_scale and guidance need a label (guidance pushes samples "
                            "towards a class)", "guidance_scale")
    if (req.guidance_scale not in (None, 1.0) or guidance != "cfg") and not model.has_null_class:
        raise APIError(400, f"the model {model_id!r} has no null class for guidance",
                       "guidance_scale")
    work.steps = req.steps or 10
    return work

def _label(model_id: str, model: Any, req: Any) -> int | None:
    """A class model's label from ``label`` (index or name) or ``prompt`` (a name)."""
    names = [str(c) for c in (model.config.get("class_names") or [])]
    spec = req.label if req.label is not None else (req.prompt or None)
    param = "label" if req.label is not None else "prompt"
    if spec is None:
        return None
    if model.num_classes is None:
        raise APIError(400, f"the model {model_id!r} is unconditional: leave prompt and label "
                            "out", param)
    if isinstance(spec, str) and spec in names:
        return names.index(spec)
    if isinstance(spec, int) and 0 <= spec < model.num_classes:
        return spec
    raise APIError(400, f"unknown class {spec!r} for {model_id!r}; expected 0.."
                        f"{model.num_classes - 1} or one of {names}", param)


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in (shape[-2:] if is_image_shape(tuple(shape)) else shape))

"""The playground of ``reverie serve``: ``GET /`` serves a single page (plain HTML, CSS and
JavaScript in ``reverie/serve/static``, no build step, nothing fetched from elsewhere) that
talks to the server's own API, and ``GET /v1/reverie/options`` tells it, per served model,
what it can ask for. Every name and range comes from the registries
(:data:`reverie.SAMPLERS`, :data:`reverie.discrete.SAMPLERS`, :data:`reverie.grids.GRIDS`,
:data:`reverie.guidance.METHODS`) and from the request schemas' own bounds, so the page never
offers what the server would refuse. See docs/serve.md, "Playground"."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["STATIC", "options"]

#: the page's files
STATIC = Path(__file__).with_name("static")


def _bounds(schema: type, field: str) -> dict[str, float]:
    """``{"min": ..., "max": ...}`` of a pydantic field's ``ge`` / ``le`` constraints."""
    out: dict[str, float] = {}
    for rule in schema.model_fields[field].metadata:
        for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            value = getattr(rule, attr, None)
            if value is not None:
                out[key] = value
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


def _image_options(m: Any, cfg: Any) -> dict[str, Any]:
    from reverie.grids import GRIDS
    from reverie.guidance import METHODS
    from reverie.samplers import SAMPLERS
    from reverie.serve.images import IMAGE_SAMPLER, image_guidance, is_image_shape
    from reverie.serve.schemas import ImageRequest

    model = m.model
    t2i = m.kind == "text-to-image"
    scale = _bounds(ImageRequest, "guidance_scale")
    methods = []
    for name in image_guidance():
        info = METHODS[name]
        lo, hi = info.scale_range
        methods.append({
            "name": name, "description": info.description,
            "min": max(lo, scale.get("min", lo)), "max": _finite(min(hi, scale.get("max", hi))),
            "samplers": None if info.samplers is None else list(info.samplers),
        })
    if t2i:
        classes, guided = None, True
        shape = [3, *model.default_size()]
    else:
        names = model.config.get("class_names")
        classes = None if model.num_classes is None else (
            [str(c) for c in names] if names else [str(k) for k in range(model.num_classes)])
        guided = model.has_null_class
        shape = list(model.sample_shape)
    return {
        "prompt": "text" if t2i else ("class" if classes else "none"),
        "classes": classes,
        "images": t2i or is_image_shape(tuple(shape)),
        "shape": shape,
        "samplers": [{"name": k, "description": s.description, "stochastic": s.stochastic}
                     for k, s in SAMPLERS.items()],
        "sampler": IMAGE_SAMPLER,
        "grids": list(GRIDS),
        "guidance": methods if guided else [],
        "guidance_scale": {**scale, "default": model.default_guidance if t2i else 1.0},
        "steps": {**_bounds(ImageRequest, "steps"), "default": 20 if t2i else 10},
        "n": {"min": 1, "max": cfg.max_n},
    }


def _text_options(m: Any, cfg: Any, sampler: str, context_of: Callable[[Any], int | None],
                  ) -> dict[str, Any]:
    from reverie.discrete import SAMPLERS
    from reverie.serve.schemas import CompletionRequest

    context = context_of(m.model)
    most = cfg.max_tokens if context is None else min(cfg.max_tokens, context - 1)
    return {
        "samplers": [{"name": k, "description": s.description, "revises": s.revises}
                     for k, s in SAMPLERS.items() if "masked" in s.processes],
        "sampler": sampler,
        "steps": _bounds(CompletionRequest, "steps"),
        "max_tokens": {"min": 1, "max": most, "default": min(32, most)},
        "temperature": {**_bounds(CompletionRequest, "temperature"), "default": 1.0},
        "context": context,
        "constraints": ["json_schema", "regex", "grammar"],
        "n": {"min": 1, "max": cfg.max_n},
    }


def options(models: dict[str, Any], cfg: Any, text_sampler: str,
            context_of: Callable[[Any], int | None]) -> dict[str, Any]:
    """``GET /v1/reverie/options``: per served model its id, kind and what a request to it may
    name (samplers, grids, guidance methods with their scale ranges, steps, ``n``);
    ``text_sampler`` is the server's default for text models and ``context_of`` a text model's
    context length (None: unbounded)."""
    out = []
    for m in models.values():
        extra = (_text_options(m, cfg, text_sampler, context_of) if m.kind == "text"
                 else _image_options(m, cfg))
        out.append({"id": m.id, "kind": m.kind, **extra})
    return {"object": "reverie.options", "models": out}

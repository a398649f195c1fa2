"""Latent, text-conditioned diffusers pipelines as reverie objects.

``reverie.load(folder)`` sends a diffusers pipeline folder whose ``model_index.json`` names a
VAE, a text encoder or a transformer here. Supported now: :data:`SUPPORTED` (Stable Diffusion
1.x/2.x, :class:`~reverie.pipelines.stable_diffusion.StableDiffusion`; SDXL,
:class:`~reverie.pipelines.sdxl.StableDiffusionXL`; SD3,
:class:`~reverie.pipelines.sd3.StableDiffusion3`; Flux, :class:`~reverie.pipelines.flux.Flux`;
PixArt-alpha/sigma, :class:`~reverie.pipelines.pixart.PixArt`; DiT,
:class:`~reverie.pipelines.dit.DiT`); every family is a
:class:`~reverie.pipelines._base.LatentPipeline`. Other pipeline classes are refused with a
message naming the supported ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reverie.pipelines._base import Conditioned, LatentPipeline
from reverie.pipelines.dit import DiT, load_dit
from reverie.pipelines.flux import Flux, load_flux
from reverie.pipelines.pixart import PixArt, load_pixart
from reverie.pipelines.sd3 import StableDiffusion3, load_sd3
from reverie.pipelines.sdxl import StableDiffusionXL, load_sdxl
from reverie.pipelines.stable_diffusion import StableDiffusion, load_stable_diffusion

__all__ = [
    "SUPPORTED",
    "Conditioned",
    "DiT",
    "Flux",
    "LatentPipeline",
    "PixArt",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "is_latent_pipeline",
    "load_pipeline",
]

#: diffusers pipeline class -> reverie loader.
SUPPORTED = {
    "StableDiffusionPipeline": load_stable_diffusion,
    "StableDiffusionXLPipeline": load_sdxl,
    "StableDiffusion3Pipeline": load_sd3,
    "FluxPipeline": load_flux,
    "PixArtAlphaPipeline": load_pixart,
    "PixArtSigmaPipeline": load_pixart,
    "DiTPipeline": load_dit,
}

#: model_index.json components that make a folder a latent / text-conditioned pipeline.
_LATENT_PARTS = ("vae", "vqvae", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")


def _index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def is_latent_pipeline(folder: Path) -> bool:
    """Whether a pipeline folder is for this module (latent or text-conditioned), not for the
    pixel-space ``UNet2DModel`` loader."""
    index = _index(folder)
    if index.get("_class_name") in SUPPORTED:
        return True
    parts = {k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1]}
    unet = index.get("unet")
    conditional_unet = (
        isinstance(unet, list) and len(unet) == 2 and unet[1] not in (None, "UNet2DModel")
    )
    return bool(parts & set(_LATENT_PARTS)) or conditional_unet


def load_pipeline(folder: Path, **kwargs: Any) -> LatentPipeline:
    """Load a latent pipeline folder with the loader for its ``_class_name``. A
    ``reverie.json`` beside ``model_index.json`` may set the pipeline's ``default_guidance``
    (the bundled ``shapes`` model does: its scale selected on held-in prompts)."""
    name = _index(folder).get("_class_name")
    if name not in SUPPORTED:
        raise ValueError(
            f"{folder} is a {name!r}, which reverie cannot load yet; supported pipeline "
            f"classes: {', '.join(SUPPORTED)}"
        )
    pipeline = SUPPORTED[name](folder, **kwargs)
    meta = folder / "reverie.json"
    if meta.is_file():
        guidance = json.loads(meta.read_text()).get("default_guidance")
        if guidance is not None:
            pipeline.default_guidance = float(guidance)
    return pipeline

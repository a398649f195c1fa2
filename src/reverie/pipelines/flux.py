"""Flux.1 folders (diffusers' ``FluxPipeline`` layout) in reverie.

A folder with ``transformer/`` (``FluxTransformer2DModel``), ``vae/`` (``AutoencoderKL``),
``text_encoder/`` (``CLIPTextModel``), ``text_encoder_2/`` (``T5EncoderModel``), their
tokenizers and a flow-matching ``scheduler/`` loads into :class:`Flux`. As in diffusers:

* conditioning: CLIP's pooled output (unprojected) -> ``pooled_projections``, T5's last hidden
  state over ``max_sequence_length`` (512) tokens -> ``encoder_hidden_states``, ``txt_ids``
  (zeros) and ``img_ids`` (``[0, row, col]`` per latent patch);
* the state is the VAE latent packed in 2x2 patches, ``[B, (H/2f)(W/2f), 4C]``, so height and
  width are multiples of twice the VAE factor (16 for the real models);
* the transformer takes the timestep ``t`` (diffusers' sigma) and predicts ``eps - x0``;
* guidance is *embedded* (dev): ``guidance_scale`` (3.5) is bound as the ``guidance``
  conditioning tensor; a model without ``guidance_embeds`` (schnell) ignores it. A negative
  prompt is used only for "true" classifier-free guidance, ``true_cfg_scale != 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.pipelines._base import Conditioned, load_components
from reverie.pipelines._flow import FlowPipeline, read_flow
from reverie.pipelines.sd3 import CLIP_TOKENIZERS, T5_TOKENIZERS
from reverie.pipelines.stable_diffusion import clip_ids
from reverie.process import GaussianProcess

__all__ = ["Flux", "load_flux"]

COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "transformer": ("FluxTransformer2DModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": CLIP_TOKENIZERS,
    "text_encoder_2": ("T5EncoderModel",),
    "tokenizer_2": T5_TOKENIZERS,
    "scheduler": None,
}


class _FluxFunction(nn.Module):
    """``fn(x, t, encoder_hidden_states, pooled_projections, txt_ids, img_ids[, guidance])``
    on packed latents; the ids carry a batch axis (rows all equal) so they batch like the rest
    of the conditioning."""

    def __init__(self, transformer: nn.Module, time_scale: float):
        super().__init__()
        self.transformer, self.time_scale = transformer, time_scale

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                pooled_projections: Tensor, txt_ids: Tensor, img_ids: Tensor,
                guidance: Tensor | None = None) -> Tensor:
        if img_ids.shape[1] != x.shape[1]:
            raise ValueError(f"the conditioning was encoded for {img_ids.shape[1]} image tokens "
                             f"but the latents have {x.shape[1]}; pass the sampling height and "
                             "width to encode_prompt")
        return self.transformer(
            hidden_states=x,
            timestep=t * self.time_scale / 1000,  # diffusers: (1000 sigma) / 1000; x1000 inside
            guidance=guidance,
            pooled_projections=pooled_projections.to(x.dtype),
            encoder_hidden_states=encoder_hidden_states.to(x.dtype),
            txt_ids=txt_ids[0],
            img_ids=img_ids[0],
            return_dict=False,
        )[0]


class Flux(FlowPipeline):
    """A Flux.1 pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._flow.FlowPipeline`'s: ``transformer``,
    ``text_encoder``, ``tokenizer`` (CLIP), ``text_encoder_2``, ``tokenizer_2`` (T5),
    ``max_sequence_length`` (512), ``true_cfg_scale`` (1: off). Conditioning:
    ``encoder_hidden_states`` [B, L, D], ``pooled_projections`` [B, P], ``txt_ids`` [B, L, 3],
    ``img_ids`` [B, tokens, 3]; :meth:`denoiser` adds ``guidance`` [B].
    """

    default_guidance = 3.5  # the embedded guidance
    max_sequence_length = 512
    true_cfg_scale = 1.0
    denoiser_options = ("true_cfg_scale",)
    _patch = 2  # latents are packed in 2x2 patches

    def __init__(
        self,
        *,
        name: str,
        transformer: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        text_encoder_2: nn.Module,
        tokenizer_2: Any,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        dynamic: bool = False,
        time_scale: float = 1000.0,
        path: Path | None = None,
    ):
        self.transformer = transformer
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        packed, latent = int(transformer.config.in_channels), int(vae.config.latent_channels)
        if packed != 4 * latent:
            raise ValueError(f"the transformer takes {packed} channels but 2x2 patches of the "
                             f"VAE's {latent} latent channels make {4 * latent}")
        super().__init__(
            name=name, network=transformer, vae=vae, process=process, prediction=prediction,
            base_denoiser=Denoiser(_FluxFunction(transformer, time_scale), process, prediction),
            scheduler_config=scheduler_config, dynamic=dynamic, time_scale=time_scale,
            path=path,
        )

    def default_size(self) -> tuple[int, int]:
        size = 128 * self.vae_scale_factor  # diffusers' default_sample_size (1024 pixels)
        return size, size

    # -- packing ---------------------------------------------------------------------------

    def _pack(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``, each token a 2x2 patch (diffusers)."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), 4 * c)

    def _unpack(self, x: Tensor, height: int, width: int) -> Tensor:
        b, _, d = x.shape
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, d // 4, h, w)

    def image_ids(self, height: int, width: int) -> Tensor:
        """``[tokens, 3]``: ``[0, row, col]`` of each packed latent patch (diffusers)."""
        f = self.vae_scale_factor * self._patch
        rows, cols = torch.meshgrid(torch.arange(height // f), torch.arange(width // f),
                                    indexing="ij")
        return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()

    # -- conditioning ----------------------------------------------------------------------

    def _embed(self, texts: list[str], height: int, width: int) -> dict[str, Tensor]:
        ids, _ = clip_ids(self.tokenizer, texts)
        clip = self.text_encoder
        pooled = clip(ids.to(clip.device), output_hidden_states=False).pooler_output
        t5_ids, _ = clip_ids(self.tokenizer_2, texts, self.max_sequence_length)
        hidden = self.text_encoder_2(t5_ids.to(self.text_encoder_2.device))[0]
        n, length = hidden.shape[:2]
        img = self.image_ids(height, width).to(hidden.device)
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled.to(hidden.device),
                "txt_ids": hidden.new_zeros(n, length, 3, dtype=torch.float32),
                "img_ids": img.expand(n, *img.shape)}

    def _conditioning(self, prompts, negatives, height, width):
        # no default negative: Flux guides by its embedded guidance, not by CFG
        return (self._embed(prompts, height, width),
                None if negatives is None else self._embed(negatives, height, width))

    def denoiser(
        self,
        cond: Mapping[str, Tensor] | tuple[Any, Any],
        negative: Mapping[str, Tensor] | None = None,
        guidance_scale: float | None = None,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
        *,
        true_cfg_scale: float | None = None,
    ) -> Conditioned:
        """The latent denoiser (on packed latents) with ``cond`` from :meth:`encode_prompt`
        bound and the embedded guidance ``guidance_scale`` (default 3.5; ignored by a model
        without ``guidance_embeds``); with ``negative`` conditioning and ``true_cfg_scale != 1``
        (default :attr:`true_cfg_scale`) also true classifier-free guidance by ``guidance``
        (a classifier-free method of :data:`reverie.guidance.METHODS`, default ``"cfg"``),
        both branches in one batched call (diffusers: two calls)."""
        if isinstance(cond, tuple):
            cond, negative = cond[0], cond[1] if negative is None else negative
        for what, value in (("cond", cond), ("negative", negative)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{what} must be the dict of tensors from Flux.encode_prompt, "
                                f"got {type(value).__name__}")
        scale = self.true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        if scale != 1.0 and negative is None:
            raise ValueError("true_cfg_scale != 1 needs negative conditioning (a negative prompt)")
        if self.transformer.config.guidance_embeds:
            g = self.default_guidance if guidance_scale is None else float(guidance_scale)
            extra = {"guidance": torch.full((1,), g)}
            cond = {**cond, **extra}
            negative = None if negative is None else {**negative, **extra}
        return super().denoiser(cond, negative, scale, guidance, guidance_options)

    def sample(self, prompt, negative_prompt=None, *, true_cfg_scale: float = 1.0, **kw: Any):
        """:meth:`FlowPipeline.sample` with ``guidance_scale`` the embedded guidance (default
        3.5) and ``true_cfg_scale`` (diffusers' name) the classifier-free guidance scale against
        ``negative_prompt``: a negative prompt needs ``true_cfg_scale != 1`` and vice versa
        (diffusers silently ignores a negative prompt at its default 1)."""
        if (negative_prompt is None) != (float(true_cfg_scale) == 1.0):
            raise ValueError("Flux uses a negative prompt only with true_cfg_scale != 1 (true "
                             f"classifier-free guidance); got negative_prompt={negative_prompt!r}"
                             f", true_cfg_scale={true_cfg_scale}")
        return super().sample(prompt, negative_prompt, true_cfg_scale=float(true_cfg_scale), **kw)

    def _set_timesteps_args(self, steps: int, mu: float | None) -> dict[str, Any]:
        # Flux passes unshifted sigmas linspace(1, 1/N, N) and mu; the scheduler shifts them
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}


def load_flux(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> Flux:
    """Load a ``FluxPipeline`` folder (module docstring); ``process`` / ``prediction`` override
    the scheduler config (a given process is never re-shifted by image size); ``dtype`` /
    ``device`` place the networks."""
    modules = load_components(folder, COMPONENTS, pipeline="FluxPipeline",
                              trust_pickle=trust_pickle, dtype=dtype, device=device)
    settings = read_flow(folder, modules.pop("scheduler"), process, prediction)
    return Flux(name=name or folder.name, path=folder, **modules, **settings)

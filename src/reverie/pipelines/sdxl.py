"""Stable Diffusion XL folders (diffusers' ``StableDiffusionXLPipeline`` layout) in reverie.

A folder with ``unet/`` (``UNet2DConditionModel`` with ``addition_embed_type="text_time"``),
``vae/``, ``text_encoder/`` (``CLIPTextModel``), ``text_encoder_2/``
(``CLIPTextModelWithProjection``), ``tokenizer/``, ``tokenizer_2/`` and ``scheduler/`` loads into
:class:`StableDiffusionXL`. A prompt is encoded as diffusers does (Podell et al. 2023, §2.1-2.2):

* ``encoder_hidden_states``: the penultimate hidden states of both CLIP encoders (no final
  layer norm), concatenated on the feature axis (768 + 1280 = 2048 for the real model);
* ``text_embeds``: the pooled, projected embedding of ``text_encoder_2``;
* ``time_ids``: the micro-conditioning ``original_size + crops_coords_top_left + target_size``
  (default ``(H, W, 0, 0, H, W)``), the same for the negative branch.

With no negative prompt and ``force_zeros_for_empty_prompt`` (the pipeline config, default
true) the negative embeddings are zeros, not the encoding of ``""``. The three keywords are
flat in the conditioning dict (batch first), so classifier-free guidance batches both branches;
the network function hands the last two to the UNet as ``added_cond_kwargs``. A VAE config with
``latents_mean`` / ``latents_std`` standardises the latents per channel, as diffusers does.
Not supported yet: a second prompt for ``text_encoder_2`` (``prompt_2``), ``clip_skip``,
``guidance_rescale``, negative micro-conditioning, folders without ``text_encoder`` (refiners).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.pipelines._base import LatentPipeline, load_components, read_process
from reverie.pipelines.stable_diffusion import _UNetFunction, clip_ids
from reverie.process import GaussianProcess

__all__ = ["StableDiffusionXL", "load_sdxl"]

_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
#: component -> the classes accepted for it (``None``: any scheduler class).
COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "text_encoder_2": ("CLIPTextModelWithProjection",),
    "tokenizer": _TOKENIZERS,
    "tokenizer_2": _TOKENIZERS,
    "scheduler": None,
}
Size = tuple[int, int]


class StableDiffusionXL(LatentPipeline):
    """An SDXL pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._base.LatentPipeline`'s: ``unet``,
    ``text_encoder``, ``text_encoder_2``, ``tokenizer``, ``tokenizer_2``,
    ``force_zeros_for_empty_prompt``. Conditioning: ``{"encoder_hidden_states": [B, L, D1 + D2],
    "text_embeds": [B, P], "time_ids": [B, 6]}``.
    """

    default_guidance = 5.0  # diffusers' SDXL default
    #: SDXL's micro-conditioning (diffusers' names; the sizes default to the output's
    #: ``(height, width)``), taken by ``encode_prompt`` and ``sample``; see :meth:`time_ids`.
    prompt_options = ("original_size", "crops_coords_top_left", "target_size")

    def __init__(
        self,
        *,
        name: str,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        text_encoder_2: nn.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        force_zeros_for_empty_prompt: bool = True,
        path: Path | None = None,
    ):
        self.unet, self.text_encoder, self.text_encoder_2 = unet, text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        _check_unet(unet, text_encoder_2)
        super().__init__(
            name=name, network=unet, vae=vae, process=process, prediction=prediction,
            base_denoiser=Denoiser(_UNetFunction(unet), process, prediction),
            scheduler_config=scheduler_config, path=path,
        )
        # per-channel latent standardisation, used when both are set (not in the SDXL base VAE)
        stats = [getattr(vae.config, k, None) for k in ("latents_mean", "latents_std")]
        both = all(v is not None for v in stats)
        self.latents_mean, self.latents_std = (
            [torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats] if both
            else (None, None))

    def default_size(self) -> tuple[int, int]:
        size = int(self.unet.config.sample_size) * self.vae_scale_factor  # default_sample_size
        return size, size

    # -- text ------------------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``(hidden, pooled)``: both encoders' penultimate hidden states concatenated, and
        ``text_encoder_2``'s projected pooled embedding (diffusers' ``encode_prompt``)."""
        outs = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            ids, _ = clip_ids(tokenizer, texts)  # SDXL attends to the padding (no mask)
            outs.append(encoder(ids.to(encoder.device), output_hidden_states=True))
        hidden = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)  # penultimate, no LN
        return hidden, outs[1].text_embeds

    def time_ids(
        self,
        height: int,
        width: int,
        original_size: Size | None = None,
        crops_coords_top_left: Size | None = None,
        target_size: Size | None = None,
    ) -> Tensor:
        """SDXL's micro-conditioning ``[1, 6]`` (float32): ``original_size +
        crops_coords_top_left + target_size``, the sizes defaulting to ``(height, width)``."""
        ids = [*(original_size or (height, width)), *(crops_coords_top_left or (0, 0)),
               *(target_size or (height, width))]
        if len(ids) != 6:
            raise ValueError("original_size, crops_coords_top_left and target_size must be "
                             f"pairs (height, width) / (top, left), got {ids}")
        return torch.tensor([ids], dtype=torch.float32)

    def _conditioning(self, prompts, negatives, height, width, **micro):
        hidden, pooled = self._embed(prompts)
        time_ids = self.time_ids(height, width, **micro).expand(len(prompts), 6)
        cond = {"encoder_hidden_states": hidden, "text_embeds": pooled, "time_ids": time_ids}
        if negatives is None and self.force_zeros_for_empty_prompt:
            neg = {k: torch.zeros_like(v) for k, v in cond.items() if k != "time_ids"}
        else:  # the negative prompt defaults to "" (diffusers)
            neg_hidden, neg_pooled = self._embed(negatives or [""] * len(prompts))
            neg = {"encoder_hidden_states": neg_hidden, "text_embeds": neg_pooled}
        return cond, {**neg, "time_ids": time_ids}  # negative micro-conditioning: the same

    # -- VAE: per-channel standardisation on top of the scaling factor ---------------------

    def encode_image(self, images: Tensor, **kwargs: Any) -> Tensor:
        z = super().encode_image(images, **kwargs)  # scaling_factor * z
        if self.latents_mean is None:
            return z
        mean, std = self.latents_mean.to(z), self.latents_std.to(z)
        return (z - mean * self.scaling_factor) / std  # (z - mean) * scaling_factor / std

    def decode(self, latents: Tensor, **kwargs: Any) -> Tensor:
        if self.latents_mean is not None:  # diffusers: latents * std / scaling_factor + mean
            mean, std = self.latents_mean.to(latents), self.latents_std.to(latents)
            latents = latents * std + mean * self.scaling_factor
        return super().decode(latents, **kwargs)


def _check_unet(unet: nn.Module, text_encoder_2: nn.Module) -> None:
    """The UNet's added embedding takes the pooled text embedding and six time ids
    (diffusers' ``_get_add_time_ids`` check), so a mismatched folder fails at load; a
    guidance-embedding UNet (LCM) would silently run without its guidance input."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        raise ValueError(f"an SDXL UNet has addition_embed_type='text_time', got "
                         f"{cfg.addition_embed_type!r}")
    if cfg.time_cond_proj_dim is not None:
        raise ValueError("a UNet with a guidance embedding (time_cond_proj_dim, e.g. LCM) is "
                         "not supported yet")
    want = unet.add_embedding.linear_1.in_features
    got = 6 * cfg.addition_time_embed_dim + text_encoder_2.config.projection_dim
    if want != got:
        raise ValueError(f"the UNet's added embedding takes {want} features, but 6 time ids x "
                         f"{cfg.addition_time_embed_dim} + text_encoder_2's projection_dim "
                         f"{text_encoder_2.config.projection_dim} = {got}")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_sdxl(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> StableDiffusionXL:
    """Load a ``StableDiffusionXLPipeline`` folder (module docstring); ``process`` /
    ``prediction`` override what the scheduler config says; ``dtype`` / ``device`` place the
    networks (the solver state dtype is ``sample``'s). As in diffusers, a float16 VAE whose
    config says ``force_upcast`` (the SDXL VAE overflows in float16) stays in float32."""
    modules = load_components(folder, COMPONENTS, pipeline="StableDiffusionXLPipeline",
                              trust_pickle=trust_pickle, dtype=dtype, device=device)
    vae = modules["vae"]
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.float()
    index = json.loads((folder / "model_index.json").read_text())
    spec_process, spec_prediction = read_process(folder, modules["scheduler"])
    return StableDiffusionXL(
        name=name or folder.name,
        unet=modules["unet"],
        vae=vae,
        text_encoder=modules["text_encoder"],
        text_encoder_2=modules["text_encoder_2"],
        tokenizer=modules["tokenizer"],
        tokenizer_2=modules["tokenizer_2"],
        process=process or spec_process,
        prediction=prediction or spec_prediction,
        scheduler_config=modules["scheduler"],
        force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        path=folder,
    )

"""Stable Diffusion 1.x/2.x folders (diffusers' ``StableDiffusionPipeline`` layout) in reverie.

A folder with ``model_index.json``, ``unet/`` (``UNet2DConditionModel``), ``vae/``
(``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (CLIP) and
``scheduler/`` loads into :class:`StableDiffusion`:

* :meth:`~StableDiffusion.encode_prompt` runs CLIP as diffusers does (padded to the tokenizer's
  ``model_max_length``, last hidden state; an over-long prompt is truncated with a warning);
* :meth:`~StableDiffusion.denoiser` is a latent :class:`~reverie.denoisers.DenoiserBase` with the
  prompt embeddings bound, under classifier-free guidance when asked, so every reverie sampler
  and algorithm runs in latent space;
* :meth:`~StableDiffusion.sample` is text-to-image with diffusers' ``__call__`` argument names;
* :meth:`~StableDiffusion.encode_image` / :meth:`~StableDiffusion.decode` cross the VAE.

The noising process and prediction type come from the scheduler config through
:func:`reverie.diffusers_adapter.scheduler_spec`; the scheduler's own stepping rule is not used
(pick a reverie sampler and grid). Weights are read from safetensors; pickled weights
(``.bin``/``.ckpt``/``.pt``/``.pth``) only with ``trust_pickle=True``. The safety checker,
feature extractor and image encoder of a folder are not loaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.pipelines._base import LatentPipeline, load_components, read_process
from reverie.process import GaussianProcess

__all__ = ["StableDiffusion", "clip_ids", "load_stable_diffusion"]

#: component -> the classes accepted for it (``None``: any scheduler class).
COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,
}


class _UNetFunction(nn.Module):
    """``fn(x, t, encoder_hidden_states, **added)``: the UNet at discrete VP times (its step
    index); ``added`` (SDXL's ``text_embeds``, ``time_ids``) go in as ``added_cond_kwargs``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                **added: Tensor) -> Tensor:
        ehs = encoder_hidden_states.to(x.dtype)
        return self.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added or None,
                         return_dict=False)[0]


class StableDiffusion(LatentPipeline):
    """A Stable Diffusion 1.x/2.x pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._base.LatentPipeline`'s: ``unet``,
    ``text_encoder``, ``tokenizer``. Conditioning: ``{"encoder_hidden_states": [B, L, D]}``.
    """

    def __init__(
        self,
        *,
        name: str,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        path: Path | None = None,
    ):
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        super().__init__(
            name=name, network=unet, vae=vae, process=process, prediction=prediction,
            base_denoiser=Denoiser(_UNetFunction(unet), process, prediction),
            scheduler_config=scheduler_config, path=path,
        )

    def default_size(self) -> tuple[int, int]:
        size = int(self.unet.config.sample_size) * self.vae_scale_factor
        return size, size

    def _embed(self, texts: list[str]) -> Tensor:
        """CLIP's last hidden state of ``texts`` padded to ``model_max_length`` (diffusers)."""
        ids, mask = clip_ids(self.tokenizer, texts)
        if not getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = None  # SD's CLIP attends to the padding too, unless its config says otherwise
        dev = self.text_encoder.device
        return self.text_encoder(ids.to(dev), attention_mask=None if mask is None
                                 else mask.to(dev))[0]

    def _conditioning(self, prompts, negatives, height, width):
        # the negative prompt defaults to "" (the unconditional embedding), as in diffusers
        negatives = [""] * len(prompts) if negatives is None else negatives
        return ({"encoder_hidden_states": self._embed(prompts)},
                {"encoder_hidden_states": self._embed(negatives)})


def clip_ids(
    tokenizer: Any, texts: list[str], max_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask of ``texts`` padded to ``max_length`` (default: the
    tokenizer's ``model_max_length``), truncated with a warning that names what was removed
    (diffusers)."""
    length = int(max_length or tokenizer.model_max_length)
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt")
    full = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > length:  # what truncation removed (diffusers' warning)
        removed = tokenizer.batch_decode(full[:, length - 1 : -1])
        warnings.warn(f"the prompt was truncated to {length} tokens (the encoder's limit); "
                      f"removed: {removed}", stacklevel=4)
    return enc.input_ids, enc.attention_mask


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_stable_diffusion(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> StableDiffusion:
    """Load a ``StableDiffusionPipeline`` folder (module docstring); ``process`` /
    ``prediction`` override what the scheduler config says; ``dtype`` / ``device`` place the
    networks (the solver state dtype is ``sample``'s)."""
    modules = load_components(folder, COMPONENTS, pipeline="StableDiffusionPipeline",
                              trust_pickle=trust_pickle, dtype=dtype, device=device)
    spec_process, spec_prediction = read_process(folder, modules["scheduler"])
    return StableDiffusion(
        name=name or folder.name,
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=modules["tokenizer"],
        process=process or spec_process,
        prediction=prediction or spec_prediction,
        scheduler_config=modules["scheduler"],
        path=folder,
    )

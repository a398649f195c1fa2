"""Stable Diffusion 3 / 3.5 folders (diffusers' ``StableDiffusion3Pipeline`` layout) in reverie.

A folder with ``transformer/`` (``SD3Transformer2DModel``), ``vae/`` (``AutoencoderKL``), two
CLIP text encoders with projection (``text_encoder/``, ``text_encoder_2/`` and their
tokenizers), optionally ``text_encoder_3/`` (``T5EncoderModel``) with ``tokenizer_3/``, and a
flow-matching ``scheduler/`` loads into :class:`StableDiffusion3`. Conditioning, as diffusers'
``encode_prompt``: the penultimate hidden states of both CLIPs concatenated on the feature axis,
zero-padded to the T5 width, then T5's last hidden state (``max_sequence_length`` tokens, 256;
zeros without a T5) concatenated on the sequence axis -> ``encoder_hidden_states``; both CLIPs'
projected pooled outputs concatenated -> ``pooled_projections``. The network takes the
timestep ``1000 t`` (``t`` = diffusers' sigma) and predicts the velocity ``eps - x0``.
Classifier-free guidance against the negative prompt (default ``""``) in one batched call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.pipelines._base import load_components
from reverie.pipelines._flow import FlowPipeline, read_flow
from reverie.pipelines.stable_diffusion import clip_ids
from reverie.process import GaussianProcess

__all__ = ["StableDiffusion3", "load_sd3"]

CLIP_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
T5_TOKENIZERS = ("T5Tokenizer", "T5TokenizerFast")
COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "transformer": ("SD3Transformer2DModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModelWithProjection",),
    "tokenizer": CLIP_TOKENIZERS,
    "text_encoder_2": ("CLIPTextModelWithProjection",),
    "tokenizer_2": CLIP_TOKENIZERS,
    "text_encoder_3": ("T5EncoderModel",),
    "tokenizer_3": T5_TOKENIZERS,
    "scheduler": None,
}


class _SD3Function(nn.Module):
    """``fn(x, t, encoder_hidden_states, pooled_projections)``: the transformer at timestep
    ``time_scale * t`` (float32, as diffusers' ``sigmas * num_train_timesteps``)."""

    def __init__(self, transformer: nn.Module, time_scale: float):
        super().__init__()
        self.transformer, self.time_scale = transformer, time_scale

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                pooled_projections: Tensor) -> Tensor:
        return self.transformer(
            hidden_states=x, timestep=t * self.time_scale,
            encoder_hidden_states=encoder_hidden_states.to(x.dtype),
            pooled_projections=pooled_projections.to(x.dtype), return_dict=False,
        )[0]


class StableDiffusion3(FlowPipeline):
    """A Stable Diffusion 3 pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._flow.FlowPipeline`'s: ``transformer``,
    ``text_encoder`` / ``_2`` / ``_3`` and ``tokenizer`` / ``_2`` / ``_3`` (``_3`` may be
    ``None``), ``max_sequence_length`` (T5 tokens, 256). Conditioning:
    ``{"encoder_hidden_states": [B, 77 + L, D_T5], "pooled_projections": [B, P1 + P2]}``.
    """

    default_guidance = 7.0
    max_sequence_length = 256
    _max_shift = 1.16  # SD3's fallback in diffusers (Flux: 1.15)

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
        text_encoder_3: nn.Module | None,
        tokenizer_3: Any,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        dynamic: bool = False,
        time_scale: float = 1000.0,
        path: Path | None = None,
    ):
        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise ValueError("text_encoder_3 and tokenizer_3 come together (or both None)")
        self.transformer = transformer
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.text_encoder_3, self.tokenizer_3 = text_encoder_3, tokenizer_3
        self._patch = int(transformer.config.patch_size)  # sizes: multiples of VAE x patch
        super().__init__(
            name=name, network=transformer, vae=vae, process=process, prediction=prediction,
            base_denoiser=Denoiser(_SD3Function(transformer, time_scale), process, prediction),
            scheduler_config=scheduler_config, dynamic=dynamic, time_scale=time_scale,
            path=path,
        )

    def default_size(self) -> tuple[int, int]:
        size = int(self.transformer.config.sample_size) * self.vae_scale_factor
        return size, size

    def _clip(self, encoder: nn.Module, tokenizer: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
        """A CLIP's penultimate hidden state and projected pooled output (diffusers)."""
        ids, _ = clip_ids(tokenizer, texts)
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    def _t5(self, texts: list[str]) -> Tensor:
        """T5's last hidden state over ``max_sequence_length`` tokens; zeros without a T5."""
        if self.text_encoder_3 is None:
            width = int(self.transformer.config.joint_attention_dim)
            return torch.zeros(len(texts), self.max_sequence_length, width,
                               device=self.text_encoder.device, dtype=self.text_encoder.dtype)
        ids, _ = clip_ids(self.tokenizer_3, texts, self.max_sequence_length)
        return self.text_encoder_3(ids.to(self.text_encoder_3.device))[0]

    def _embed(self, texts: list[str]) -> dict[str, Tensor]:
        (h1, p1), (h2, p2) = (self._clip(self.text_encoder, self.tokenizer, texts),
                              self._clip(self.text_encoder_2, self.tokenizer_2, texts))
        t5 = self._t5(texts)
        clip = torch.cat([h1, h2], -1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # zero-pad features to T5's width
        return {"encoder_hidden_states": torch.cat([clip, t5.to(clip.device)], -2),
                "pooled_projections": torch.cat([p1, p2], -1)}

    def _conditioning(self, prompts, negatives, height, width):
        # the negative prompt defaults to "" (encoded, not zeroed), as in diffusers
        negatives = [""] * len(prompts) if negatives is None else negatives
        return self._embed(prompts), self._embed(negatives)


def load_sd3(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> StableDiffusion3:
    """Load a ``StableDiffusion3Pipeline`` folder (module docstring); ``process`` /
    ``prediction`` override the scheduler config; ``dtype`` / ``device`` place the networks."""
    modules = load_components(folder, COMPONENTS, pipeline="StableDiffusion3Pipeline",
                              optional=("text_encoder_3", "tokenizer_3"),
                              trust_pickle=trust_pickle, dtype=dtype, device=device)
    settings = read_flow(folder, modules.pop("scheduler"), process, prediction)
    return StableDiffusion3(name=name or folder.name, path=folder, **modules, **settings)

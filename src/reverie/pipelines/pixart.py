"""PixArt-alpha and PixArt-sigma folders (diffusers' ``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline`` layout) in reverie.

A folder with ``model_index.json``, ``transformer/`` (``PixArtTransformer2DModel``, or the
legacy ``Transformer2DModel`` name), ``vae/`` (``AutoencoderKL``), ``text_encoder/``
(``T5EncoderModel``), ``tokenizer/`` (T5) and ``scheduler/`` loads into :class:`PixArt`:

* :meth:`~PixArt.encode_prompt` runs T5 as diffusers does: the prompt lower-cased and stripped
  (diffusers' preprocessing when ``clean_caption`` is off or its bs4/ftfy dependencies are
  missing; the caption cleaner itself is not applied), padded to 120 tokens (alpha) or 300
  (sigma), last hidden state *and* the attention mask, which the transformer receives as
  ``encoder_attention_mask``; the negative prompt (default ``""``) is encoded with its own mask.
  Transformers that take size micro-conditions (``use_additional_conditions``: PixArt-alpha
  at 1024 px) also get ``resolution`` ``[H, W]`` and ``aspect_ratio`` ``H / W`` in pixels.
* The transformer's learned variance (``out_channels = 2 * in_channels``) is dropped: reverie
  reads the first half, the noise prediction.
* :meth:`~PixArt.sample` is text-to-image with any reverie sampler at the size asked for.
  diffusers' ``use_resolution_binning`` (snapping the size to a trained aspect-ratio bin, then
  resizing the image back) is not done: ask for a bin's size yourself (e.g. 1024x1024).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.pipelines._transformer import TransformerPipeline, load_transformer_pipeline
from reverie.pipelines.stable_diffusion import clip_ids
from reverie.process import GaussianProcess

__all__ = ["PixArt", "load_pixart", "MAX_SEQUENCE_LENGTH"]

#: pipeline class -> T5 sequence length (diffusers' ``max_sequence_length`` defaults).
MAX_SEQUENCE_LENGTH = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}

COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "transformer": ("PixArtTransformer2DModel", "Transformer2DModel"),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("T5EncoderModel",),
    "tokenizer": ("T5Tokenizer", "T5TokenizerFast"),
    "scheduler": None,
}


class _PixArtFunction(nn.Module):
    """``fn(x, t, encoder_hidden_states, encoder_attention_mask, resolution, aspect_ratio)``."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                encoder_attention_mask: Tensor | None = None, resolution: Tensor | None = None,
                aspect_ratio: Tensor | None = None) -> Tensor:
        sizes = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        sizes = {k: None if v is None else v.to(x.dtype) for k, v in sizes.items()}
        return self.transformer(
            x, encoder_hidden_states=encoder_hidden_states.to(x.dtype),
            encoder_attention_mask=encoder_attention_mask, timestep=t,
            added_cond_kwargs=sizes, return_dict=False,
        )[0]


class PixArt(TransformerPipeline):
    """A PixArt-alpha/sigma pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._base.LatentPipeline`'s: ``transformer``,
    ``text_encoder``, ``tokenizer``, ``max_sequence_length``. Conditioning:
    ``{"encoder_hidden_states": [B, L, D], "encoder_attention_mask": [B, L]}`` (plus
    ``"resolution": [B, 2]`` and ``"aspect_ratio": [B, 1]`` for micro-conditioned transformers).
    """

    default_guidance = 4.5  # diffusers' default

    def __init__(self, *, transformer: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 max_sequence_length: int = 120, **kwargs: Any):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(transformer=transformer, fn=_PixArtFunction(transformer), **kwargs)

    def _embed(self, texts: list[str]) -> dict[str, Tensor]:
        """T5's last hidden state of ``texts`` and the attention mask (diffusers)."""
        texts = [t.lower().strip() for t in texts]  # diffusers' _text_preprocessing
        ids, mask = clip_ids(self.tokenizer, texts, self.max_sequence_length)
        dev = self.text_encoder.device
        mask = mask.to(dev)
        emb = self.text_encoder(ids.to(dev), attention_mask=mask)[0]
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    def _conditioning(self, prompts, negatives, height, width):
        negatives = [""] * len(prompts) if negatives is None else negatives  # as diffusers
        cond, neg = self._embed(prompts), self._embed(negatives)
        if getattr(self.transformer, "use_additional_conditions", False):
            n = len(prompts)  # size micro-conditions in pixels, the same for both branches
            sizes = {"resolution": torch.tensor([[float(height), float(width)]]).expand(n, 2),
                     "aspect_ratio": torch.tensor([[height / width]]).expand(n, 1)}
            cond, neg = {**cond, **sizes}, {**neg, **sizes}
        return cond, neg


def load_pixart(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> PixArt:
    """Load a ``PixArtAlphaPipeline`` or ``PixArtSigmaPipeline`` folder (module docstring);
    ``process`` / ``prediction`` override what the scheduler config says; ``dtype`` /
    ``device`` place the networks (the solver state dtype is ``sample``'s)."""
    kind = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    if kind not in MAX_SEQUENCE_LENGTH:
        raise ValueError(f"{folder} is a {kind!r}; load_pixart reads "
                         f"{' or '.join(MAX_SEQUENCE_LENGTH)} folders")
    return load_transformer_pipeline(
        PixArt, Path(folder), COMPONENTS, "PixArtTransformer2DModel", name=name, dtype=dtype,
        process=process, prediction=prediction, trust_pickle=trust_pickle, device=device,
        max_sequence_length=MAX_SEQUENCE_LENGTH[kind],
    )

"""Adapter for transformers masked language models used as masked-diffusion denoisers.

:class:`MaskedLM` wraps an ``AutoModelForMaskedLM``-style model (BERT/RoBERTa-like, MDLM
checkpoints) or a LLaDA / Dream model loaded with ``trust_remote_code`` into a
:class:`~reverie.discrete.TokenDenoiserBase`:

* the mask id comes from the tokenizer (``mask_token_id``) or the config (``mask_token_id``,
  e.g. LLaDA's 126336); a model without one is an error;
* Dream is initialised from an autoregressive model, so its logits at position ``i`` predict
  token ``i + 1``; the adapter shifts them back by one position
  (``logits = cat([logits[:, :1], logits[:, :-1]])``, Dream's ``generation_utils.py``).
  This is on by default when ``config.model_type`` is ``"Dream"``;
* the SUBS rules (never predict the mask, keep clean tokens) are applied by
  :class:`~reverie.discrete.TokenDenoiser`; the model is not time conditioned;
* left-padded rows of a ragged batch get ``attention_mask`` and, when the model's ``forward``
  takes them, ``position_ids`` counted from each row's first real token (RoBERTa-style
  models, whose positions start after ``pad_token_id``, get that offset).

Classifier-free guidance is :class:`~reverie.discrete.TokenClassifierFreeGuidance` (or
``generate(..., guidance_scale=...)``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from reverie.discrete.denoiser import TokenDenoiser, TokenDenoiserBase
from reverie.discrete.process import DiscreteProcess, MaskedProcess

__all__ = ["MaskedLM", "shift_logits"]

# model types whose learned positions start at pad_token_id + 1 (transformers'
# ``create_position_ids_from_input_ids``)
_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod")


def shift_logits(logits: Tensor) -> Tensor:
    """Dream's one-position shift: the prediction for position ``i`` is the logit row ``i - 1``
    (position 0 keeps its own row)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class MaskedLM(TokenDenoiserBase):
    """A transformers masked LM as a token denoiser.

    ``model`` -- a ``torch.nn.Module`` returning ``.logits`` (or a tuple whose first item is the
    logits) for ``model(input_ids=x)``; ``tokenizer`` -- its tokenizer (optional; needed for text
    prompts and decoding); ``mask_id`` -- overrides the tokenizer's / config's mask id;
    ``shift`` -- Dream-style logit shift (default: on for ``model_type == "Dream"``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        *,
        mask_id: int | None = None,
        shift: bool | None = None,
        process: DiscreteProcess | None = None,
        vocab_size: int | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable torch module, got {type(model).__name__}")
        config = getattr(model, "config", None)
        if mask_id is None:
            mask_id = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
        if mask_id is None and config is not None:
            mask_id = getattr(config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(
                "this model has no mask token: neither its tokenizer (mask_token_id) nor its "
                "config (mask_token_id) names one; pass mask_id= explicitly"
            )
        if vocab_size is None:
            vocab_size = getattr(config, "vocab_size", None)
            out_emb = getattr(model, "get_output_embeddings", lambda: None)()
            if out_emb is not None and getattr(out_emb, "out_features", None):
                vocab_size = int(out_emb.out_features)
        if vocab_size is None:
            raise ValueError("cannot tell the model's vocabulary size; pass vocab_size=")
        if shift is None:
            shift = str(getattr(config, "model_type", "")).lower() == "dream"
        self.model = model
        self.shift = bool(shift)
        self.config = config
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError, AttributeError):
            params = {}
        self._kwargs = {k for k in ("attention_mask", "position_ids") if k in params}
        kind = str(getattr(config, "model_type", "")).lower()
        self._position_offset = (
            int(getattr(config, "pad_token_id", 0) or 0) + 1 if kind in _PAD_OFFSET_POSITIONS else 0
        )
        self._inner = TokenDenoiser(
            self._logits,
            mask_id=int(mask_id),
            vocab_size=int(vocab_size),
            process=MaskedProcess() if process is None else process,
            time_conditioned=False,
            tokenizer=tokenizer,
            padding="attention_mask" in self._kwargs,
        )
        self.takes_padding = self._inner.takes_padding
        self.mask_id = self._inner.mask_id
        self.vocab_size = self._inner.vocab_size
        self.process = self._inner.process
        self.time_conditioned = False
        self.tokenizer = tokenizer
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        self.device = param.device if param is not None else torch.device("cpu")

    def _logits(self, x: Tensor, t: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        kw: dict[str, Tensor] = {}
        if attention_mask is not None:
            real = attention_mask.to(device=self.device, dtype=torch.long)
            kw["attention_mask"] = real
            if "position_ids" in self._kwargs:  # each row counts from its first real token
                kw["position_ids"] = (real.cumsum(-1) - 1).clamp_min(0) + self._position_offset
        with torch.no_grad():
            out = self.model(input_ids=x.to(self.device), **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.shift:
            shifted = shift_logits(logits)
            if attention_mask is not None:  # a row's first real position keeps its own row
                real = kw["attention_mask"].bool()
                first = real & ~torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], 1)
                shifted = torch.where(first[..., None], logits, shifted)
            logits = shifted
        return logits.float()

    def __call__(
        self, x: Tensor, t: float | Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        return self._inner(x, t, attention_mask)

    @property
    def pad_id(self) -> int | None:
        """The tokenizer's padding id (left padding of ragged batches), else ``None``."""
        return getattr(self.tokenizer, "pad_token_id", None)

    @property
    def eos_id(self) -> int | None:
        """The tokenizer's end-of-sequence id, else ``None``."""
        return getattr(self.tokenizer, "eos_token_id", None)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass the prompt as token ids")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Tensor | list[int]) -> str:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        mask_id: int | None = None,
        shift: bool | None = None,
        **kwargs: Any,
    ) -> MaskedLM:
        """Load a local folder or a hub id with transformers: ``AutoModelForMaskedLM`` first,
        then ``AutoModel`` (LLaDA and Dream register their diffusion LM there, with
        ``trust_remote_code=True``), and ``AutoTokenizer`` when the folder has one."""
        try:
            import transformers
            from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "loading transformers models needs the transformers package "
                "(pip install 'reverie[all]')"
            ) from err
        load_kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, **kwargs}
        if dtype is not None:
            # transformers >= 4.56 names it ``dtype``; older versions ``torch_dtype``
            major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
            load_kw["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
        try:
            model = AutoModelForMaskedLM.from_pretrained(name_or_path, **load_kw)
        except ValueError:
            # not a masked-LM architecture in transformers' registry: LLaDA / Dream style
            model = AutoModel.from_pretrained(name_or_path, **load_kw)
        model.eval()
        if device is not None:
            model.to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError):
            tokenizer = None
        return cls(model, tokenizer, mask_id=mask_id, shift=shift)

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return (
            f"MaskedLM({name}, mask_id={self.mask_id}, vocab_size={self.vocab_size}, "
            f"shift={self.shift})"
        )

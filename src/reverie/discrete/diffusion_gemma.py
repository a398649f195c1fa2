"""transformers' ``DiffusionGemmaForBlockDiffusion`` as a model :func:`reverie.discrete.generate`
accepts.

DiffusionGemma is a *uniform-noise* block diffusion model: a causal **encoder** writes the KV
cache of the prompt and of every committed canvas; a bidirectional **decoder** denoises a
``canvas_length`` block that starts as random vocabulary tokens, reading (never writing) that
cache and feeding back its previous logits (self-conditioning). Its sampler
(transformers' ``generate``; arXiv 2505.24857) at step ``k = N..1`` of ``N``:

1. ``z = logits / T_k`` with ``T_k = t_min + (t_max - t_min) k / N``;
2. draw ``x ~ Cat(softmax z)``; accept the lowest-entropy positions while
   ``cumsum(H) - H <= entropy_bound``; re-draw the others uniformly;
3. a row stops early once its argmax canvas is unchanged for ``stability_threshold`` steps and
   its mean entropy is below ``confidence_threshold``;
4. the **argmax** canvas of the last step is committed and encoded.

:meth:`DiffusionGemmaLM.generate_canvases` runs this loop with the same random calls in the same
order as transformers (``randint`` for canvases and re-draws, ``multinomial`` for samples), so
with one ``torch.Generator`` seeded like transformers' global seed the tokens are identical.
``cache="prefix"`` is the encoder cache (exact: the encoder is causal); ``cache=None`` re-encodes
the whole context before every decoder call (the uncached reference). ``eos_id`` stops rows
(and the batch once all are done) as transformers' ``eos_token_id``; left-padded (ragged) prompt
batches are not implemented here yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer
from reverie.discrete.denoiser import TokenDenoiserBase
from reverie.discrete.generate import GenerationOutput
from reverie.discrete.process import UniformProcess

__all__ = ["DiffusionGemmaLM", "DEFAULTS"]

#: transformers' defaults (``DiffusionGemmaGenerationConfig._get_default_generation_params``).
DEFAULTS = {
    "entropy_bound": 0.1,
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}


class DiffusionGemmaLM(TokenDenoiserBase):
    """A ``DiffusionGemmaForBlockDiffusion`` (``model``) with its tokenizer (optional).

    ``block_size`` is ``config.canvas_length``; ``mask_id`` is ``None`` (uniform noise).
    It is sampled through :func:`reverie.discrete.generate` (:meth:`generate_canvases`) only;
    the per-step ``lm(x, t)`` call of token denoisers is refused (the decoder needs a context)."""

    attention = "encoder_decoder"

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "canvas_length"):
            raise TypeError(
                f"expected a DiffusionGemmaForBlockDiffusion, got {type(model).__name__}"
            )
        self.model = model
        self.config = config
        self.block_size = int(config.canvas_length)
        self.vocab_size = int(config.text_config.vocab_size)
        self.mask_id = None
        self.process = UniformProcess()
        self.time_conditioned = False
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:  # follows the module (reverie.load(..., device=) moves it)
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, folder: str, **kwargs: Any) -> DiffusionGemmaLM:
        """Load a saved ``DiffusionGemmaForBlockDiffusion`` folder (and its tokenizer if any)."""
        from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

        model = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, **kwargs).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        return cls(model, tokenizer)

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        raise TypeError(
            "DiffusionGemma denoises a canvas against an encoded context; sample with "
            "reverie.discrete.generate(model, prompt, ...)"
        )

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass the prompt as token ids")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Tensor | list[int]) -> str:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- the two forwards ----------------------------------------------------------------
    def _encode(self, ids: Tensor, cache: Any, start: int) -> Any:
        """Write the keys/values of ``ids`` (positions ``start..``) into ``cache`` (a new
        ``DynamicCache`` when ``None``); returns the cache."""
        from transformers import DynamicCache

        hf = self.model
        if cache is None:
            cache = DynamicCache(config=self.config.get_text_config(decoder=True))
        n, length = ids.shape
        pos = torch.arange(start, start + length, dtype=torch.int32, device=ids.device)[None]
        dummy = torch.empty(n, length, 0, dtype=hf.dtype, device=ids.device)
        masks = hf.model.encoder.create_masks_for_generate(
            config=self.config, inputs_embeds=dummy,
            attention_mask=torch.ones(n, start + length, dtype=torch.bool, device=ids.device),
            cache=cache, position_ids=pos,
        )
        return hf.model.encoder(input_ids=ids, attention_mask=masks, cache=cache,
                                position_ids=pos).cache

    def _decoder_mask(self, canvas: Tensor, cache: Any, start: int) -> Any:
        """The decoder's attention masks for a canvas at ``start`` over the context ``cache``."""
        n, c = canvas.shape
        return self.model.model.decoder.create_diffusion_decoder_attention_mask(
            config=self.config, inputs_embeds=canvas.unsqueeze(-1), cache=cache,
            decoder_attention_mask=torch.ones(n, start + c, dtype=torch.bool,
                                              device=canvas.device),
        )

    def _decode(self, canvas: Tensor, self_cond: Tensor | None, cache: Any, start: int,
                mask: Any) -> Tensor:
        """Decoder logits of ``canvas`` at positions ``start..`` given the context ``cache``."""
        c = canvas.shape[1]
        pos = torch.arange(start, start + c, dtype=torch.int32, device=canvas.device)[None]
        return self.model(decoder_input_ids=canvas, self_conditioning_logits=self_cond,
                          decoder_attention_mask=mask, cache=cache,
                          decoder_position_ids=pos).logits

    # ---- generation ----------------------------------------------------------------------
    def generate_canvases(
        self,
        prompt: Any,
        length: int,
        steps: int | None,
        sampler: Any,
        block_length: int | None,
        n: int,
        generator: torch.Generator | None,
        *,
        cache: str | None = None,
        return_stats: bool = False,
        eos_id: int | None = None,
        pad_id: int | None = None,
        **options: Any,
    ) -> Tensor | GenerationOutput:
        """:func:`reverie.discrete.generate` for this model (module docstring). ``length`` --
        prompt + new tokens (the new ones a multiple of ``canvas_length``); ``steps`` --
        denoising steps per canvas (transformers' ``max_denoising_steps``, default 48);
        ``options`` -- ``entropy_bound``, ``t_min``, ``t_max``, ``stability_threshold``,
        ``confidence_threshold`` (:data:`DEFAULTS`). ``generator`` -- one ``torch.Generator``
        (``None``: the global RNG, as transformers). ``eos_id`` -- a row whose committed canvas
        holds it is finished: its tokens after the first EOS, and its later canvases, become
        ``pad_id`` (default: the model's ``pad_token_id``), and generation stops once every row
        is finished (the result is then shorter than ``length``), as transformers does. Finished
        rows still take part in the batch's random draws, so the tokens stay identical."""
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
            StableAndConfidentStoppingCriteria,
        )

        if sampler not in ("ancestral", "entropy_bound"):
            raise ValueError(
                f"DiffusionGemma samples with its entropy-bound sampler (sampler='entropy_bound'), "
                f"got sampler={sampler!r}"
            )
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown DiffusionGemma options {sorted(unknown)}; expected {sorted(DEFAULTS)}"
            )
        if cache not in (None, "prefix"):
            raise ValueError(
                f"DiffusionGemma's encoder cache is cache='prefix' (exact) or None, got {cache!r}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("DiffusionGemma generation takes one torch.Generator (or None)")
        opts = {**DEFAULTS, **options}
        c = self.block_size
        if block_length is not None and block_length != c:
            raise ValueError(
                f"block_length must be the model's canvas_length ({c}), got {block_length}"
            )
        steps = integer("steps", 48 if steps is None else steps, 1)
        n = integer("n", n, 1)
        prompt_t = self._prompt(prompt, n)
        plen = prompt_t.shape[1]
        if (length - plen) % c or length <= plen:
            raise ValueError(
                f"DiffusionGemma generates whole canvases: length - prompt ({length} - {plen}) "
                f"must be a positive multiple of canvas_length={c}"
            )
        v, dev = self.vocab_size, self.device
        stop = StableAndConfidentStoppingCriteria(
            opts["stability_threshold"], opts["confidence_threshold"]
        )
        if eos_id is not None:
            eos_id = integer("eos_id", eos_id, 0)
            pad_id = self.config.get_text_config().pad_token_id if pad_id is None else pad_id
            if pad_id is None:
                raise ValueError("eos_id needs a pad_id (the model's config has no pad_token_id)")
        done_rows = torch.zeros(n, dtype=torch.bool, device=dev)
        ids, enc, nfe = prompt_t, None, 0
        with torch.no_grad():
            for _ in range((length - plen) // c):
                start = ids.shape[1]
                if cache == "prefix":  # encode what the cache lacks (the prompt, then a canvas)
                    done = 0 if enc is None else enc.get_seq_length()
                    enc = self._encode(ids[:, done:], enc, done)
                    nfe += 1
                canvas = torch.randint(0, v, (n, c), device=dev, generator=generator)
                argmax, self_cond = canvas, None
                mask = self._decoder_mask(canvas, enc, start) if cache == "prefix" else None
                finished = torch.zeros(n, dtype=torch.bool, device=dev)
                stop.reset()
                for k in range(steps, 0, -1):
                    if cache == "prefix":
                        ctx = enc
                    else:  # uncached: the whole context again, into a fresh cache
                        ctx = self._encode(ids, None, 0)
                        mask = self._decoder_mask(canvas, ctx, start)
                    logits = self._decode(canvas, self_cond, ctx, start, mask)
                    nfe += 1 if cache == "prefix" else 2
                    temp = opts["t_min"] + (opts["t_max"] - opts["t_min"]) * (k / steps)
                    z = logits / temp
                    probs = torch.softmax(z, dim=-1, dtype=torch.float32)
                    draw = torch.multinomial(probs.view(-1, v), 1, generator=generator).view(n, c)
                    new_argmax = z.argmax(-1)
                    # entropy bound: accept the longest low-entropy prefix with
                    # sum(H) - max(H) <= bound; re-draw the rest uniformly
                    h = torch.distributions.Categorical(logits=z).entropy()
                    hs, order = h.sort(-1)
                    keep = torch.zeros_like(hs, dtype=torch.bool).scatter(
                        -1, order, hs.cumsum(-1) - hs <= opts["entropy_bound"]
                    )
                    fresh = torch.randint(0, v, (n, c), device=dev, generator=generator)
                    new_canvas = torch.where(keep, draw, fresh)
                    if bool(finished.any()):  # rows that stopped keep their last state
                        new_argmax = torch.where(finished[:, None], argmax, new_argmax)
                        new_canvas = torch.where(finished[:, None], canvas, new_canvas)
                        z = torch.where(finished[:, None, None], self_cond, z)
                    finished |= stop(new_argmax, z)
                    canvas, argmax = new_canvas, new_argmax
                    self_cond = z.to(self.model.model.decoder.embed_tokens.weight.dtype)
                    if bool(finished.all()):
                        break
                if eos_id is not None:  # rows done before: pad; done now: pad after the EOS
                    is_eos = (argmax == eos_id).cumsum(-1)
                    after = (is_eos > 0) & ~((is_eos == 1) & (argmax == eos_id))
                    argmax = argmax.masked_fill(after | done_rows[:, None], pad_id)
                    done_rows = done_rows | (is_eos[:, -1] > 0)
                ids = torch.cat([ids, argmax], dim=-1)  # commit the argmax canvas
                if bool(done_rows.all()):
                    break
        if return_stats:
            return GenerationOutput(ids, nfe, nfe * n, nfe)
        return ids

    def prompt_length(self, prompt: Any) -> int:
        """Tokens in ``prompt`` (text or ids), for ``max_new_tokens``."""
        if isinstance(prompt, str):
            return len(self.encode(prompt))
        return int(torch.as_tensor(prompt).shape[-1])

    def _prompt(self, prompt: Any, n: int) -> Tensor:
        if prompt is None:
            raise ValueError("DiffusionGemma needs a prompt (at least a BOS token)")
        if isinstance(prompt, str):
            prompt = self.encode(prompt)
        p = torch.as_tensor(prompt).long()
        p = p.unsqueeze(0) if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[0] not in (1, n) or p.shape[1] == 0:
            raise ValueError(f"prompt must be token ids [P] or [1|n, P], got {tuple(p.shape)}")
        if int(p.min()) < 0 or int(p.max()) >= self.vocab_size:
            raise ValueError(f"prompt token ids must lie in [0, {self.vocab_size})")
        return p.expand(n, -1).clone().to(self.device)

    def __repr__(self) -> str:
        return f"DiffusionGemmaLM(canvas_length={self.block_size}, vocab_size={self.vocab_size})"

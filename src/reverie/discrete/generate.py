"""Sampling from masked-diffusion (and uniform-noise) language models.

:func:`generate` is one loop for every sampler (DESIGN.md, idea 3). Each row of the canvas
carries its own block and step counter; at every step the loop

1. asks the sampler's *clock* for the time at which the model is evaluated (a fixed grid, or
   the random first-hitting times);
2. calls the model -- only for rows whose input changed when the model is not time conditioned
   (MDLM's cache, Sahoo et al. 2024, ``_ddpm_caching_update``) -- to get ``log p(x0 | x_t)``;
3. asks the sampler's **decision function** which masked positions are committed at this step
   and to which tokens: ``decide(ctx: StepContext) -> Commit``. This is the only place where a
   sampler family differs from another, so a constraint (a regular expression, a JSON schema)
   restricts exactly this function: it may wrap ``SAMPLERS[name].decide``, read the block
   bounds and step of ``ctx`` and keep per-row state (e.g. an automaton state) across blocks in
   ``Commit.carry`` (handed back as ``ctx.carry`` at the next step), and the wrapped sampler is
   passed to :func:`generate` as ``sampler=dataclasses.replace(SAMPLERS[name], decide=...)``;
4. writes the committed tokens into the canvas.

Semi-autoregressive decoding (LLaDA, Nie et al. 2025; BD3-LM, Arriola et al. 2025) splits the
canvas into blocks of ``block_length`` decoded left to right; every sampler runs inside a
block. AdaBlock (Lu et al. 2025) chooses each block's end at a semantic delimiter instead.

Batches may be ragged: prompts of different lengths are left padded, and models that take an
``attention_mask`` (:attr:`~reverie.discrete.TokenDenoiserBase.takes_padding`) see each row as
if it were alone (others are called on each row's unpadded part); with one generator per row,
a row's draws are made in its own coordinates, so its output does not depend on its batch. A
row ends at its end-of-sequence token (``eos_id``) or at a stop string once every position
before it is decided -- its *committed prefix* -- and leaves the batch; ``stream=True`` yields
the committed text as it grows.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, integer
from reverie._progress import progress_bar
from reverie._random import Generators
from reverie.discrete._sampling import check_generator, uniform
from reverie.discrete.constraints.grammar import Grammar, grammar_plan
from reverie.discrete.denoiser import TokenClassifierFreeGuidance, TokenDenoiserBase
from reverie.discrete.policies import AdaptiveBlocks, grid_times
from reverie.discrete.samplers import SAMPLERS, Commit, StepContext, TokenSampler

__all__ = [
    "Cancelled",
    "Commit",
    "StepContext",
    "TokenSampler",
    "GenerationOutput",
    "Piece",
    "end_token_id",
    "generate",
]


@dataclass(frozen=True)
class GenerationOutput:
    """``tokens`` ``[n, length]``; ``nfe`` -- batched model calls; ``row_evals`` -- rows the
    network actually processed (the cache skips unchanged rows); ``steps`` -- loop iterations;
    ``texts`` -- each row's generated text (after its prompt, cut at EOS / a stop string) when
    the model has a tokenizer, else ``None``."""

    tokens: Tensor
    nfe: int
    row_evals: int
    steps: int
    texts: list[str] | None = None


class Cancelled(RuntimeError):
    """``generate(..., cancel=...)`` was told to stop."""


class Piece(str):
    """A piece of committed text streamed by ``generate(..., stream=True)``: a ``str`` whose
    ``row`` is the batch row it continues (``"".join`` of one row's pieces is its text)."""

    row: int

    def __new__(cls, text: str, row: int) -> Piece:
        piece = super().__new__(cls, text)
        piece.row = row
        return piece

    def __repr__(self) -> str:
        return f"Piece({str(self)!r}, row={self.row})"


def end_token_id(model: TokenDenoiserBase) -> int | None:
    """The id that ends a text of ``model``: its ``eos_id``, its tokenizer's
    ``eos_token_id``, or its ``pad_id`` (``tiny-json`` pads the canvas after the text);
    ``None`` when it has none."""
    for value in (
        getattr(model, "eos_id", None),
        getattr(getattr(model, "tokenizer", None), "eos_token_id", None),
        getattr(model, "pad_id", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# The cached model
# ---------------------------------------------------------------------------------------------


class _CachedModel:
    """Calls the denoiser on the rows that need it. A model that is not time conditioned
    depends only on ``x``, so rows whose input did not change since their last evaluation
    reuse it (MDLM's ``ddpm_cache``)."""

    def __init__(self, denoiser: TokenDenoiserBase, pad: Tensor | None = None):
        self.denoiser = denoiser
        self.pad = pad  # left padding per row (None: no row is padded)
        self.cache_ok = not denoiser.time_conditioned
        self.last_x: Tensor | None = None
        self.last_logp: Tensor | None = None
        self.nfe = 0
        self.row_evals = 0

    def raw(self, x: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """Uncached call (for intermediate states of multi-stage samplers); ``rows``: the
        batch rows ``x`` holds (all when ``None``), for their padding."""
        pad = None if self.pad is None else self.pad if rows is None else self.pad[rows]
        out = _call_padded(self.denoiser, x, t.float(), pad)
        self.nfe += 1
        self.row_evals += x.shape[0]
        return out

    def __call__(self, x: Tensor, t: Tensor, need: Tensor) -> Tensor:
        if self.last_x is None:
            rows = need.clone()
        elif self.cache_ok:
            rows = need & (x != self.last_x).any(-1)
        else:
            rows = need.clone()
        if self.last_x is not None and not bool(rows.any()):
            return self.last_logp  # type: ignore[return-value]
        idx = rows.nonzero().squeeze(-1)
        out = self.raw(x[idx], t[idx], idx)
        if self.last_logp is None:
            self.last_logp = torch.zeros(
                x.shape[0], *out.shape[1:], dtype=out.dtype, device=out.device
            )
            self.last_x = torch.full_like(x, -1)
        self.last_logp[idx] = out
        self.last_x[idx] = x[idx]
        return self.last_logp


def _call_padded(denoiser: TokenDenoiserBase, x: Tensor, t: Tensor, pad: Tensor | None) -> Tensor:
    """``log p(x0 | x_t)`` of left-padded rows (``pad[r]`` leading padding columns), each as
    if it were alone: padding every row shares is cut off; a model that takes an
    ``attention_mask`` gets one, any other is called on each row's unpadded part (rows with
    equal padding together). Padding columns predict themselves (as clean positions do)."""
    if pad is None or not bool(pad.any()):
        return denoiser(x, t)
    cut = int(pad.min())
    xs, pad = x[:, cut:], (pad - cut).to(x.device)
    if not bool(pad.any()):
        out = denoiser(xs, t)
    elif denoiser.takes_padding:
        real = torch.arange(xs.shape[1], device=x.device) >= pad[:, None]
        out = denoiser(xs, t, attention_mask=real)
    else:
        out = None
        for p in pad.unique().tolist():
            g = (pad == p).nonzero().squeeze(-1)
            lp = denoiser(xs[g, p:], t[g])
            if out is None:
                out = _carry(xs, lp.shape[-1], lp.dtype)
            out[g, p:] = lp
    if cut == 0:
        return out
    return torch.cat([_carry(x[:, :cut], out.shape[-1], out.dtype), out], dim=1)


def _carry(x: Tensor, v: int, dtype: torch.dtype) -> Tensor:
    """Log-probabilities ``[B, L, v]`` that put all mass on the token ``x`` holds."""
    out = torch.full((*x.shape, v), -torch.inf, dtype=dtype, device=x.device)
    return out.scatter_(-1, x.clamp(0, v - 1).unsqueeze(-1), 0.0)


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _resolve_sampler(sampler: str | TokenSampler) -> TokenSampler:
    if isinstance(sampler, TokenSampler):
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a name or a TokenSampler, got {type(sampler).__name__}")
    return SAMPLERS[sampler]


def _prompt_rows(model: TokenDenoiserBase, prompt: Any, n: int, chat: bool) -> list[Tensor]:
    """One validated LongTensor ``[P_r]`` per batch row. ``prompt``: ``None``; text or token ids
    (one prompt, repeated ``n`` times); a list of texts / id lists / 1-D tensors or a 2-D tensor
    (one row each; ``n`` must be 1 or their number). With ``chat`` each text (or a list of
    ``{"role", "content"}`` messages) goes through the tokenizer's chat template."""
    if chat:
        prompt = _chat_prompts(model, prompt)
    if prompt is None:
        return [torch.zeros(0, dtype=torch.long)] * n
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ValueError("the prompt list is empty; pass at least one prompt (or prompt=None)")
    if isinstance(prompt, (list, tuple)) and not all(_is_id(p) for p in prompt):
        items = [model.encode(p) if isinstance(p, str) else p for p in prompt]
    elif isinstance(prompt, Tensor) and prompt.ndim == 2 and prompt.shape[0] > 1:
        items = list(prompt)
    else:
        items = [model.encode(prompt) if isinstance(prompt, str) else prompt]
    rows = [_prompt_ids(model, p, n) for p in items]
    if len(rows) == 1:
        return rows * n
    if n not in (1, len(rows)):
        raise ValueError(
            f"got {len(rows)} prompts for n={n}; pass one prompt, or one per row (n=1 or "
            f"n={len(rows)})"
        )
    return rows


def _is_id(value: Any) -> bool:
    return isinstance(value, numbers.Integral) or (isinstance(value, Tensor) and value.ndim == 0)


def _prompt_ids(model: TokenDenoiserBase, prompt: Any, n: int) -> Tensor:
    """One prompt's token ids ``[P]``, checked."""
    p = torch.as_tensor(prompt) if not isinstance(prompt, Tensor) else prompt
    if p.numel() and (p.is_floating_point() or p.is_complex() or p.dtype == torch.bool):
        raise TypeError(f"prompt must hold integer token ids, got {p.dtype}")
    p = p.long().cpu()
    if p.ndim == 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 1:
        raise ValueError(
            f"prompt must be a string or token ids [P], [1, P] or [n={n}, P] (or a list of "
            f"prompts), got shape {tuple(p.shape)}"
        )
    if p.numel():
        v = model.vocab_size
        if int(p.min()) < 0 or int(p.max()) >= v:
            raise ValueError(
                f"prompt token ids must lie in [0, {v}), got [{int(p.min())}, {int(p.max())}]"
            )
        if model.mask_id is not None and bool((p == model.mask_id).any()):
            raise ValueError(f"the prompt contains the mask token (id {model.mask_id})")
    return p


def _chat_prompts(model: TokenDenoiserBase, prompt: Any) -> list[list[int]]:
    """Token ids of each conversation through the tokenizer's chat template
    (``apply_chat_template(messages, add_generation_prompt=True)``); a text is one user
    message, a list of ``{"role", "content"}`` dicts one conversation."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        raise ValueError(
            "chat=True needs a tokenizer with a chat template, but this model's tokenizer "
            f"({type(tok).__name__}) has none; pass the prompt as plain text instead"
        )
    if prompt is None:
        raise ValueError("chat=True needs a prompt (a message, or a list of messages)")
    if isinstance(prompt, (str, dict)) or (
        isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict)
    ):
        prompt = [prompt]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError("chat=True takes a text, a list of messages, or a list of those")
    out = []
    for conv in prompt:
        messages = [{"role": "user", "content": conv}] if isinstance(conv, str) else conv
        if isinstance(messages, dict):
            messages = [messages]
        if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, dict) for m in messages
        ):
            raise ValueError(
                "chat=True takes texts or lists of {'role', 'content'} messages, got "
                f"{type(conv).__name__}"
            )
        ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, (list, tuple, Tensor)) and "input_ids" in ids:
            ids = ids["input_ids"]  # transformers >= 5 returns a BatchEncoding
        out.append(list(torch.as_tensor(ids).reshape(-1).tolist()))
    return out


def _fill_id(model: TokenDenoiserBase) -> int:
    """The id of left padding (never seen by the model): its pad id, else any id but the mask."""
    fill = _pad_id(model)
    return fill if fill is not None else 1 if model.mask_id == 0 else 0


def _pad_id(model: TokenDenoiserBase) -> int | None:
    """The model's padding id (its ``pad_id`` or its tokenizer's ``pad_token_id``), else None."""
    for value in (getattr(model, "pad_id", None),
                  getattr(getattr(model, "tokenizer", None), "pad_token_id", None)):
        if isinstance(value, int) and not isinstance(value, bool) and value != model.mask_id:
            return value
    return None


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for st in stops:
        if not isinstance(st, str):
            raise TypeError(f"stop must be a string or a list of strings, got {st!r}")
        if not st:
            raise ValueError("stop strings must be non-empty, got ''")
    return stops


def generate(
    model: TokenDenoiserBase,
    prompt: str | Sequence[Any] | Tensor | None = None,
    length: int | None = None,
    steps: int | None = None,
    sampler: str | TokenSampler = "ancestral",
    block_length: int | None = None,
    temperature: float = 1.0,
    n: int = 1,
    generator: Generators = None,
    *,
    guidance_scale: float = 1.0,
    constraint: Any = None,
    constraint_method: str = "dingo",
    progress: bool = False,
    return_stats: bool = False,
    max_new_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    eos_id: int | None = None,
    stream: bool = False,
    chat: bool = False,
    cache: str | None = None,
    cancel: Callable[[], bool] | None = None,
    distributed: bool = False,
    **options: Any,
) -> Tensor | GenerationOutput | Iterator[Piece]:
    """Sample ``n`` sequences of ``length`` tokens from a masked-diffusion language model.

    ``model`` -- a :class:`~reverie.discrete.TokenDenoiser` (or any token denoiser).
    ``prompt`` -- text (needs the model's tokenizer) or token ids; it fills the first positions
    of the canvas and is kept fixed, so the result ``[n, length]`` starts with it. A list of
    prompts (texts or id lists, of any lengths) gives one row each (``n`` must be 1 or their
    number); shorter rows are left padded (see the module notes).
    ``length`` -- the canvas of every row, prompt included (default 64), or
    ``max_new_tokens`` -- the canvas after each prompt (then the canvas is the longest prompt
    plus ``max_new_tokens`` and blocks tile each row's generated part, as in LLaDA).
    ``steps`` -- sampler steps (default: one per generated token); see each sampler's rule in
    :data:`~reverie.discrete.SAMPLERS`. ``sampler`` -- a name from ``SAMPLERS`` or a
    :class:`TokenSampler`. ``block_length`` -- semi-autoregressive blocks tiling the canvas
    (must divide ``length``, or ``max_new_tokens``); steps are shared evenly between the blocks
    that hold generated positions. ``temperature`` -- of the categorical draws (0: argmax).
    ``generator`` -- one ``torch.Generator`` or one per row (then row ``k`` depends on
    ``generator[k]`` only, whatever the other rows of the batch).
    ``guidance_scale`` -- classifier-free guidance on the prompt
    (:class:`~reverie.discrete.TokenClassifierFreeGuidance`; 1 = none).
    ``constraint`` -- a :class:`~reverie.discrete.constraints.Grammar` (context-free, Lark
    EBNF; sound token by token, see :mod:`reverie.discrete.constraints.grammar`), or a
    :class:`~reverie.discrete.constraints.Regex` /
    :class:`~reverie.discrete.constraints.JsonSchema` (or a ``TokenAutomaton``) the generated
    text (after the prompt) must full-match, decoded with DINGO (``constraint_method="dingo"``)
    or the per-token masking baseline (``"per_token"``); ``JsonSchema(..., scaffold=True)``
    first writes the schema's skeleton into the canvas and decodes only the values (S3);
    ``steps`` then defaults to the number of value positions. A list gives one constraint
    per row (any of these, or ``None``; rows sharing an object are decoded together); with one
    generator per row each row equals itself generated alone. See docs/constraints.md.
    ``eos_id`` -- a row ends at its first ``eos_id`` once every position before it is decided
    (:func:`end_token_id` gives the model's); it leaves the batch and its later positions are
    ``eos_id``. ``stop`` -- a string or strings: a row ends where its committed text first
    holds one; the text is cut before it (``GenerationOutput.texts``, the stream) and the
    tokens from the first one that reaches into it are padding. ``stream`` -- return an
    iterator of :class:`Piece` (committed text as it grows, per row; their concatenation is the
    row's text). ``chat`` -- apply the tokenizer's chat template to the prompt(s).
    ``options`` -- sampler options (e.g. ``threshold`` for ``threshold``/``adablock``).
    ``cache`` -- ``None``, ``"prefix"`` or ``"dual"``: KV caches (:mod:`reverie.discrete.cache`;
    exact on block-causal models, Fast-dLLM's approximate ones on bidirectional models).
    ``cancel`` -- called before every model call; when it returns true, generation stops with
    :class:`Cancelled` (a server whose clients all left).
    ``distributed`` -- shard the rows over the ``torch.distributed`` process group (one
    generator per row needed) and gather them on every rank: the same result as one process
    (:func:`reverie.distributed.generate`).
    Returns ``LongTensor[n, length]`` (or a :class:`GenerationOutput` with ``return_stats``).
    """
    if distributed:  # every argument, as given, to the sharded form (reverie.distributed)
        args = dict(locals())  # the parameters: nothing else is bound yet
        args.update(args.pop("options"))
        del args["distributed"]
        from reverie import distributed as _dist

        return _dist.generate(generate, args, _prompt_rows(model, prompt, n, bool(chat)),
                              _fill_id(model), GenerationOutput)
    # --- block diffusion and KV caches (reverie.discrete.block / cache) ---
    if hasattr(model, "generate_canvases"):  # a model with its own canvas loop (DiffusionGemma)
        if constraint is not None or guidance_scale != 1.0 or temperature != 1.0:
            raise ValueError(
                f"{type(model).__name__} takes no constraint, guidance_scale or temperature "
                "(its sampler has its own temperature schedule: t_min=, t_max=)"
            )
        unsupported = {"stop": stop, "stream": stream or None, "chat": chat or None}
        given = [k for k, v in unsupported.items() if v is not None]
        if given:
            raise ValueError(f"{type(model).__name__} does not take {', '.join(given)} yet")
        if max_new_tokens is not None:
            if length is not None:
                raise ValueError("pass length or max_new_tokens, not both")
            length = model.prompt_length(prompt) + integer("max_new_tokens", max_new_tokens, 1)
        return model.generate_canvases(
            prompt, 64 if length is None else length, steps, sampler, block_length, n,
            generator, cache=cache, return_stats=return_stats, eos_id=eos_id, **options,
        )
    block_length = _check_cache(model, cache, block_length, sampler, guidance_scale)
    # --- end ---
    info = _resolve_sampler(sampler)
    if not isinstance(model, TokenDenoiserBase):
        raise TypeError(
            "model must be a token denoiser, e.g. reverie.discrete.TokenDenoiser(fn, mask_id=..., "
            f"vocab_size=...), got {type(model).__name__}"
        )
    kind = model.process.kind
    if kind not in info.processes:
        raise ValueError(
            f"sampler {info.name!r} works with {' / '.join(info.processes)} diffusion, but the "
            f"model's process is {type(model.process).__name__}"
        )
    if kind == "masked" and model.mask_id is None:
        raise ValueError(
            "masked-diffusion sampling needs a mask token, but the model has mask_id=None"
        )
    n = integer("n", n, 1)
    if (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not temperature >= 0
    ):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    check_options("sampler", info.name, options, info.options)
    opts = {**info.options, **options}
    info.blocks.defaults(opts, model)
    stops = _stops(stop)
    if info.revises and (constraint is not None or eos_id is not None or stops or stream):
        raise ValueError(f"sampler {info.name!r} changes decided tokens: it cannot take a "
                         "constraint, eos_id, stop or stream=True (a decided prefix is not final)")
    if eos_id is not None:
        eos_id = integer("eos_id", eos_id, 0)
        if eos_id >= model.vocab_size or eos_id == model.mask_id:
            raise ValueError(
                f"eos_id must be a token id in [0, {model.vocab_size}) other than the mask, "
                f"got {eos_id}"
            )
    if stream and return_stats:
        raise ValueError("stream=True returns the text pieces; return_stats needs stream=False")
    if (stops or stream) and getattr(model, "tokenizer", None) is None:
        raise ValueError("stop strings and streaming decode text: the model needs a tokenizer")
    device = torch.device(getattr(model, "device", "cpu"))
    prompts = _prompt_rows(model, prompt, n, bool(chat))
    n = len(prompts)
    check_generator(generator, n)
    plens = torch.tensor([len(p) for p in prompts])
    # each row's canvas: `length` (prompt included) or its prompt + max_new_tokens
    if max_new_tokens is not None:
        if length is not None:
            raise ValueError("pass length= (canvas with the prompt) or max_new_tokens=, not both")
        max_new_tokens = integer("max_new_tokens", max_new_tokens, 1)
        rows_len = plens + max_new_tokens
    else:
        length = 64 if length is None else integer("length", length, 1)
        if int(plens.max()) > length:
            raise ValueError(
                f"the prompt has {int(plens.max())} tokens, longer than length={length}"
            )
        rows_len = torch.full_like(plens, length)
    width = int(rows_len.max())
    limit = getattr(model, "length", None)  # tiny-json's canvas; a transformers model's limit
    if limit is None:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and width > limit:
        raise ValueError(
            f"the canvas needs {width} tokens (longest prompt {int(plens.max())} + "
            f"{width - int(plens.max())}), more than this model's length {limit}"
        )
    pad = width - rows_len  # left padding per row
    gen_start = pad + plens  # first generated column per row
    ragged = bool((plens != plens[0]).any())
    if kind == "uniform" and bool(plens.any()):
        raise ValueError(
            "prompts need a masked-diffusion model (the uniform process has no clean positions)"
        )
    if ragged and guidance_scale != 1.0:
        raise ValueError("classifier-free guidance needs prompts of one length (not yet ragged)")
    if bool(pad.any()) and info.nfe_per_step > 1:
        raise ValueError(
            f"sampler {info.name!r} makes {info.nfe_per_step} model calls per step and cannot "
            "pass left padding on yet; use prompts of one length or a one-call sampler"
        )
    if block_length is not None:
        block_length = integer("block_length", block_length, 1)
        if max_new_tokens is None and length % block_length:
            raise ValueError(f"block_length={block_length} must divide length={length}")
        if max_new_tokens is not None and max_new_tokens % block_length:
            raise ValueError(
                f"block_length={block_length} must divide max_new_tokens={max_new_tokens}"
            )
        if kind == "uniform":
            raise ValueError("semi-autoregressive blocks need a masked-diffusion model")
    block_length, fixed_bl = info.blocks.tile(block_length, width)
    # blocks tile each row from its origin: its first column, or its first generated one
    origin = gen_start if max_new_tokens is not None else pad
    cols = torch.arange(width)
    free = cols >= gen_start[:, None]  # positions to decode, minus a constraint's skeleton
    n_gens = (rows_len - plens).tolist()
    if constraint is not None or isinstance(info.blocks, AdaptiveBlocks):
        if len(set(n_gens)) > 1:
            raise ValueError(
                "constraints and adaptive blocks need the same number of new tokens in every "
                "row: pass max_new_tokens= for prompts of different lengths"
            )
    templates = None
    if constraint is not None:  # built and checked before any model call
        info, templates = _constrained(info, model, constraint, constraint_method, n, n_gens[0])
        for r, t in enumerate(templates):
            if t is not None:  # a scaffold's skeleton is not decoded
                free[r, width - n_gens[0] :] &= t == model.mask_id
    n_free = free.sum(-1).tolist()
    if steps is None and kind == "uniform":
        raise ValueError("uniform-noise sampling needs steps=")
    if steps is not None:
        steps = integer("steps", steps)
    # steps per fixed block of each row: share the row's steps between its generated blocks
    plans: dict[tuple[int, ...], dict[int, int]] = {}
    per_block, row_steps = [], []
    for r in range(n):
        o, k = int(origin[r]), n_free[r]
        key = (o, int(rows_len[r]), *free[r].nonzero().squeeze(-1).tolist())
        st = max(k, 1) if steps is None else steps
        if key not in plans:
            gen_blocks = [b for b in range(o, width, fixed_bl)
                          if bool(free[r, b : b + fixed_bl].any())]
            _check_steps(info, st, k, info.blocks.n_blocks(gen_blocks), int(rows_len[r]))
            nb = max(len(gen_blocks), 1)
            plans[key] = {b: st // nb + (i < st % nb) for i, b in enumerate(gen_blocks)}
        per_block.append(plans[key])
        row_steps.append(st)
    if guidance_scale != 1.0:
        model = TokenClassifierFreeGuidance(model, guidance_scale, int(gen_start[0]))

    run = _Run(model, info, opts, float(temperature), n, width, generator, device,
               pad.to(device) if bool(pad.any()) else None)
    x = torch.full((n, width), model.mask_id if kind == "masked" else 0, dtype=torch.long)
    fill = _fill_id(model)
    for r, p in enumerate(prompts):
        x[r, : int(pad[r])] = fill
        x[r, int(pad[r]) : int(gen_start[r])] = p
    for r, t in enumerate(templates or []):
        if t is not None:
            x[r, width - n_gens[0] :] = t
    track = eos_id is not None or bool(stops) or stream  # check row ends at every step
    texts = getattr(model, "tokenizer", None) is not None and (track or return_stats)
    run.ends = _Ends(model, gen_start.to(device), eos_id, stops, track, texts)
    run.cancel = cancel
    run.origin = origin.to(device)
    run.free = free.to(device)
    if cache is not None:  # the cache stands in for the model (reverie.discrete.cache)
        from reverie.discrete.cache import make_cache

        run.cached = make_cache(cache, model, n, width, fixed_bl, run.pad, origin)
    x = x.to(device)
    if kind == "masked":
        bar = progress_bar(sum(n_free), progress, info.name, unit="tok")
        one = per_block[0] if all(d is per_block[0] for d in per_block) else per_block
        loop = run.masked(x, fixed_bl, one, block_length, row_steps[0], max(n_free), bar)
    else:
        bar = progress_bar(n * steps, progress, info.name, unit="tok")
        loop = run.uniform_noise(x, steps, bar)
    pieces = _pieces(loop, bar)
    if stream:
        return pieces
    for _ in pieces:
        pass
    if return_stats:
        return GenerationOutput(run.x, run.cached.nfe, run.cached.row_evals, run.iters,
                                run.ends.texts())
    return run.x


def _pieces(loop: Iterator[list[Piece]], bar: Any) -> Iterator[Piece]:
    """The pieces each step of ``loop`` commits, one by one; closes the progress bar."""
    try:
        for step in loop:
            yield from step
    finally:
        bar.close()


class _Run:
    """One call of :func:`generate`: the canvas loop for masked and for uniform-noise models.
    The loops are generators: after every step they yield the text pieces it committed."""

    def __init__(self, model, info, opts, temperature, n, length, generator, device, pad=None):
        self.model = model
        self.info = info
        self.opts = opts
        self.temperature = temperature
        self.n = n
        self.length = length
        self.generator = generator
        self.device = device
        self.pad = pad  # left padding per row (None: no row is padded)
        self.cached = _CachedModel(model, pad)
        self.positions = torch.arange(length, device=device)
        self.carry: Any = None
        self.cancel: Callable[[], bool] | None = None
        self.iters = 0
        self.origin = torch.zeros(n, dtype=torch.long, device=device)  # where blocks tile from
        self.ends: _Ends | None = None
        self.x: Tensor | None = None  # the canvas, once the loop has run
        self.free: Tensor | None = None  # the positions generation decides [n, L]

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("generation was cancelled")

    def draw(self, *shape: int) -> Tensor:
        return self.draw_rows(None, *shape)

    def draw_rows(self, which: Tensor | None, *shape: int) -> Tensor:
        """``U[0, 1)`` ``[rows, L, *shape]`` for the rows ``which`` (``None``: all). With one
        generator per row only those rows' generators advance; with one generator all rows
        are drawn (the rows share its stream anyway) and ``which`` is selected."""
        if not isinstance(self.generator, (list, tuple)):
            u = uniform((self.n, self.length, *shape), self.generator, device=self.device)
            return u if which is None else u[which]
        idx = range(self.n) if which is None else which.tolist()
        gens = [self.generator[r] for r in idx]
        if self.pad is None:
            return uniform((len(gens), self.length, *shape), gens, device=self.device)
        # one generator per row: each row draws in its own coordinates (as alone), and its
        # padding repeats its first draw (so per-row scalars read at column 0 are its own)
        rows = []
        for g, p in zip(gens, [int(self.pad[r]) for r in idx]):
            u = torch.rand((self.length - p, *shape), generator=g, dtype=torch.float64,
                           device=g.device)
            rows.append(torch.cat([u[:1].expand(p, *shape), u]).to(self.device))
        return torch.stack(rows)

    def step(self, x, rows: _Rows, t, s, logp, active, need, new_block, decided=None) -> Tensor:
        """Build the context, ask the decision function, write the commit (and its
        revisions of decided tokens, for samplers that revise)."""
        count = _counts(self.model.process, rows, active, s)
        ctx = StepContext(
            x=x,
            logp=logp,
            t=t,
            s=s,
            active=active,
            block_start=rows.lo.clone(),
            block_end=rows.hi.clone(),
            step=rows.step.clone(),
            steps=rows.steps.clone(),
            new_block=new_block,
            count=count,
            temperature=self.temperature,
            options=self.opts,
            model=self.cached.raw,
            uniform=self.draw,
            uniform_rows=self.draw_rows,
            process=self.model.process,
            mask_id=self.model.mask_id,
            denoiser=self.model,
            carry=self.carry,
            decided=decided,
        )
        commit = self.info.decide(ctx)
        self.carry = commit.carry
        self.iters += 1
        out = torch.where(commit.positions & active, commit.tokens, x)
        if commit.revise is None or decided is None:
            return out
        if not self.info.revises:
            raise RuntimeError(f"sampler {self.info.name!r} revised decided tokens but is not "
                               "registered with revises=True")
        # masking again is not allowed on a block's last step (s = 0): the block must finish
        ok = decided & ((commit.tokens != self.model.mask_id) | (s > 0)[:, None])
        return torch.where(commit.revise & ok, commit.tokens, out)

    def masked(self, x, fixed_bl, per_block, block_length, steps, n_gen, bar):
        mask_id, pos, ends = self.model.mask_id, self.positions, self.ends
        rows = _Rows(self.n, self.device)
        rows.origin = self.origin
        while True:
            masked = x == mask_id
            need = masked.any(-1) & ~ends.done
            if not bool(need.any()):
                break
            in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
            new_block = need & ~(masked & in_block).any(-1)
            if bool(new_block.any()):
                # rows whose block is done move to the block holding their first masked position
                first = torch.where(masked, pos, self.length).min(-1).values
                self.info.blocks.start(rows, new_block, first, fixed_bl, per_block, self.length)
                rows.step = torch.where(new_block, torch.zeros_like(rows.step), rows.step)
                in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
                rows.start_masked = torch.where(
                    new_block, (masked & in_block).sum(-1), rows.start_masked
                )
            t, s = self.info.clock(self.model.process, rows, masked & in_block, self.draw,
                                   new_block)
            self.check_cancel()
            logp = self.cached(x, t, need)
            if self.info.blocks.plan(rows, new_block, logp, x, mask_id, self.opts, block_length,
                                     n_gen, steps, self.length):
                in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
                rows.start_masked = torch.where(
                    new_block, (masked & in_block).sum(-1), rows.start_masked
                )
                t, s = grid_times(rows)
            active = masked & in_block & need[:, None]
            decided = ~masked & in_block & self.free & need[:, None] if self.info.revises else None
            x = self.step(x, rows, t, s, logp, active, need, new_block, decided)
            left = (x == mask_id) & in_block
            if bool(((s == 0) & need & left.any(-1)).any()):
                raise RuntimeError(
                    f"sampler {self.info.name!r} left masked positions on a block's last step; "
                    "its decision function must commit every active position when s == 0"
                )
            bar.update(int((active & ~left).sum()))
            rows.step = rows.step + need.long()
            if ends.track:
                yield ends.update(x, need)
        self.x, pieces = ends.finish(x)
        yield pieces

    def uniform_noise(self, x, steps, bar):
        n, length, v = self.n, self.length, self.model.vocab_size
        x = (self.draw() * v).long().clamp_max(v - 1)  # x_1 ~ uniform: the process's prior
        rows = _Rows(n, self.device)
        rows.hi[:] = length
        rows.steps[:] = steps
        need = torch.ones(n, dtype=torch.bool, device=self.device)
        active = torch.ones(n, length, dtype=torch.bool, device=self.device)
        for j in range(steps):
            rows.step[:] = j
            t, s = grid_times(rows)
            self.check_cancel()
            logp = self.cached(x, t, need)
            x = self.step(x, rows, t, s, logp, active, need, need & (j == 0))
            bar.update(n)
        self.x, pieces = self.ends.finish(x)  # nothing is committed before the last step
        yield pieces


class _Rows:
    """Per-row block and step bookkeeping."""

    def __init__(self, n: int, device: torch.device):
        z = torch.zeros(n, dtype=torch.long, device=device)
        self.lo = z.clone()
        self.hi = z.clone()  # an empty block: every row starts a block at the first step
        self.step = z.clone()
        self.steps = torch.ones_like(z)
        self.start_masked = z.clone()
        self.time = torch.ones(n, dtype=torch.float64, device=device)
        self.origin = z.clone()  # the column each row's fixed blocks tile from


def _constrained(info: TokenSampler, model: Any, constraint: Any, method: str, n: int,
                 n_gen: int) -> tuple[TokenSampler, list[Tensor | None]]:
    """``info`` restricted by ``constraint`` -- one for every row, or a list with one per row
    (``None``: unconstrained; rows given the same object are decoded together) -- over the
    ``n_gen`` generated positions, and each row's scaffold template (``None``: none). Every
    constraint is compiled and checked here, before any model call."""
    from reverie.discrete.constraints.sampler import (
        constrain_rows,
        prepare_constraint,
        regular_plan,
    )

    per_row = isinstance(constraint, (list, tuple))
    if per_row and len(constraint) != n:
        raise ValueError(f"constraint: a list needs one per row ({n}), got {len(constraint)}")
    plans: dict[int, Any] = {}
    for c in constraint if per_row else [constraint]:
        if c is None or id(c) in plans:
            continue
        if isinstance(c, Grammar):  # context-free: the inside-outside chart
            if getattr(model.process, "kind", None) != "masked":
                raise ValueError("grammar constraints need a masked-diffusion model")
            plans[id(c)] = grammar_plan(c.check_length(model, n_gen), n_gen)
        else:
            plans[id(c)] = regular_plan(prepare_constraint(model, c, n_gen), method)
    rows = [plans.get(id(c)) if c is not None else None
            for c in (constraint if per_row else [constraint] * n)]
    return constrain_rows(info, rows), [p.template if p is not None else None for p in rows]


def _check_cache(model, cache, block_length, sampler, guidance_scale) -> int | None:
    """Checks of ``cache=`` and of a block-causal model's block length; returns the block
    length (a block-causal model's defaults to its block size)."""
    from reverie.discrete.block import BlockCausalLM

    if cache is not None and cache not in ("prefix", "dual"):
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
    if isinstance(model, BlockCausalLM):
        block_length = model.block_size if block_length is None else block_length
        if not isinstance(block_length, int) or block_length % model.block_size:
            raise ValueError(
                f"block_length must be a multiple of the model's block size "
                f"({model.block_size}), got {block_length!r}"
            )
    if cache is not None:
        info = _resolve_sampler(sampler)
        if getattr(getattr(model, "process", None), "kind", None) != "masked":
            raise ValueError(f"cache={cache!r} needs a masked-diffusion model")
        if info.blocks.name != "fixed":
            raise ValueError(f"cache={cache!r} needs fixed blocks; sampler {info.name!r} "
                             "chooses its own")
        if guidance_scale != 1.0:
            raise ValueError(f"cache={cache!r} does not support guidance_scale != 1 yet")
    return block_length


def _check_steps(info: TokenSampler, steps: int, n_gen: int, n_blocks: int, length: int) -> None:
    """Steps out of range are an error (see :class:`TokenSampler` ``steps_rule``)."""
    if info.steps_rule == "tokens":
        if n_gen and steps not in (n_gen, length):
            raise ValueError(
                f"sampler {info.name!r} unmasks exactly one token per step: steps must equal the "
                f"number of generated tokens ({n_gen}; or length={length}), got {steps}"
            )
        return
    if steps < max(1, n_blocks):
        raise ValueError(
            f"steps must be at least the number of blocks to decode ({max(1, n_blocks)}), "
            f"got {steps}"
        )
    if info.steps_rule == "at_most_tokens" and n_gen and steps > n_gen:
        raise ValueError(
            f"sampler {info.name!r} commits at least one token per step: steps must be between "
            f"{max(1, n_blocks)} and the number of generated tokens ({n_gen}), got {steps}"
        )


def _counts(process, state: _Rows, active: Tensor, s: Tensor) -> Tensor:
    """Tokens to commit now: the schedule's share ``round(N alpha(s))`` of the block's
    ``N`` tokens, minus those already committed in the block (LLaDA's
    ``get_num_transfer_tokens`` for the linear schedule, any schedule here)."""
    target = torch.round(state.start_masked.double() * process.alpha(s)).long()
    done = state.start_masked - active.sum(-1)
    k = (target - done).clamp_min(0)
    return torch.where(s == 0, active.sum(-1), torch.minimum(k, active.sum(-1)))


class _Ends:
    """Where each row's output ends, checked on its *committed prefix* (the generated
    positions before its first masked one): the first ``eos_id`` in it, or the first stop
    string in its text; a row that ended leaves the batch. Also the streamed pieces: committed
    text as it grows, holding back a tail that may begin a stop string (or an incomplete
    character) until it is decided."""

    def __init__(self, model, start: Tensor, eos_id: int | None, stops: list[str], track: bool,
                 decode: bool):
        self.model = model
        self.start = start  # first generated column per row
        self.eos_id = eos_id
        self.stops = stops
        self.track = track  # check at every step (EOS, stop strings or streaming asked for)
        self.decode = decode  # whether to decode text (needs a tokenizer)
        # what replaces the tokens a stop string cut: EOS, else padding, else the mask
        pad = _pad_id(model)
        self.fill = eos_id if eos_id is not None else pad if pad is not None else model.mask_id
        n = start.shape[0]
        self.done = torch.zeros(n, dtype=torch.bool, device=start.device)
        self.cut: dict[int, tuple[int, int]] = {}  # row -> (column its output ends at, fill id)
        self.text = [""] * n
        self.sent = [0] * n  # characters of the text already streamed
        self.seen = start.tolist()  # committed prefix end already examined

    def committed(self, x: Tensor) -> list[int]:
        """Per row, the column its committed prefix ends at (its first masked generated one)."""
        width = x.shape[1]
        pos = torch.arange(width, device=x.device)
        pending = (x == self.model.mask_id) & (pos >= self.start[:, None])
        return torch.where(pending, pos, width).min(-1).values.tolist()

    def update(self, x: Tensor, rows: Tensor, final: bool = False) -> list[Piece]:
        """Examine the committed prefixes of ``rows`` (bool ``[n]``) that grew; returns the
        new pieces. ``final``: the canvas is complete, every examined row ends."""
        upto = self.committed(x)
        pieces = []
        for r in rows.nonzero().squeeze(-1).tolist():
            if upto[r] <= self.seen[r] and not final:
                continue
            self.seen[r] = upto[r]
            a = int(self.start[r])
            seg = x[r, a : upto[r]].tolist()
            end = (x.shape[1], 0) if final else None  # (column the output ends at, fill id)
            if self.eos_id is not None and self.eos_id in seg:
                k = seg.index(self.eos_id)
                seg, end = seg[:k], (a + k + 1, self.eos_id)
            text = self.model.decode(seg) if self.decode else ""
            # a tail of the text that may begin a stop string (and characters a later token
            # may complete) is not final until the text ends or grows past it
            hold = len(text)
            if end is None:
                hold -= max((k for st in self.stops for k in range(1, len(st))
                             if text.endswith(st[:k])), default=0)
                while hold > self.sent[r] and text[hold - 1] == "\ufffd":
                    hold -= 1
            hit = min((i for i in (text.find(st) for st in self.stops) if i >= 0), default=-1)
            if 0 <= hit <= hold:  # the first stop string: no other can start before it
                text, hold = text[:hit], hit
                end = (a + _tokens_within(self.model, seg, text), self.fill)
            if hold > self.sent[r]:
                pieces.append(Piece(text[self.sent[r] : hold], r))
                self.sent[r] = hold
            self.text[r] = text
            if end is not None:
                self.done[r] = True
                self.cut[r] = end
        return pieces

    def finish(self, x: Tensor) -> tuple[Tensor, list[Piece]]:
        """The final canvas (rows that ended early: their later positions filled) and the
        last pieces."""
        pieces = self.update(x, ~self.done, final=True) if self.track or self.decode else []
        x = x.clone()
        for r, (col, fill) in self.cut.items():
            if col < x.shape[1]:
                x[r, col:] = fill
        return x, pieces

    def texts(self) -> list[str] | None:
        """Each row's generated text (``None`` without a tokenizer)."""
        return list(self.text) if self.decode else None


def _tokens_within(model, seg: list[int], text: str) -> int:
    """How many leading tokens of ``seg`` decode within ``text`` (a prefix of its text)."""
    k = 0
    while k < len(seg) and len(model.decode(seg[: k + 1])) <= len(text):
        k += 1
    return k

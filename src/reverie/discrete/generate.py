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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, integer
from reverie._progress import progress_bar
from reverie._random import Generators
from reverie.discrete._sampling import check_generator, uniform
from reverie.discrete.denoiser import TokenClassifierFreeGuidance, TokenDenoiserBase
from reverie.discrete.policies import grid_times
from reverie.discrete.samplers import SAMPLERS, Commit, StepContext, TokenSampler

__all__ = [
    "Commit",
    "StepContext",
    "TokenSampler",
    "GenerationOutput",
    "generate",
]


@dataclass(frozen=True)
class GenerationOutput:
    """``tokens`` ``[n, length]``; ``nfe`` -- batched model calls; ``row_evals`` -- rows the
    network actually processed (the cache skips unchanged rows); ``steps`` -- loop iterations."""

    tokens: Tensor
    nfe: int
    row_evals: int
    steps: int


# ---------------------------------------------------------------------------------------------
# The cached model
# ---------------------------------------------------------------------------------------------


class _CachedModel:
    """Calls the denoiser on the rows that need it. A model that is not time conditioned
    depends only on ``x``, so rows whose input did not change since their last evaluation
    reuse it (MDLM's ``ddpm_cache``)."""

    def __init__(self, denoiser: TokenDenoiserBase):
        self.denoiser = denoiser
        self.cache_ok = not denoiser.time_conditioned
        self.last_x: Tensor | None = None
        self.last_logp: Tensor | None = None
        self.nfe = 0
        self.row_evals = 0

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """Uncached call (for intermediate states of multi-stage samplers)."""
        out = self.denoiser(x, t.float())
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
        out = self.raw(x[idx], t[idx])
        if self.last_logp is None:
            self.last_logp = torch.zeros(
                x.shape[0], *out.shape[1:], dtype=out.dtype, device=out.device
            )
            self.last_x = torch.full_like(x, -1)
        self.last_logp[idx] = out
        self.last_x[idx] = x[idx]
        return self.last_logp


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _resolve_sampler(sampler: str | TokenSampler) -> TokenSampler:
    if isinstance(sampler, TokenSampler):
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a name or a TokenSampler, got {type(sampler).__name__}")
    return SAMPLERS[sampler]


def _prompt_tensor(
    model: TokenDenoiserBase, prompt: Any, n: int, length: int, device: torch.device
) -> Tensor:
    if prompt is None:
        return torch.zeros(n, 0, dtype=torch.long, device=device)
    if isinstance(prompt, str):
        prompt = model.encode(prompt)
    p = torch.as_tensor(prompt) if not isinstance(prompt, Tensor) else prompt
    if p.numel() and (p.is_floating_point() or p.is_complex() or p.dtype == torch.bool):
        raise TypeError(f"prompt must hold integer token ids, got {p.dtype}")
    p = p.long()
    if p.ndim == 1:
        p = p.unsqueeze(0)
    if p.ndim != 2 or p.shape[0] not in (1, n):
        raise ValueError(
            f"prompt must be a string or token ids [P], [1, P] or [n={n}, P], "
            f"got shape {tuple(p.shape)}"
        )
    if p.shape[1] > length:
        raise ValueError(f"the prompt has {p.shape[1]} tokens, longer than length={length}")
    if p.numel():
        v = model.vocab_size
        if int(p.min()) < 0 or int(p.max()) >= v:
            raise ValueError(
                f"prompt token ids must lie in [0, {v}), got [{int(p.min())}, {int(p.max())}]"
            )
        if model.mask_id is not None and bool((p == model.mask_id).any()):
            raise ValueError(f"the prompt contains the mask token (id {model.mask_id})")
    return p.expand(n, -1).clone().to(device)


def generate(
    model: TokenDenoiserBase,
    prompt: str | Sequence[int] | Tensor | None = None,
    length: int = 64,
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
    cache: str | None = None,
    **options: Any,
) -> Tensor | GenerationOutput:
    """Sample ``n`` sequences of ``length`` tokens from a masked-diffusion language model.

    ``model`` -- a :class:`~reverie.discrete.TokenDenoiser` (or any token denoiser).
    ``prompt`` -- text (needs the model's tokenizer) or token ids; it fills the first positions
    of the canvas and is kept fixed, so the result ``[n, length]`` starts with it.
    ``steps`` -- sampler steps (default: one per generated token); see each sampler's rule in
    :data:`~reverie.discrete.SAMPLERS`. ``sampler`` -- a name from ``SAMPLERS`` or a
    :class:`TokenSampler`. ``block_length`` -- semi-autoregressive blocks tiling the canvas
    (must divide ``length``); steps are shared evenly between the blocks that hold generated
    positions. ``temperature`` -- of the categorical draws (0: argmax). ``generator`` -- one
    ``torch.Generator`` or one per sample (then sample ``k`` depends on ``generator[k]`` only).
    ``guidance_scale`` -- classifier-free guidance on the prompt
    (:class:`~reverie.discrete.TokenClassifierFreeGuidance`; 1 = none).
    ``constraint`` -- a :class:`~reverie.discrete.constraints.Regex` /
    :class:`~reverie.discrete.constraints.JsonSchema` (or a ``TokenAutomaton``) the generated
    text (after the prompt) must full-match, decoded with DINGO (``constraint_method="dingo"``)
    or the per-token masking baseline (``"per_token"``); ``JsonSchema(..., scaffold=True)``
    first writes the schema's skeleton into the canvas and decodes only the values (S3);
    ``steps`` then defaults to the number of value positions. See docs/constraints.md.
    ``options`` -- sampler options (e.g. ``threshold`` for ``threshold``/``adablock``).
    ``cache`` -- ``None``, ``"prefix"`` or ``"dual"``: KV caches (:mod:`reverie.discrete.cache`;
    exact on block-causal models, Fast-dLLM's approximate ones on bidirectional models).
    Returns ``LongTensor[n, length]`` (or a :class:`GenerationOutput` with ``return_stats``).
    """
    # --- block diffusion and KV caches (reverie.discrete.block / cache) ---
    if hasattr(model, "generate_canvases"):  # a model with its own canvas loop (DiffusionGemma)
        if constraint is not None or guidance_scale != 1.0 or temperature != 1.0:
            raise ValueError(
                f"{type(model).__name__} takes no constraint, guidance_scale or temperature "
                "(its sampler has its own temperature schedule: t_min=, t_max=)"
            )
        return model.generate_canvases(
            prompt, length, steps, sampler, block_length, n, generator, cache=cache,
            return_stats=return_stats, **options,
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
    length = integer("length", length, 1)
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
    check_generator(generator, n)
    device = torch.device(getattr(model, "device", "cpu"))
    prompt_t = _prompt_tensor(model, prompt, n, length, device)
    plen = prompt_t.shape[1]
    n_gen = length - plen
    if kind == "uniform" and plen:
        raise ValueError(
            "prompts need a masked-diffusion model (the uniform process has no clean positions)"
        )
    if block_length is not None:
        block_length = integer("block_length", block_length, 1)
        if length % block_length:
            raise ValueError(f"block_length={block_length} must divide length={length}")
        if kind == "uniform":
            raise ValueError("semi-autoregressive blocks need a masked-diffusion model")
    block_length, fixed_bl = info.blocks.tile(block_length, length)
    # positions to decode: after the prompt, minus a constraint's fixed skeleton (scaffold)
    free = torch.arange(length) >= plen
    layout = None
    if constraint is not None:  # built and checked before any model call
        from reverie.discrete.constraints.sampler import constrain_sampler, prepare_constraint

        layout = prepare_constraint(model, constraint, n_gen)
        info = constrain_sampler(info, layout, method=constraint_method)
        free[plen:] = ~layout.fixed
    n_free = int(free.sum())
    # steps per fixed block: share `steps` between the blocks that hold generated positions
    starts = list(range(0, length, fixed_bl))
    gen_blocks = [b for b in starts if bool(free[b : b + fixed_bl].any())]
    if steps is None:
        if kind == "uniform":
            raise ValueError("uniform-noise sampling needs steps=")
        steps = max(n_free, 1)
    steps = integer("steps", steps)
    _check_steps(info, steps, n_free, info.blocks.n_blocks(gen_blocks), length)
    if guidance_scale != 1.0:
        model = TokenClassifierFreeGuidance(model, guidance_scale, plen)

    if n_gen == 0:
        return GenerationOutput(prompt_t, 0, 0, 0) if return_stats else prompt_t
    run = _Run(model, info, opts, float(temperature), n, length, plen, generator, device)
    if layout is not None:
        run.template = layout.template.to(device)
    if cache is not None:  # the cache stands in for the model (reverie.discrete.cache)
        from reverie.discrete.cache import make_cache

        run.cached = make_cache(cache, model, n, length, fixed_bl)
    bar = progress_bar(n * (n_free if kind == "masked" else steps), progress, info.name, unit="tok")
    try:
        if kind == "masked":
            per_block = {
                b: steps // len(gen_blocks) + (i < steps % len(gen_blocks))
                for i, b in enumerate(gen_blocks)
            }
            x = run.masked(prompt_t, fixed_bl, per_block, block_length, steps, n_free, bar)
        else:
            x = run.uniform_noise(steps, bar)
    finally:
        bar.close()
    if return_stats:
        return GenerationOutput(x, run.cached.nfe, run.cached.row_evals, run.iters)
    return x


class _Run:
    """One call of :func:`generate`: the canvas loop for masked and for uniform-noise models."""

    def __init__(self, model, info, opts, temperature, n, length, plen, generator, device):
        self.model = model
        self.info = info
        self.opts = opts
        self.temperature = temperature
        self.n = n
        self.length = length
        self.plen = plen
        self.generator = generator
        self.device = device
        self.cached = _CachedModel(model)
        self.positions = torch.arange(length, device=device)
        self.carry: Any = None
        self.iters = 0
        self.template: Tensor | None = None  # fixed tokens after the prompt (a scaffold)

    def draw(self, *shape: int) -> Tensor:
        return uniform((self.n, self.length, *shape), self.generator, device=self.device)

    def step(self, x, rows: _Rows, t, s, logp, active, need, new_block) -> Tensor:
        """Build the context, ask the decision function, write the commit."""
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
            process=self.model.process,
            mask_id=self.model.mask_id,
            denoiser=self.model,
            carry=self.carry,
        )
        commit = self.info.decide(ctx)
        self.carry = commit.carry
        self.iters += 1
        return torch.where(commit.positions & active, commit.tokens, x)

    def masked(self, prompt, fixed_bl, per_block, block_length, steps, n_gen, bar) -> Tensor:
        n, length, mask_id, pos = self.n, self.length, self.model.mask_id, self.positions
        x = torch.full((n, length), mask_id, dtype=torch.long, device=self.device)
        x[:, : self.plen] = prompt
        if self.template is not None:
            x[:, self.plen :] = self.template
        rows = _Rows(n, self.device)
        while True:
            masked = x == mask_id
            need = masked.any(-1)
            if not bool(need.any()):
                return x
            in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
            new_block = need & ~(masked & in_block).any(-1)
            if bool(new_block.any()):
                # rows whose block is done move to the block holding their first masked position
                first = torch.where(masked, pos, length).min(-1).values
                self.info.blocks.start(rows, new_block, first, fixed_bl, per_block, length)
                rows.step = torch.where(new_block, torch.zeros_like(rows.step), rows.step)
                in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
                rows.start_masked = torch.where(
                    new_block, (masked & in_block).sum(-1), rows.start_masked
                )
            t, s = self.info.clock(self.model.process, rows, masked & in_block, self.draw,
                                   new_block)
            logp = self.cached(x, t, need)
            if self.info.blocks.plan(rows, new_block, logp, x, mask_id, self.opts, block_length,
                                     n_gen, steps, length):
                in_block = (pos >= rows.lo[:, None]) & (pos < rows.hi[:, None])
                rows.start_masked = torch.where(
                    new_block, (masked & in_block).sum(-1), rows.start_masked
                )
                t, s = grid_times(rows)
            active = masked & in_block & need[:, None]
            x = self.step(x, rows, t, s, logp, active, need, new_block)
            left = (x == mask_id) & in_block
            if bool(((s == 0) & need & left.any(-1)).any()):
                raise RuntimeError(
                    f"sampler {self.info.name!r} left masked positions on a block's last step; "
                    "its decision function must commit every active position when s == 0"
                )
            bar.update(int((active & ~left).sum()))
            rows.step = rows.step + need.long()

    def uniform_noise(self, steps, bar) -> Tensor:
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
            logp = self.cached(x, t, need)
            x = self.step(x, rows, t, s, logp, active, need, need & (j == 0))
            bar.update(n)
        return x


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

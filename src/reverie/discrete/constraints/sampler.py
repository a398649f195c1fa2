"""Constraints inside :func:`reverie.discrete.generate`: a token sampler whose decision
function is restricted to valid strings.

:func:`generate` asks a sampler's decision function, at every step, which masked positions to
commit and to which tokens. :func:`constrain_sampler` wraps it. The wrapped sampler still
picks the positions, e.g. its confidence ranking over the unconstrained distribution, as DINGO
does (Suresh et al. 2025, App. A, Alg. 2): the positions it leaves masked become the wildcard
positions of the block decoder. The tokens come from the block decoder instead: DINGO's
dynamic program at temperature 0, the exact restricted sampler otherwise, or the per-token
masking baseline. The automaton state at the start of the current block is carried from step
to step (DINGO App. D) in ``Commit.carry``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from reverie.discrete.constraints.automaton import TokenAutomaton
from reverie.discrete.constraints.constraint import DECODERS, Constraint, _force
from reverie.discrete.constraints.decode import best_block, per_token_block, sample_block

__all__ = ["constrain_sampler", "prepare_constraint"]


def prepare_constraint(model: Any, constraint: Any, n_generated: int) -> TokenAutomaton:
    """The automaton of ``constraint`` over ``model``'s vocabulary, checked to fit
    ``n_generated`` tokens: every error surfaces before the first model call.

    ``constraint`` is a :class:`Regex`, a :class:`JsonSchema` or a :class:`TokenAutomaton`;
    ``model`` a token denoiser with a ``tokenizer`` (see
    :meth:`~reverie.discrete.constraints.Vocabulary.coerce`)."""
    if isinstance(constraint, TokenAutomaton):
        automaton = constraint
    elif isinstance(constraint, Constraint):
        automaton = constraint.automaton(model)
    else:
        raise TypeError(
            "constraint must be a Regex, a JsonSchema or a TokenAutomaton, got "
            f"{type(constraint).__name__}"
        )
    vocab = getattr(model, "vocab_size", automaton.vocab_size)
    if automaton.vocab_size != vocab:
        raise ValueError(
            f"the constraint's automaton covers {automaton.vocab_size} token ids but the model "
            f"predicts {vocab}"
        )
    if getattr(getattr(model, "process", None), "kind", "masked") != "masked":
        raise ValueError("constraints need a masked-diffusion model")
    automaton.check_length(n_generated)
    return automaton


@dataclasses.dataclass
class _Carry:
    inner: Any  # the wrapped sampler's own carry
    start: Tensor  # [n] first generated position (after the prompt)
    at: Tensor  # [n] the automaton state below is the one after x[start:at]
    state: Tensor  # [n] automaton state (-1: the per-token baseline hit a dead end)


def constrain_sampler(sampler: Any, automaton: TokenAutomaton, *, method: str = "dingo") -> Any:
    """``sampler`` (a :class:`~reverie.discrete.TokenSampler`) with its decisions restricted
    to the strings ``automaton`` accepts.

    ``method``: ``"dingo"`` gives each block its most probable valid completion at
    temperature 0 (:func:`best_block`) and an exact draw from the restricted distribution
    otherwise (:func:`sample_block`). ``"per_token"`` is the left-to-right masking baseline
    (:func:`per_token_block`); it may fail, and a failed row then continues unconstrained.
    """
    if method not in DECODERS:
        raise ValueError(f"unknown constraint method {method!r}; valid: {', '.join(DECODERS)}")
    if "masked" not in sampler.processes:
        raise ValueError(f"sampler {sampler.name!r} does not sample masked diffusion")
    inner = sampler.decide

    def decide(ctx: Any) -> Any:
        carry = ctx.carry
        if not isinstance(carry, _Carry):
            carry = _start(ctx, automaton)
        commit = inner(dataclasses.replace(ctx, carry=carry.inner))
        carry.inner = commit.carry
        tokens = _constrained_tokens(ctx, commit.positions & ctx.active, commit.tokens, carry,
                                     automaton, method)
        return dataclasses.replace(commit, tokens=tokens, carry=carry)

    return dataclasses.replace(
        sampler,
        decide=decide,
        description=f"{sampler.description} (constrained: {method})",
    )


def _start(ctx: Any, automaton: TokenAutomaton) -> _Carry:
    mask = ctx.x == ctx.mask_id
    start = mask.long().argmax(-1)  # the first masked position: where generation starts
    state = torch.full_like(start, automaton.start)
    return _Carry(inner=ctx.carry, start=start, at=start.clone(), state=state)


def _constrained_tokens(ctx: Any, commit: Tensor, proposed: Tensor, carry: _Carry,
                        automaton: TokenAutomaton, method: str) -> Tensor:
    """The committed tokens of every row, from the block decoder (``proposed``: the wrapped
    sampler's own tokens, kept for rows the per-token baseline has lost)."""
    n, length = ctx.x.shape
    out = ctx.x.clone()
    lo = torch.maximum(ctx.block_start, carry.start)
    hi = ctx.block_end
    # Advance each row's carried state to the start of its current block (all committed).
    for r in range(n):
        a, b = int(carry.at[r]), int(lo[r])
        if b > a:
            if bool((ctx.x[r, a:b] == ctx.mask_id).any()):
                raise RuntimeError("the constrained sampler expects blocks decoded left to right")
            carry.state[r : r + 1] = automaton.advance(carry.state[r : r + 1],
                                                       ctx.x[r : r + 1, a:b])
            carry.at[r] = b
    need = commit.any(-1)
    groups: dict[tuple[int, int], list[int]] = {}
    for r in need.nonzero().flatten().tolist():
        groups.setdefault((int(lo[r]), int(hi[r])), []).append(r)
    temperature = float(ctx.temperature)
    for (a, b), rows in groups.items():
        idx = torch.tensor(rows, device=ctx.x.device)
        free = carry.state[idx] < 0  # per-token baseline rows past a dead end
        lp = ctx.logp[idx, a:b].double()
        if temperature > 0:
            lp = lp / temperature
        lp = _force(lp, ctx.x[idx, a:b], ctx.mask_id)
        still = (ctx.x[idx, a:b] == ctx.mask_id) & ~commit[idx, a:b]
        tokens = proposed[idx, a:b].clone()  # rows past a dead end: unconstrained
        live = (~free).nonzero().flatten()
        if len(live):
            args = (lp[live], automaton, carry.state[idx[live]], still[live])
            if method == "dingo" and temperature == 0:
                got, _, _ = best_block(*args, remaining=length - b)
            elif method == "dingo":
                got, _, _ = sample_block(*args, remaining=length - b,
                                         generator=_row_generators(ctx, idx[live]))
            else:
                got, end, _ = per_token_block(*args, sample=temperature > 0,
                                              generator=_row_generators(ctx, idx[live]))
                carry.state[idx[live][end < 0]] = -1  # failed: unconstrained from now on
            tokens[live] = got
        block = commit[idx, a:b]
        out[idx, a:b] = torch.where(block, tokens, ctx.x[idx, a:b])
    return out


def _row_generators(ctx: Any, rows: Tensor) -> list[torch.Generator]:
    """One generator per row for the block decoder's draws, seeded from the run's own
    generator(s) through ``ctx.uniform``, so row ``k`` depends only on the generator that
    :func:`~reverie.discrete.generate` gave it."""
    seeds = (ctx.uniform(1)[:, 0, 0] * 2.0**62).long()
    return [torch.Generator(device=ctx.x.device).manual_seed(int(seeds[r])) for r in rows.tolist()]

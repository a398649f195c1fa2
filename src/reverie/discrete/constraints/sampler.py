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
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie.discrete.constraints.automaton import TokenAutomaton
from reverie.discrete.constraints.constraint import DECODERS, Constraint, _force
from reverie.discrete.constraints.decode import best_block, per_token_block, sample_block
from reverie.discrete.constraints.scaffold import Scaffold, single_slot

__all__ = ["Plan", "constrain_rows", "constrain_sampler", "prepare_constraint", "regular_plan"]


def prepare_constraint(model: Any, constraint: Any, n_generated: int) -> Scaffold:
    """The layout of ``constraint`` over the ``n_generated`` positions after the prompt:
    the automaton over ``model``'s vocabulary checked to fit them (one slot), or with
    ``JsonSchema(..., scaffold=True)`` the schema's skeleton and one slot per value. Every
    error surfaces here, before the first model call.

    ``constraint`` is a :class:`Regex`, a :class:`JsonSchema` or a :class:`TokenAutomaton`;
    ``model`` a token denoiser with a ``tokenizer`` (see
    :meth:`~reverie.discrete.constraints.Vocabulary.coerce`)."""
    if getattr(getattr(model, "process", None), "kind", "masked") != "masked":
        raise ValueError("constraints need a masked-diffusion model")
    if isinstance(constraint, TokenAutomaton):
        layout = single_slot(constraint, n_generated)
    elif isinstance(constraint, Constraint):
        layout = constraint.layout(model, n_generated, encode=_encoder(model))
    else:
        raise TypeError(
            "constraint must be a Regex, a JsonSchema or a TokenAutomaton, got "
            f"{type(constraint).__name__}"
        )
    for slot in layout.slots:
        vocab = getattr(model, "vocab_size", slot.automaton.vocab_size)
        if slot.automaton.vocab_size != vocab:
            raise ValueError(
                f"the constraint's automaton covers {slot.automaton.vocab_size} token ids but "
                f"the model predicts {vocab}"
            )
    return layout


def _encoder(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    return getattr(model, "encode", None) if tok is not None else None


@dataclasses.dataclass
class _Carry:
    """Per row and slot: slot bounds ``lo``/``hi`` (canvas positions) and the automaton state
    after ``x[lo:at]`` (-1: the per-token baseline hit a dead end)."""

    automata: list[TokenAutomaton]
    lo: Tensor  # [n, S]
    hi: Tensor  # [n, S]
    at: Tensor  # [n, S]
    state: Tensor  # [n, S]


def constrain_sampler(
    sampler: Any, constraint: TokenAutomaton | Scaffold, *, method: str = "dingo"
) -> Any:
    """``sampler`` (a :class:`~reverie.discrete.TokenSampler`) with its decisions restricted
    to valid strings.

    ``constraint``: a :class:`TokenAutomaton` (the generated text, from the first masked
    position to the end of the canvas, must be accepted) or a :class:`Scaffold` from
    :func:`prepare_constraint` (covering the last ``scaffold.length`` positions of the
    canvas; each slot is decoded under its own automaton).

    ``method``: ``"dingo"`` gives each block its most probable valid completion at
    temperature 0 (:func:`best_block`) and an exact draw from the restricted distribution
    otherwise (:func:`sample_block`). ``"per_token"`` is the left-to-right masking baseline
    (:func:`per_token_block`); it may fail, and a failed slot then continues unconstrained.
    """
    if not isinstance(constraint, (TokenAutomaton, Scaffold)):
        raise TypeError(
            f"constraint must be a TokenAutomaton or a Scaffold, got {type(constraint).__name__}"
        )
    return constrain_rows(sampler, regular_plan(constraint, method))


@dataclasses.dataclass(eq=False)
class Plan:
    """How one constraint decodes the generated positions: ``tokens(ctx, todo, proposed,
    state) -> (canvas, state)`` fills the positions ``todo`` of the canvas (``proposed``: the
    wrapped sampler's own tokens) for the rows of ``ctx``, carrying ``state`` between steps
    (``None`` at the first); ``template`` -- the skeleton a scaffold writes into the
    generated positions before decoding (``None``: only masks)."""

    tokens: Callable[..., tuple[Tensor, Any]]
    template: Tensor | None = None


def regular_plan(constraint: TokenAutomaton | Scaffold, method: str = "dingo") -> Plan:
    """The :class:`Plan` of a regular constraint (an automaton, or a scaffold's slots)."""
    if method not in DECODERS:
        raise ValueError(f"unknown constraint method {method!r}; valid: {', '.join(DECODERS)}")

    def tokens(ctx: Any, todo: Tensor, proposed: Tensor, state: Any) -> tuple[Tensor, Any]:
        state = _start(ctx, constraint) if state is None else state
        return _constrained_tokens(ctx, todo, proposed, state, method), state

    template = constraint.template if isinstance(constraint, Scaffold) else None
    return Plan(tokens, template)


@dataclasses.dataclass
class _RowsCarry:
    inner: Any  # the wrapped sampler's carry
    states: list[Any]  # one per group of rows


def constrain_rows(sampler: Any, plans: Plan | Sequence[Plan | None]) -> Any:
    """``sampler`` with each row decoded under its own constraint: ``plans`` -- one
    :class:`Plan` for every row, or one per row (``None``: that row is unconstrained). Rows
    sharing a plan object are decoded together. Per step, the wrapped sampler decides first;
    then two uniform draws per position are taken from each constrained row's generator
    (whatever its constraint), so with one generator per row a row's output does not depend on
    the rest of its batch."""
    if "masked" not in sampler.processes:
        raise ValueError(f"sampler {sampler.name!r} does not sample masked diffusion")
    inner = sampler.decide

    def decide(ctx: Any) -> Any:
        n = ctx.x.shape[0]
        per_row = [plans] * n if isinstance(plans, Plan) else list(plans)
        if len(per_row) != n:
            raise ValueError(f"{len(per_row)} constraints for {n} rows")
        groups: dict[int, tuple[Plan, list[int]]] = {}
        for r, plan in enumerate(per_row):
            if plan is not None:
                groups.setdefault(id(plan), (plan, []))[1].append(r)
        carry = ctx.carry
        if not isinstance(carry, _RowsCarry):
            carry = _RowsCarry(ctx.carry, [None] * len(groups))
        commit = inner(dataclasses.replace(ctx, carry=carry.inner))
        carry.inner = commit.carry
        # two draws per position for the constrained rows (only theirs, when each row has its
        # own generator: an unconstrained row draws as it would alone)
        mine = torch.tensor(sorted(r for _, rows in groups.values() for r in rows),
                            dtype=torch.long)
        draws = torch.zeros(n, ctx.x.shape[1], 2, dtype=torch.float64, device=ctx.x.device)
        if len(mine):
            draws[mine] = (ctx.uniform_rows(mine, 2) if ctx.uniform_rows is not None
                           else ctx.uniform(2)[mine])
        todo = commit.positions & ctx.active
        out = torch.where(todo, commit.tokens, ctx.x)
        for g, (plan, rows) in enumerate(groups.values()):
            idx = torch.tensor(rows, device=ctx.x.device)
            canvas, carry.states[g] = plan.tokens(_rows_of(ctx, idx, draws), todo[idx],
                                                  commit.tokens[idx], carry.states[g])
            out[idx] = torch.where(todo[idx], canvas, ctx.x[idx])
        return dataclasses.replace(commit, tokens=out, carry=carry)

    return dataclasses.replace(
        sampler, decide=decide, description=f"{sampler.description} (constrained)"
    )


def _rows_of(ctx: Any, rows: Tensor, draws: Tensor) -> Any:
    """``ctx`` restricted to ``rows``: per-row tensors indexed, ``uniform(*shape)`` served from
    the step's ``draws`` (``[n, L, 2]``: at most two numbers per position)."""
    n = ctx.x.shape[0]
    fields = {}
    for f in dataclasses.fields(ctx):
        v = getattr(ctx, f.name)
        if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n:
            fields[f.name] = v[rows]
    sub = draws[rows]

    def uniform(*shape: int) -> Tensor:
        k = math.prod(shape)
        if k > sub.shape[-1]:
            raise RuntimeError(f"a constraint asked for {k} draws per position; at most "
                               f"{sub.shape[-1]} are taken")
        return sub[..., :k].reshape(*sub.shape[:2], *shape)

    return dataclasses.replace(ctx, uniform=uniform, **fields)


def _start(ctx: Any, constraint: TokenAutomaton | Scaffold) -> _Carry:
    n, length = ctx.x.shape
    if isinstance(constraint, TokenAutomaton):
        # one slot from the first masked position (where generation starts) to the end
        lo = (ctx.x == ctx.mask_id).long().argmax(-1)[:, None]
        hi = torch.full_like(lo, length)
        automata = [constraint]
    else:
        offset = length - constraint.length  # the scaffold covers the end of the canvas
        if offset < 0:
            raise ValueError(f"the scaffold has {constraint.length} positions, the canvas {length}")
        bounds = torch.tensor([[s.start, s.end] for s in constraint.slots], dtype=torch.long,
                              device=ctx.x.device).reshape(-1, 2) + offset
        lo = bounds[:, 0].expand(n, -1).clone()
        hi = bounds[:, 1].expand(n, -1).clone()
        automata = [s.automaton for s in constraint.slots]
    state = torch.tensor([a.start for a in automata], dtype=torch.long, device=ctx.x.device)
    return _Carry(automata=automata, lo=lo, hi=hi, at=lo.clone(),
                  state=state.expand(n, -1).clone())


def _groups(*keys: Tensor, rows: Tensor) -> dict[tuple[int, ...], list[int]]:
    """Rows (indices in ``rows``) grouped by the values of ``keys`` at them."""
    out: dict[tuple[int, ...], list[int]] = {}
    cols = [k[rows].tolist() for k in keys]
    for j, r in enumerate(rows.tolist()):
        out.setdefault(tuple(c[j] for c in cols), []).append(r)
    return out


def _constrained_tokens(ctx: Any, commit: Tensor, proposed: Tensor, carry: _Carry,
                        method: str) -> Tensor:
    """The committed tokens of every row, from the block decoder run on each slot's part of
    the current block (``proposed``: the wrapped sampler's own tokens, kept for slots the
    per-token baseline has lost). Slots are independent given the skeleton, so the best (or
    a sampled) block is the best (or a sampled) part of every slot."""
    n, length = ctx.x.shape
    out = ctx.x.clone()
    pos = torch.arange(length, device=ctx.x.device)
    temperature = float(ctx.temperature)
    # One seed per row and step (one draw from the run's generators, whatever the batch and
    # the slots touched), so row r depends only on the generator generate() gave it.
    seeds = (ctx.uniform(1)[:, 0, 0] * 2.0**62).long().tolist() if temperature > 0 else None
    for k, automaton in enumerate(carry.automata):
        lo_k, hi_k = carry.lo[:, k], carry.hi[:, k]
        # Advance the carried state to the start of this slot's part of the current block
        # (everything before it is committed: blocks are decoded left to right).
        target = torch.minimum(torch.maximum(ctx.block_start, lo_k), hi_k)
        behind = (target > carry.at[:, k]).nonzero().flatten()
        for (a, b), rows in _groups(carry.at[:, k], target, rows=behind).items():
            idx = torch.tensor(rows, device=ctx.x.device)
            if bool((ctx.x[idx, a:b] == ctx.mask_id).any()):
                raise RuntimeError("the constrained sampler expects blocks decoded left to right")
            carry.state[idx, k] = automaton.advance(carry.state[idx, k], ctx.x[idx, a:b])
            carry.at[idx, k] = b
        # Decode this slot's part [a, b) of the block for rows that commit inside it.
        a_k = target
        b_k = torch.minimum(ctx.block_end, hi_k)
        part = (pos >= a_k[:, None]) & (pos < b_k[:, None])
        need = ((commit & part).any(-1)).nonzero().flatten()
        for (a, b, hi), rows in _groups(a_k, b_k, hi_k, rows=need).items():
            idx = torch.tensor(rows, device=ctx.x.device)
            lp = ctx.logp[idx, a:b].double()
            if temperature > 0:
                lp = lp / temperature
            lp = _force(lp, ctx.x[idx, a:b], ctx.mask_id)
            still = (ctx.x[idx, a:b] == ctx.mask_id) & ~commit[idx, a:b]
            tokens = proposed[idx, a:b].clone()  # slots past a dead end: unconstrained
            live = (carry.state[idx, k] >= 0).nonzero().flatten()
            if len(live):
                args = (lp[live], automaton, carry.state[idx[live], k], still[live])
                if method == "dingo" and temperature == 0:
                    got, _, _ = best_block(*args, remaining=hi - b)
                elif method == "dingo":
                    got, _, _ = sample_block(*args, remaining=hi - b,
                                             generator=_generators(seeds, idx[live], k))
                else:
                    got, end, _ = per_token_block(*args, sample=temperature > 0,
                                                  generator=_generators(seeds, idx[live], k))
                    carry.state[idx[live][end < 0], k] = -1  # failed: unconstrained from now on
                tokens[live] = got
            block = commit[idx, a:b]
            out[idx, a:b] = torch.where(block, tokens, ctx.x[idx, a:b])
    return out


def _generators(seeds: list[int] | None, rows: Tensor, slot: int) -> list[torch.Generator]:
    """One generator per row for the draws of slot ``slot``, seeded from the row's seed."""
    if seeds is None:
        return []
    return [torch.Generator().manual_seed((seeds[r] + slot * 0x9E3779B97F4A7C15) % 2**63)
            for r in rows.tolist()]

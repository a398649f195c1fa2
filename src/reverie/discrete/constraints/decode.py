"""Decoding one block of per-position distributions under a token automaton.

* :func:`best_block`: the DINGO dynamic program (Suresh et al. 2025, Alg. 1): the most
  probable block whose string is a valid prefix, with positions that stay masked acting as
  wildcards.
* :func:`sample_block`: forward filtering, backward sampling: an exact draw from the
  per-position distributions restricted to valid strings.
* :func:`per_token_block`: the baseline used by autoregressive constrained decoders
  (outlines, SynCode; DINGO's "greedy constrained"): left to right, forbid only the tokens that
  make the prefix invalid.

All three accept one block ``logprobs[L, V]`` (returning ``(tokens[L], end_state: int,
logprob: float)``) or a batch ``logprobs[B, L, V]`` (returning ``(tokens[B, L],
end_state[B], logprob[B])``), run on the device of ``logprobs``, and are vectorised over the
vocabulary: per position the model's scores are first reduced to one score per token class,
then the recursion runs over the automaton's live ``(state, state)`` pairs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from reverie.discrete.constraints.automaton import TokenAutomaton, _Tables

__all__ = ["InfeasibleConstraint", "best_block", "per_token_block", "sample_block"]

Generators = torch.Generator | Sequence[torch.Generator] | None
_NEG = float("-inf")


class InfeasibleConstraint(ValueError):
    """No string allowed by the automaton has non-zero probability under the given scores."""


@dataclass
class _Block:
    lp: Tensor  # [B, L, V], model dtype
    state: Tensor  # long [B]
    masked: Tensor  # bool [B, L]
    batched: bool
    tables: _Tables
    automaton: TokenAutomaton


def _prepare(
    logprobs: Tensor,
    automaton: TokenAutomaton,
    state: int | Tensor | Sequence[int],
    masked: Tensor | None,
) -> _Block:
    if not isinstance(automaton, TokenAutomaton):
        raise TypeError(f"automaton must be a TokenAutomaton, got {type(automaton).__name__}")
    if not isinstance(logprobs, Tensor) or not logprobs.is_floating_point():
        raise TypeError("logprobs must be a floating-point tensor [L, V] or [B, L, V]")
    if logprobs.dim() not in (2, 3):
        raise ValueError(f"logprobs must be [L, V] or [B, L, V], got shape {tuple(logprobs.shape)}")
    batched = logprobs.dim() == 3
    lp = logprobs if batched else logprobs[None]
    b, length, vocab = lp.shape
    if vocab != automaton.vocab_size:
        raise ValueError(
            f"logprobs have {vocab} entries per position but the automaton's vocabulary has "
            f"{automaton.vocab_size}; build the vocabulary with the model's logits width"
        )
    if torch.isnan(lp).any() or torch.isposinf(lp).any():
        raise ValueError("logprobs contain NaN or +inf")
    device = lp.device
    if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
        states = torch.full((b,), int(state), dtype=torch.long, device=device)
    else:
        states = torch.as_tensor(state, dtype=torch.long).to(device).reshape(-1)
        if states.numel() == 1:
            states = states.expand(b).clone()
        if states.numel() != b:
            raise ValueError(f"got {states.numel()} states for a batch of {b}")
    s_cpu = states.cpu()
    if (s_cpu < 0).any() or (s_cpu >= automaton.n_states).any():
        raise ValueError(f"states must be in 0..{automaton.n_states - 1}, got {s_cpu.tolist()}")
    dead = [int(s) for s in s_cpu if not automaton.is_live(int(s))]
    if dead:
        raise ValueError(f"states {sorted(set(dead))} are dead: no string from them is accepted")
    if masked is None:
        m = torch.zeros(b, length, dtype=torch.bool, device=device)
    else:
        m = torch.as_tensor(masked).to(device)
        if m.dtype != torch.bool:
            raise TypeError(f"masked must be a bool tensor, got {m.dtype}")
        if m.shape == (length,):
            m = m.expand(b, length)
        if m.shape != (b, length):
            raise ValueError(
                f"masked must be [L] or [B, L] = [{b}, {length}], got {tuple(m.shape)}"
            )
    return _Block(lp, states, m, batched, automaton.tables(device), automaton)


def _class_scores(lp: Tensor, t: _Tables, n_classes: int, *, logsumexp: bool) -> Tensor:
    """Per position and token class, the max (Viterbi) or log-sum-exp (forward) of the
    model's scores over the tokens of the class: ``[B, L, C + 1]`` float64."""
    idx = t.token_class.expand_as(lp)
    shape = (*lp.shape[:2], n_classes + 1)
    mx = lp.new_full(shape, _NEG).scatter_reduce(2, idx, lp, "amax", include_self=True)
    if not logsumexp:
        return mx.double()
    mx = mx.double()
    shift = mx.gather(2, idx)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.zeros(shape, dtype=torch.float64, device=lp.device)
    total.scatter_add_(2, idx, (lp.double() - shift).exp())
    return torch.where(torch.isfinite(mx), mx + total.log(), mx)


def _pair_scores(trip_scores: Tensor, t: _Tables, *, logsumexp: bool) -> Tensor:
    """Reduce per-triplet scores ``[B, L, E]`` to the automaton's ``(src, dst)`` pairs and lay
    them out by destination: ``[B, L, Q, K]`` (V_i(q, q') of DINGO Alg. 1 lines 6-10)."""
    b, length, _ = trip_scores.shape
    idx = t.trip_pair.expand_as(trip_scores)
    shape = (b, length, t.n_pairs + 1)
    mx = trip_scores.new_full(shape, _NEG).scatter_reduce(
        2, idx, trip_scores, "amax", include_self=True
    )
    if logsumexp:
        shift = mx.gather(2, idx)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        total = torch.zeros_like(mx).scatter_add_(2, idx, (trip_scores - shift).exp())
        mx = torch.where(torch.isfinite(mx), mx + total.log(), mx)
    return mx[:, :, t.pair_in]  # sentinel pair P stays -inf


def _initial(blk: _Block) -> Tensor:
    w = torch.full((blk.lp.shape[0], blk.automaton.n_states), _NEG, dtype=torch.float64,
                   device=blk.lp.device)
    w.scatter_(1, blk.state[:, None], 0.0)  # W[0, q0] = 1 (log 0)
    return w


def _end_scores(blk: _Block, w: Tensor, remaining: int | None, what: str) -> Tensor:
    ok = blk.automaton.end_mask(remaining, blk.lp.device)
    score = torch.where(ok[None], w, torch.full_like(w, _NEG))
    if torch.isneginf(score).all(-1).any():
        rows = torch.isneginf(score).all(-1).nonzero().flatten().tolist()
        where = (
            "a live state" if remaining is None else f"a state that fits {remaining} more tokens"
        )
        raise InfeasibleConstraint(
            f"{what}: no string with non-zero probability ends in {where} (batch rows {rows}); "
            "committed tokens may contradict the constraint, or the scores forbid every "
            "valid token at some position"
        )
    return score


def _backtrack(choice: Tensor, src_in: Tensor, pair_in: Tensor, q_end: Tensor) -> Tensor:
    """Follow the chosen incoming slots ``choice[L, B, Q]`` back from ``q_end``: the
    ``(src, dst)`` pair used at every position, ``[B, L]`` (DINGO Alg. 1 lines 19-23)."""
    ch = choice.cpu().numpy()
    src = src_in.cpu().numpy()
    pin = pair_in.cpu().numpy()
    length, b, _ = ch.shape
    rows = np.arange(b)
    q = q_end.cpu().numpy()
    pairs = np.empty((b, length), dtype=np.int64)
    for i in range(length - 1, -1, -1):
        k = ch[i, rows, q]
        pairs[:, i] = pin[q, k]
        q = src[q, k]
    return torch.from_numpy(pairs)


def _pick_tokens(
    blk: _Block,
    trip_scores: Tensor,
    pairs: Tensor,
    generator: Generators,
    *,
    sample: bool,
) -> Tensor:
    """For every position, a token along its chosen pair: the best one (Viterbi), or one drawn
    in proportion to the model's probability among the pair's tokens (class first, by its
    total probability, then a token inside the class)."""
    t = blk.tables
    lp = blk.lp
    on_pair = t.trip_pair[None, None, :] == pairs.to(lp.device)[..., None]  # [B, L, E]
    score = torch.where(on_pair, trip_scores, torch.full_like(trip_scores, _NEG))
    if sample:
        score = score + _gumbel(score.shape, generator, lp.device)
    cls = t.trip_cls[score.argmax(-1)]  # [B, L]
    in_class = t.token_class[None, None, :] == cls[..., None]  # [B, L, V]
    tok_score = torch.where(in_class, lp.double(), torch.full(lp.shape, _NEG, dtype=torch.float64,
                                                               device=lp.device))
    if sample:
        tok_score = tok_score + _gumbel(tok_score.shape, generator, lp.device)
    return tok_score.argmax(-1)


def _finish(
    blk: _Block, tokens: Tensor, end: Tensor, logprob: Tensor
) -> tuple[Tensor, int | Tensor, float | Tensor]:
    fill = -1 if blk.automaton.mask_id is None else blk.automaton.mask_id
    tokens = torch.where(blk.masked, torch.full_like(tokens, fill), tokens)
    if blk.batched:
        return tokens, end, logprob
    return tokens[0], int(end[0]), float(logprob[0])


def best_block(
    logprobs: Tensor,
    automaton: TokenAutomaton,
    state: int | Tensor = 0,
    masked: Tensor | None = None,
    *,
    remaining: int | None = None,
) -> tuple[Tensor, int | Tensor, float | Tensor]:
    """The most probable valid block: the DINGO dynamic program (Suresh et al. 2025, Alg. 1).

    ``W[i, q]`` is the best log-probability of reaching automaton state ``q`` from ``state``
    after ``i`` positions; a position whose token is chosen adds ``max`` over the tokens of
    each ``q -> q'`` transition, a position in ``masked`` (one that stays masked after this
    denoising step) moves along every one-token transition at probability 1 (the mask
    symbol's transition ``delta_bot``, §4.1). The block ends in the best state allowed by
    ``remaining``: any live state when ``None`` (DINGO: the string is a valid prefix), or a
    state from which a final state is reachable in at most ``remaining`` tokens (the rest of
    the canvas can still be completed; 0 = the block ends the string). Back-pointers give the
    string (lines 19-23).

    Args:
        logprobs: ``[L, V]`` or ``[B, L, V]`` log-probabilities (or logits: per-position
            constants do not change the result). Committed tokens should be one-hot
            (0 at the token, -inf elsewhere) so the program keeps them.
        automaton: the constraint's :class:`TokenAutomaton`.
        state: the automaton state before the block (int, or ``LongTensor[B]``).
        masked: ``bool[L]`` or ``bool[B, L]``, positions that stay masked.
        remaining: tokens of the canvas after this block, or ``None``.

    Returns:
        ``(tokens, end_state, logprob)``: tokens (the automaton's ``mask_id``, or -1, at
        masked positions), the state after the block, and the block's log-probability
        (the sum over unmasked positions).

    Raises:
        InfeasibleConstraint: when every valid block has probability 0.
    """
    blk = _prepare(logprobs, automaton, state, masked)
    t = blk.tables
    length = blk.lp.shape[1]
    cls_scores = _class_scores(blk.lp, t, automaton.n_classes, logsumexp=False)
    trip_scores = cls_scores[:, :, t.trip_cls]  # [B, L, E]
    pair_scores = _pair_scores(trip_scores, t, logsumexp=False)  # [B, L, Q, K]
    # Masked positions: probability 1 along every live one-token transition.
    wildcard = torch.where(t.in_valid, 0.0, _NEG).to(pair_scores)
    pair_scores = torch.where(blk.masked[:, :, None, None], wildcard, pair_scores)
    w = _initial(blk)
    choices = []
    for i in range(length):
        # W[i, q'] = max_q W[i-1, q] + V_i(q, q')  (Alg. 1 lines 11-15)
        w, k = (w[:, t.src_in] + pair_scores[:, i]).max(-1)
        choices.append(k)
    score = _end_scores(blk, w, remaining, "best_block")
    best, q_end = score.max(-1)  # q_max = argmax over allowed end states (line 16)
    if length == 0:
        tokens = torch.empty(blk.lp.shape[0], 0, dtype=torch.long, device=blk.lp.device)
        return _finish(blk, tokens, q_end, best)
    pairs = _backtrack(torch.stack(choices), t.src_in, t.pair_in, q_end)
    tokens = _pick_tokens(blk, trip_scores, pairs, None, sample=False)
    return _finish(blk, tokens, q_end, best)


def sample_block(
    logprobs: Tensor,
    automaton: TokenAutomaton,
    state: int | Tensor = 0,
    masked: Tensor | None = None,
    *,
    remaining: int | None = None,
    generator: Generators = None,
) -> tuple[Tensor, int | Tensor, float | Tensor]:
    """A block drawn exactly from the per-position distributions restricted to valid strings.

    Forward filtering, backward sampling over the automaton (the sum-product counterpart of
    :func:`best_block`; Rabiner 1989 forward recursion, Frühwirth-Schnatter 1994 backward
    draw): ``alpha[i, q] = log sum`` of the probability of every string of ``i`` tokens
    from ``state`` to ``q``; the end state is drawn in proportion to ``alpha[L]`` over the
    states allowed by ``remaining`` (as in :func:`best_block`), then each earlier state and
    the token in between, backwards. The result is distributed as
    ``p(x) ∝ prod_i p_i(x_i) 1[x valid]``: the automaton is deterministic, so each string has
    exactly one path. Positions in ``masked`` are drawn like the others (from the model's
    prediction there, so the constraint sees the joint) and returned as the mask token.

    ``generator`` is one ``torch.Generator`` or one per batch row. Returns
    ``(tokens, end_state, logprob)`` like :func:`best_block` (``logprob`` sums the unmasked
    positions).
    """
    blk = _prepare(logprobs, automaton, state, masked)
    t = blk.tables
    b, length, _ = blk.lp.shape
    cls_scores = _class_scores(blk.lp, t, automaton.n_classes, logsumexp=True)
    trip_scores = cls_scores[:, :, t.trip_cls]
    pair_scores = _pair_scores(trip_scores, t, logsumexp=True)
    w = _initial(blk)
    alphas = [w]
    for i in range(length):
        # alpha[i, q'] = log sum_q exp(alpha[i-1, q] + log P_i(q -> q'))
        w = torch.logsumexp(w[:, t.src_in] + pair_scores[:, i], dim=-1)
        alphas.append(w)
    score = _end_scores(blk, w, remaining, "sample_block")
    dev = blk.lp.device
    q = (score + _gumbel(score.shape, generator, dev)).argmax(-1)  # q_L ~ alpha[L] (masked)
    q_end = q
    rows = torch.arange(b, device=dev)
    back_noise = _gumbel((b, length, t.src_in.shape[1]), generator, dev)
    pairs = torch.empty(b, length, dtype=torch.long, device=dev)
    for i in range(length - 1, -1, -1):
        # p(q_{i-1} = src | q_i) ∝ exp(alpha[i-1, src] + log P_i(src -> q_i))
        logits = alphas[i][rows[:, None], t.src_in[q]] + pair_scores[rows, i, q]
        k = (logits + back_noise[:, i]).argmax(-1)
        pairs[:, i] = t.pair_in[q, k]
        q = t.src_in[q, k]
    if length == 0:
        tokens = torch.empty(b, 0, dtype=torch.long, device=dev)
        return _finish(blk, tokens, q_end, torch.zeros(b, dtype=torch.float64, device=dev))
    tokens = _pick_tokens(blk, trip_scores, pairs, generator, sample=True)
    logprob = _unmasked_logprob(blk, tokens)
    return _finish(blk, tokens, q_end, logprob)


def per_token_block(
    logprobs: Tensor,
    automaton: TokenAutomaton,
    state: int | Tensor = 0,
    masked: Tensor | None = None,
    *,
    sample: bool = False,
    generator: Generators = None,
) -> tuple[Tensor, int | Tensor, float | Tensor]:
    """The per-token masking baseline: left to right, each position takes its best (or a
    sampled) token among those that keep the prefix valid, i.e. lead to a live state; DINGO's
    "greedy constrained" baseline and what autoregressive constrained decoders do (outlines,
    SynCode). It does not look ahead: it can walk into a prefix that the remaining length
    cannot complete. A masked position widens the set of current states to every one-token
    successor. When no token is allowed the position falls back to the unconstrained choice
    and the row is marked failed (end state -1).

    Returns ``(tokens, end_state, logprob)`` like :func:`best_block`; with masked positions
    the end state is not determined, the smallest candidate is returned.
    """
    blk = _prepare(logprobs, automaton, state, masked)
    t = blk.tables
    b, length, vocab = blk.lp.shape
    dev = blk.lp.device
    n_states, n_cls = automaton.n_states, automaton.n_classes + 1
    cur = torch.zeros(b, n_states, dtype=torch.bool, device=dev)
    cur[torch.arange(b, device=dev), blk.state] = True
    failed = torch.zeros(b, dtype=torch.bool, device=dev)
    tokens = torch.empty(b, length, dtype=torch.long, device=dev)
    e = t.trip_cls.shape[0]
    for i in range(length):
        on = cur[:, t.trip_src]  # [B, E] transitions leaving a current state
        allowed_cls = torch.zeros(b, n_cls, device=dev).scatter_add_(
            1, t.trip_cls.expand(b, e), on.to(torch.float32)) > 0
        allowed = allowed_cls.gather(1, t.token_class.expand(b, vocab))
        score = blk.lp[:, i].double()
        if sample:
            score = score + _gumbel(score.shape, generator, dev)
        choice = torch.where(allowed, score, torch.full_like(score, _NEG)).argmax(-1)
        none = ~allowed.any(-1)
        choice = torch.where(none, score.argmax(-1), choice)  # nothing valid: unconstrained
        failed |= none & ~blk.masked[:, i]
        tokens[:, i] = choice
        hit = on & (t.trip_cls[None, :] == t.token_class[choice][:, None])
        nxt = torch.zeros(b, n_states, device=dev).scatter_add_(
            1, t.trip_dst.expand(b, e), hit.to(torch.float32)) > 0
        wide = torch.zeros(b, n_states, device=dev).scatter_add_(
            1, t.trip_dst.expand(b, e), on.to(torch.float32)) > 0
        cur = torch.where(blk.masked[:, i, None], wide, nxt)
    cur &= ~failed[:, None]
    has = cur.any(-1)
    none_left = torch.full_like(failed, -1, dtype=torch.long)
    end = torch.where(has, cur.to(torch.uint8).argmax(-1), none_left)
    logprob = _unmasked_logprob(blk, tokens)
    return _finish(blk, tokens, end, logprob)


def _unmasked_logprob(blk: _Block, tokens: Tensor) -> Tensor:
    lp = blk.lp.gather(2, tokens[..., None])[..., 0].double()
    return torch.where(blk.masked, torch.zeros_like(lp), lp).sum(-1)


def _gumbel(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Standard Gumbel noise in float64 (Gumbel-max sampling); with a list of generators,
    row ``k`` comes from ``generator[k]`` alone."""
    shape = tuple(shape)
    tiny = torch.finfo(torch.float64).tiny

    def draw(sh: tuple[int, ...], g: torch.Generator | None) -> Tensor:
        dev = g.device if g is not None else device
        u = torch.rand(sh, generator=g, dtype=torch.float64, device=dev).clamp_min(tiny)
        return -torch.log(-torch.log(u)).to(device)

    if generator is None or isinstance(generator, torch.Generator):
        return draw(shape, generator)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(
            f"got {len(gens)} generators for a batch of {shape[0]}; pass one per batch row"
        )
    return torch.stack([draw(shape[1:], g) for g in gens])

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


def _check_scores(reduced: Tensor) -> None:
    """NaN and +inf survive every max / log-sum-exp reduction, so checking the small
    per-class tensor checks the model's scores without another pass over the vocabulary."""
    if torch.isnan(reduced).any() or torch.isposinf(reduced).any():
        raise ValueError("logprobs contain NaN or +inf")


def _class_max(scores: Tensor, t: _Tables, n_cls: int) -> Tensor:
    """Per row and token class, the best score over the class's tokens: ``[N, n_cls]``."""
    idx = t.token_class.expand_as(scores)
    out = scores.new_full((scores.shape[0], n_cls), _NEG)
    out = out.scatter_reduce(1, idx, scores, "amax", include_self=True)
    _check_scores(out)
    return out


def _token_in_class(scores: Tensor, cls: Tensor, t: _Tables) -> Tensor:
    """Per row, the best-scoring token among those of class ``cls[row]``."""
    inside = t.token_class[None, :] == cls[:, None]
    return torch.where(inside, scores, _NEG).argmax(-1)


def _class_best(scores: Tensor, t: _Tables, n_cls: int) -> tuple[Tensor, Tensor]:
    """Per row and token class, the best score over the class's tokens and the token that
    attains it: ``scores[N, V] -> (best[N, n_cls], token[N, n_cls])``."""
    n, vocab = scores.shape
    idx = t.token_class.expand(n, vocab)
    best = scores.new_full((n, n_cls), _NEG).scatter_reduce(
        1, idx, scores, "amax", include_self=True
    )
    _check_scores(best)
    hit = scores == best.gather(1, idx)
    ids = torch.arange(vocab, device=scores.device, dtype=torch.int32).expand(n, vocab)
    cand = torch.where(hit, ids, vocab)
    token = torch.full((n, n_cls), vocab, dtype=torch.int32, device=scores.device)
    token = token.scatter_reduce(1, idx, cand, "amin", include_self=True)
    return best, token.long()


def _class_logsumexp(scores: Tensor, t: _Tables, n_cls: int) -> Tensor:
    """Per row and token class, ``log sum_{t in class} exp(scores[t])``: shifted by the class
    maximum and summed in the scores' dtype, returned as float64."""
    n, vocab = scores.shape
    idx = t.token_class.expand(n, vocab)
    mx = scores.new_full((n, n_cls), _NEG).scatter_reduce(1, idx, scores, "amax")
    finite = torch.isfinite(mx)
    mx = torch.where(finite, mx, 0.0)
    total = torch.zeros_like(mx).scatter_add_(1, idx, (scores - mx.gather(1, idx)).exp())
    out = torch.where(finite, mx.double() + total.double().log(), _NEG)
    _check_scores(torch.where(finite, mx, 0.0) + total)
    return out


def _sample_in_class(scores: Tensor, cls: Tensor, log_mass: Tensor, u: Tensor,
                     t: _Tables) -> Tensor:
    """Per row, a token of class ``cls[row]`` drawn with probability ``exp(score) / mass`` by
    inverting the cumulative distribution at ``u[row]`` (float64)."""
    inside = t.token_class[None, :] == cls[:, None]
    w = torch.where(inside, (scores.double() - log_mass[:, None]).exp(), 0.0)
    cdf = w.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous())[:, 0]
    return idx.clamp_max(scores.shape[1] - 1)


def _pair_scores(trip_scores: Tensor, t: _Tables, *, logsumexp: bool) -> Tensor:
    """Reduce per-triplet scores ``[N, E]`` to the automaton's live ``(src, dst)`` pairs,
    ``[N, P]``: the transition weights V_i(q, q') of DINGO Alg. 1 lines 6-10 (max), or the
    total probability of the tokens leading from q to q' (log-sum-exp)."""
    n = trip_scores.shape[0]
    idx = t.trip_pair.expand_as(trip_scores)
    mx = trip_scores.new_full((n, t.n_pairs), _NEG).scatter_reduce(
        1, idx, trip_scores, "amax", include_self=True
    )
    if logsumexp:
        shift = mx.gather(1, idx)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        total = torch.zeros_like(mx).scatter_add_(1, idx, (trip_scores - shift).exp())
        mx = torch.where(torch.isfinite(mx), mx + total.log(), mx)
    return mx


def _initial(blk: _Block) -> Tensor:
    w = torch.full((blk.lp.shape[0], blk.automaton.n_states), _NEG, dtype=torch.float64,
                   device=blk.lp.device)
    w.scatter_(1, blk.state[:, None], 0.0)  # W[0, q0] = 1 (log 0)
    return w


def _end_scores(blk: _Block, w: Tensor, remaining: int | None, what: str) -> Tensor:
    ok = blk.automaton.end_mask(remaining, blk.lp.device)
    score = torch.where(ok[None], w, torch.full_like(w, _NEG))
    empty = torch.isneginf(score).all(-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        rows_txt = ", ".join(map(str, rows[:8]))
        if len(rows) > 8:
            rows_txt += f", ... ({len(rows)} rows)"
        where = (
            "a live state" if remaining is None else f"a state that fits {remaining} more tokens"
        )
        raise InfeasibleConstraint(
            f"{what}: no string with non-zero probability ends in {where} (batch rows {rows_txt}); "
            "committed tokens may contradict the constraint, or the scores forbid every "
            "valid token at some position"
        )
    return score


def _backtrack(steps: list[Tensor], t: _Tables, q_end: Tensor, noise: Tensor | None) -> Tensor:
    """Walk back from ``q_end``: at position ``i`` the pair into the current state with the
    best score ``W[i-1, src] + V_i(src, q)`` (Viterbi back-pointers, DINGO Alg. 1 lines
    19-23), or one drawn in proportion to ``exp`` of it (backward sampling, with Gumbel
    ``noise[B, L, K]``). Returns the pair used at every position, ``[B, L]``."""
    b = q_end.shape[0]
    scores = torch.stack(steps, 1)  # [B, L, P]
    scores = torch.cat([scores, scores.new_full((b, len(steps), 1), _NEG)], -1)  # sentinel
    rows = torch.arange(b, device=q_end.device)
    pairs = torch.empty(b, len(steps), dtype=torch.long, device=q_end.device)
    q = q_end
    for i in range(len(steps) - 1, -1, -1):
        cand = t.pair_in[q]  # [B, K] pairs ending in q
        v = scores[:, i].gather(1, cand)
        if noise is not None:
            v = v + noise[:, i]
        p = cand[rows, v.argmax(-1)]
        pairs[:, i] = p
        q = t.pair_src[p]
    return pairs


def _tokens_on_pairs(scores: Tensor, trip_scores: Tensor, pairs: Tensor, t: _Tables) -> Tensor:
    """For rows ``[N]`` with chosen pairs, the class with the best score among the pair's
    triplets, then that class's best token: the best token leading along the pair."""
    on_pair = t.trip_pair[None, :] == pairs[:, None]
    v = torch.where(on_pair, trip_scores, _NEG)
    return _token_in_class(scores, t.trip_cls[v.argmax(-1)], t)


def _finish(
    blk: _Block, tokens: Tensor, end: Tensor, logprob: Tensor
) -> tuple[Tensor, int | Tensor, float | Tensor]:
    fill = -1 if blk.automaton.mask_id is None else blk.automaton.mask_id
    tokens = torch.where(blk.masked, torch.full_like(tokens, fill), tokens)
    if blk.batched:
        return tokens, end, logprob
    return tokens[0], int(end[0]), float(logprob[0])


def _empty(blk: _Block, what: str, remaining: int | None) -> tuple:
    b = blk.lp.shape[0]
    w = _initial(blk)
    score = _end_scores(blk, w, remaining, what)
    best, q_end = score.max(-1)
    tokens = torch.empty(b, 0, dtype=torch.long, device=blk.lp.device)
    return _finish(blk, tokens, q_end, torch.zeros_like(best))


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
    b, length, vocab = blk.lp.shape
    if length == 0:
        return _empty(blk, "best_block", remaining)
    n_cls = automaton.n_classes + 1
    flat = blk.lp.reshape(b * length, vocab)
    keep = ~blk.masked.reshape(-1)
    sel = keep.nonzero()[:, 0]
    # Per unmasked position, the best token of every class (masked positions need none).
    rows_sel = flat[sel]
    trip_sel = _class_max(rows_sel, t, n_cls)[:, t.trip_cls]  # [N, E]
    pair = torch.zeros(b * length, t.n_pairs, dtype=blk.lp.dtype, device=blk.lp.device)
    pair[sel] = _pair_scores(trip_sel, t, logsumexp=False)  # masked rows stay 0: the wildcard
    pair = pair.view(b, length, t.n_pairs)
    dst = t.pair_dst.expand(b, t.n_pairs)
    w = _initial(blk)
    steps = []
    for i in range(length):
        # W[i, q'] = max_q W[i-1, q] + V_i(q, q')  (Alg. 1 lines 11-15)
        s = w[:, t.pair_src] + pair[:, i]
        steps.append(s)
        w = torch.full_like(w, _NEG).scatter_reduce(1, dst, s, "amax", include_self=True)
    score = _end_scores(blk, w, remaining, "best_block")
    value, q_end = score.max(-1)  # q_max = argmax over allowed end states (line 16)
    pairs = _backtrack(steps, t, q_end, None).reshape(-1)
    tokens = torch.full((b * length,), -1, dtype=torch.long, device=blk.lp.device)
    tokens[sel] = _tokens_on_pairs(rows_sel, trip_sel, pairs[sel], t)
    return _finish(blk, tokens.view(b, length), q_end, value)


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
    b, length, vocab = blk.lp.shape
    if length == 0:
        return _empty(blk, "sample_block", remaining)
    dev = blk.lp.device
    n_cls = automaton.n_classes + 1
    flat = blk.lp.reshape(b * length, vocab)
    lse = _class_logsumexp(flat, t, n_cls)
    pair = _pair_scores(lse[:, t.trip_cls], t, logsumexp=True).view(b, length, t.n_pairs)
    dst = t.pair_dst.expand(b, t.n_pairs)
    w = _initial(blk)
    steps = []
    for i in range(length):
        # alpha[i, q'] = log sum_q exp(alpha[i-1, q] + log P_i(q -> q'))
        s = w[:, t.pair_src] + pair[:, i]
        steps.append(s)
        mx = torch.full_like(w, _NEG).scatter_reduce(1, dst, s, "amax", include_self=True)
        shift = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        total = torch.zeros_like(w).scatter_add_(1, dst, (s - shift.gather(1, dst)).exp())
        w = torch.where(torch.isfinite(mx), shift + total.log(), mx)
    score = _end_scores(blk, w, remaining, "sample_block")
    # Noise, in a fixed order per row so that one generator per row is batch-independent.
    g_end = _gumbel(score.shape, generator, dev)
    g_back = _gumbel((b, length, t.pair_in.shape[1]), generator, dev)
    g_cls = _gumbel((b, length, t.trip_cls.shape[0]), generator, dev)
    u_tok = _uniform((b, length), generator, dev)
    q_end = (score + g_end).argmax(-1)  # q_L ~ alpha[L] over the allowed states
    pairs = _backtrack(steps, t, q_end, g_back).reshape(-1)
    # The token along each pair: its class in proportion to the class's probability mass
    # (Gumbel-max over the pair's triplets), then a token of the class by inverse CDF.
    keep = ~blk.masked.reshape(-1)
    sel = keep.nonzero()[:, 0]
    trip = lse[sel][:, t.trip_cls]
    on_pair = t.trip_pair[None, :] == pairs[sel][:, None]
    v = torch.where(on_pair, trip, _NEG) + g_cls.reshape(b * length, -1)[sel]
    pick = v.argmax(-1)
    cls = t.trip_cls[pick]
    tokens = torch.full((b * length,), -1, dtype=torch.long, device=dev)
    tokens[sel] = _sample_in_class(flat[sel], cls, trip.gather(1, pick[:, None])[:, 0],
                                   u_tok.reshape(-1)[sel], t)
    tokens = tokens.view(b, length)
    return _finish(blk, tokens, q_end, _unmasked_logprob(blk, tokens))


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
    scores = blk.lp.reshape(b * length, vocab)
    if sample:  # Gumbel-max over the allowed tokens = a draw from p restricted to them
        scores = scores.double() + _gumbel((b, length, vocab), generator, dev).view_as(scores)
    best, best_tok = _class_best(scores, t, n_cls)
    best, best_tok = best.view(b, length, n_cls), best_tok.view(b, length, n_cls)
    cur = torch.zeros(b, n_states, dtype=torch.bool, device=dev)
    cur[torch.arange(b, device=dev), blk.state] = True
    failed = torch.zeros(b, dtype=torch.bool, device=dev)
    tokens = torch.empty(b, length, dtype=torch.long, device=dev)
    rows = torch.arange(b, device=dev)
    e = t.trip_cls.shape[0]
    src_cls = t.trip_cls.expand(b, e)
    dst = t.trip_dst.expand(b, e)
    for i in range(length):
        on = cur[:, t.trip_src]  # [B, E] transitions leaving a current state
        allowed = torch.zeros(b, n_cls, device=dev).scatter_add_(1, src_cls, on.float()) > 0
        v = torch.where(allowed, best[:, i], torch.full_like(best[:, i], _NEG))
        none = ~allowed.any(-1)
        cls = torch.where(none, best[:, i].argmax(-1), v.argmax(-1))  # nothing valid: free
        failed |= none & ~blk.masked[:, i]
        tokens[:, i] = best_tok[rows, i, cls]
        hit = (on & (t.trip_cls[None, :] == cls[:, None])).float()
        nxt = torch.zeros(b, n_states, device=dev).scatter_add_(1, dst, hit) > 0
        wide = torch.zeros(b, n_states, device=dev).scatter_add_(1, dst, on.float()) > 0
        cur = torch.where(blk.masked[:, i, None], wide, nxt)
    cur &= ~failed[:, None]
    none_left = torch.full_like(failed, -1, dtype=torch.long)
    end = torch.where(cur.any(-1), cur.to(torch.uint8).argmax(-1), none_left)
    return _finish(blk, tokens, end, _unmasked_logprob(blk, tokens))


def _unmasked_logprob(blk: _Block, tokens: Tensor) -> Tensor:
    lp = blk.lp.gather(2, tokens.clamp_min(0)[..., None])[..., 0].double()
    return torch.where(blk.masked, torch.zeros_like(lp), lp).sum(-1)


def _uniform(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Uniform noise on (0, 1) in float64; with a list of generators, row ``k`` comes from
    ``generator[k]`` alone."""
    tiny = torch.finfo(torch.float64).tiny
    shape = tuple(shape)

    def draw(sh: tuple[int, ...], g: torch.Generator | None) -> Tensor:
        dev = g.device if g is not None else device
        u = torch.rand(sh, generator=g, dtype=torch.float64, device=dev)
        return u.clamp(tiny, 1.0 - 2**-53).to(device)

    if generator is None or isinstance(generator, torch.Generator):
        return draw(shape, generator)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(
            f"got {len(gens)} generators for a batch of {shape[0]}; pass one per batch row"
        )
    return torch.stack([draw(shape[1:], g) for g in gens])


def _gumbel(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Standard Gumbel noise in float64 (Gumbel-max sampling); with a list of generators,
    row ``k`` comes from ``generator[k]`` alone."""
    return -torch.log(-torch.log(_uniform(shape, generator, device)))

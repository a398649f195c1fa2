"""Token-level finite automata for constrained decoding.

A regular expression (or a JSON schema, turned into one by reverie's translator,
:mod:`reverie.discrete.constraints.schema`) is compiled by outlines-core into a byte-level DFA
and lifted to the tokenizer's vocabulary: from every state,
each token either leads to one next state or is forbidden (Suresh et al. 2025, "DINGO", §4.1).
A vocabulary of 128k tokens over a few hundred states would be a dense table of ~50M entries,
so the automaton is stored *by token class*: two tokens that behave identically in every state
(same next state everywhere, e.g. the thousands of plain-word tokens inside a JSON string) share
one class, and only the valid ``(state, class) -> state`` triplets are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reverie.discrete.constraints._trie import ByteDFA, token_columns, token_trie, unique_rows
from reverie.discrete.constraints._vocabulary import Vocabulary

__all__ = ["TokenAutomaton", "clear_cache"]

_CACHE: OrderedDict[tuple[str, str, str], TokenAutomaton] = OrderedDict()
_CACHE_SIZE = 32
_CACHE_LOCK = threading.Lock()

#: How :meth:`TokenAutomaton.from_regex` builds: ``"trie"`` walks the vocabulary's byte trie
#: over the byte DFA (fast, cached); ``"index"`` reads outlines-core's token index (the
#: reference, 10-100x slower at large vocabularies, never cached).
BUILD_METHODS = ("trie", "index")


def clear_cache(*, disk: bool = False) -> None:
    """Forget every automaton built by :meth:`TokenAutomaton.from_regex` / ``from_schema``
    in this process; with ``disk=True`` also delete the on-disk cache
    (:func:`~reverie.discrete.constraints._cache.cache_dir`)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    if disk:
        from reverie.discrete.constraints._cache import clear_disk

        clear_disk()


@dataclass(frozen=True)
class _Tables:
    """The automaton laid out for the dynamic programs, on one device.

    Only transitions between *live* states are kept. ``pair`` numbers the distinct live
    ``(src, dst)`` state pairs (``pair_src``, ``pair_dst``); ``pair_in[q, k]`` lists the pairs
    that end in ``q``, padded with the sentinel pair ``P`` (used only to backtrack).
    """

    token_class: Tensor  # long [V], dead tokens -> class C
    trip_src: Tensor  # long [E] live triplets
    trip_cls: Tensor  # long [E]
    trip_dst: Tensor  # long [E]
    trip_pair: Tensor  # long [E] in 0..P-1
    n_pairs: int
    pair_src: Tensor  # long [P]
    pair_dst: Tensor  # long [P]
    pair_in: Tensor  # long [Q, K]
    live: Tensor  # bool [Q]
    dist: Tensor  # long [Q], shortest number of tokens to a final state (large if not live)


class TokenAutomaton:
    """A deterministic finite automaton over token ids (DINGO §4.1).

    Args:
        transitions: ``LongTensor[Q, V]``; ``transitions[q, t]`` is the state reached from ``q``
            by token ``t``, or -1 when ``t`` is forbidden in ``q``.
        start: the initial state.
        finals: the accepting states.
        eos_id: optional id of the end-of-sequence token (set by :meth:`from_regex`).
        mask_id: optional id of the mask token (set by :meth:`from_regex`); decoders write
            ``mask_id`` at positions that stay masked.

    Internally tokens are grouped into classes of identical columns and only the valid
    ``(state, class, next state)`` triplets are stored (see :attr:`nbytes`); the dense
    ``transitions`` table is rebuilt only when asked for.
    """

    def __init__(
        self,
        transitions: Tensor,
        start: int,
        finals: Iterable[int],
        *,
        eos_id: int | None = None,
        mask_id: int | None = None,
    ) -> None:
        if not isinstance(transitions, Tensor):
            transitions = torch.as_tensor(transitions)
        if transitions.dim() != 2 or transitions.is_floating_point() or transitions.is_complex():
            raise TypeError(
                "transitions must be an integer tensor [n_states, vocab_size], got "
                f"{transitions.dtype} of shape {tuple(transitions.shape)}"
            )
        n_states, vocab = transitions.shape
        table = transitions.to(torch.int64).cpu()
        if n_states == 0:
            raise ValueError("the automaton needs at least one state")
        if table.numel() and (int(table.min()) < -1 or int(table.max()) >= n_states):
            raise ValueError(
                f"transitions must be -1 (dead) or a state in 0..{n_states - 1}, got values in "
                f"[{int(table.min())}, {int(table.max())}]"
            )
        # Token classes: identical columns of the table.
        columns, token_class = torch.unique(table.T, dim=0, return_inverse=True)
        token_class = token_class.numpy().astype(np.int64)
        dead = np.flatnonzero((columns == -1).all(dim=1).numpy())
        token_class, columns = _drop_dead_class(token_class, columns.numpy(), dead)
        q_idx, c_idx = np.nonzero(columns.T >= 0)
        triplets = np.stack([q_idx, c_idx, columns.T[q_idx, c_idx]], axis=1)
        self._setup(n_states, vocab, token_class, columns.shape[0], triplets, start, finals,
                    eos_id, mask_id)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_triplets(
        cls,
        n_states: int,
        vocab: int,
        token_class: np.ndarray,
        n_classes: int,
        triplets: np.ndarray,
        start: int,
        finals: Iterable[int],
        eos_id: int | None,
        mask_id: int | None,
    ) -> TokenAutomaton:
        self = cls.__new__(cls)
        self._setup(n_states, vocab, token_class, n_classes, triplets, start, finals, eos_id,
                    mask_id)
        return self

    def _setup(
        self,
        n_states: int,
        vocab: int,
        token_class: np.ndarray,
        n_classes: int,
        triplets: np.ndarray,
        start: int,
        finals: Iterable[int],
        eos_id: int | None,
        mask_id: int | None,
    ) -> None:
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise TypeError(f"start must be an int, got {type(start).__name__}")
        if not 0 <= int(start) < n_states:
            raise ValueError(f"start={start} is not a state (0..{n_states - 1})")
        finals_set = {int(f) for f in finals}
        bad = sorted(f for f in finals_set if not 0 <= f < n_states)
        if bad:
            raise ValueError(f"finals {bad} are not states (0..{n_states - 1})")
        for name, value in (("eos_id", eos_id), ("mask_id", mask_id)):
            top = vocab + 1 if name == "mask_id" else vocab  # the mask may be id V
            if value is not None and not 0 <= int(value) < top:
                raise ValueError(f"{name}={value} is outside the vocabulary of {vocab} tokens")
        self.n_states = int(n_states)
        self.vocab_size = int(vocab)
        self.n_classes = int(n_classes)
        self.start = int(start)
        self.finals = frozenset(finals_set)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.mask_id = None if mask_id is None else int(mask_id)
        # Storage: class of every token (dead -> n_classes) and the valid triplets, int32.
        self._token_class = torch.from_numpy(np.ascontiguousarray(token_class, dtype=np.int32))
        trip = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
        order = np.lexsort((trip[:, 1], trip[:, 0]))
        self._triplets = torch.from_numpy(np.ascontiguousarray(trip[order], dtype=np.int32))
        self._live, self._dist = _live_and_distance(self.n_states, trip, self.finals)
        self._device_tables: dict[torch.device, _Tables] = {}

    @classmethod
    def from_regex(cls, pattern: str, vocabulary: Any, *, method: str = "trie") -> TokenAutomaton:
        """The token automaton of ``pattern`` (full match) over ``vocabulary``.

        ``vocabulary`` is a :class:`~reverie.discrete.constraints.Vocabulary` or a tokenizer
        (see :meth:`Vocabulary.coerce`); it must have an EOS and a mask token. outlines-core
        builds the pattern's byte-level DFA; ``method="trie"`` (default) lifts it to tokens by
        walking the vocabulary's byte trie over it (:mod:`._trie`), ``method="index"`` by
        outlines-core's token index (Willard & Louf 2023; the slow reference). Both give the
        same automaton: states renumbered with the start state 0, and an extra absorbing final
        state reached by EOS from any final state, so outputs shorter than the canvas are
        padded with EOS. Trie builds are cached per (pattern, vocabulary): in memory (the
        most recent 32) and on disk (:mod:`._cache`, ``$REVERIE_CACHE_DIR``).

        Raises ``ValueError`` for an invalid pattern, a vocabulary that cannot spell the
        pattern, or a pattern whose language is empty.
        """
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
        if method not in BUILD_METHODS:
            raise ValueError(f"method must be one of {BUILD_METHODS}, got {method!r}")
        vocab = Vocabulary.coerce(vocabulary)
        if method == "index":
            return _build_by_index(cls, pattern, vocab)
        key = (method, pattern, vocab.fingerprint)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit
        from reverie.discrete.constraints import _cache

        automaton = _cache.load(pattern, vocab, method, cls.from_arrays)
        if automaton is None:
            automaton = _build_by_trie(cls, pattern, vocab)
            _cache.save(automaton.to_arrays(), pattern, vocab, method)
        with _CACHE_LOCK:  # threads that built the same key concurrently: the first one wins
            automaton = _CACHE.setdefault(key, automaton)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return automaton

    @classmethod
    def from_schema(
        cls,
        schema: str | dict[str, Any],
        vocabulary: Any,
        *,
        whitespace_pattern: str | None = None,
        method: str = "trie",
    ) -> TokenAutomaton:
        """The token automaton of a JSON schema: :func:`schema_to_regex` turns the schema into
        a regular expression (exactly, or it refuses the keyword; DINGO App. G.2 used
        outlines-core's looser translation), then :meth:`from_regex`."""
        return cls.from_regex(schema_to_regex(schema, whitespace_pattern=whitespace_pattern),
                              vocabulary, method=method)

    # ------------------------------------------------------------------ storage
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The stored automaton as NumPy arrays (see :meth:`from_arrays`, ``np.savez``)."""
        meta = [self.n_states, self.vocab_size, self.n_classes, self.start,
                -1 if self.eos_id is None else self.eos_id,
                -1 if self.mask_id is None else self.mask_id]
        return {"meta": np.asarray(meta, dtype=np.int64),
                "finals": np.asarray(sorted(self.finals), dtype=np.int64),
                "token_class": self._token_class.numpy(), "triplets": self._triplets.numpy()}

    @classmethod
    def from_arrays(cls, arrays: Any) -> TokenAutomaton:
        """The automaton saved by :meth:`to_arrays`; ``ValueError`` if the arrays are not a
        consistent automaton (wrong shapes, ids out of range)."""
        meta = np.asarray(arrays["meta"])
        token_class = np.asarray(arrays["token_class"])
        trip = np.asarray(arrays["triplets"])
        if meta.shape != (6,) or token_class.ndim != 1 or trip.ndim != 2 or trip.shape[1:] != (3,):
            raise ValueError("not a saved TokenAutomaton: unexpected array shapes")
        n_states, vocab, n_classes, start, eos, mask = (int(v) for v in meta)
        if token_class.shape[0] != vocab or (
            token_class.size and not 0 <= token_class.min() <= token_class.max() <= n_classes
        ):
            raise ValueError("not a saved TokenAutomaton: token classes out of range")
        if trip.size and not (
            0 <= trip[:, [0, 2]].min() and trip[:, [0, 2]].max() < n_states
            and 0 <= trip[:, 1].min() and trip[:, 1].max() < n_classes
        ):
            raise ValueError("not a saved TokenAutomaton: transitions out of range")
        return cls._from_triplets(n_states, vocab, token_class, n_classes, trip, start,
                                  np.asarray(arrays["finals"]).tolist(),
                                  None if eos < 0 else eos, None if mask < 0 else mask)

    # ------------------------------------------------------------------ inspection
    @property
    def transitions(self) -> Tensor:
        """The dense ``LongTensor[Q, V]`` table (-1 = dead). Built on demand: for a large
        vocabulary this is ``Q * V * 8`` bytes; the decoders never use it."""
        dense = torch.full((self.n_states, self.n_classes + 1), -1, dtype=torch.int64)
        trip = self._triplets.long()
        dense[trip[:, 0], trip[:, 1]] = trip[:, 2]
        return dense[:, self._token_class.long()]

    @property
    def live_states(self) -> frozenset[int]:
        """States from which some token string reaches a final state (DINGO Def. 2.6)."""
        return frozenset(np.flatnonzero(self._live).tolist())

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored automaton (token classes and triplets)."""
        return int(
            self._token_class.numel() * self._token_class.element_size()
            + self._triplets.numel() * self._triplets.element_size()
            + self._live.nbytes
            + self._dist.nbytes
        )

    @property
    def n_transitions(self) -> int:
        """Number of stored ``(state, class) -> state`` triplets."""
        return int(self._triplets.shape[0])

    def __repr__(self) -> str:
        return (
            f"TokenAutomaton(states={self.n_states}, vocab={self.vocab_size}, "
            f"classes={self.n_classes}, triplets={self.n_transitions}, start={self.start}, "
            f"finals={len(self.finals)}, {self.nbytes / 2**20:.2f} MiB)"
        )

    def is_live(self, state: int) -> bool:
        """Whether some string leads from ``state`` to a final state."""
        return bool(self._live[int(state)])

    def min_length(self, state: int | None = None) -> int:
        """The fewest tokens leading from ``state`` (default: start) to a final state; a
        very large number when ``state`` is not live."""
        return int(self._dist[self.start if state is None else int(state)])

    def max_length(self, state: int | None = None) -> int | None:
        """The most tokens (EOS excluded) of a string leading from ``state`` (default: start)
        to a final state, or ``None`` when there is no bound (the automaton loops)."""
        state = self.start if state is None else int(state)
        if not self.is_live(state):
            raise ValueError(f"state {state} is dead: no string from it is accepted")
        succ = self._successors()
        # Depth-first search over live states reachable from `state`: a cycle means no bound;
        # otherwise the longest path to a final state, by memoised recursion (iterative).
        longest: dict[int, int] = {}
        on_path: set[int] = set()
        stack: list[tuple[int, int]] = [(state, 0)]
        while stack:
            q, k = stack.pop()
            if k == 0:
                on_path.add(q)
            nxt = succ[q]
            while k < len(nxt) and nxt[k] in longest:
                k += 1
            if k < len(nxt):
                r = nxt[k]
                if r in on_path:
                    return None
                stack.append((q, k))
                stack.append((r, 0))
                continue
            on_path.discard(q)
            best = 0 if q in self.finals else -1
            for r in nxt:
                if longest[r] >= 0:
                    best = max(best, longest[r] + 1)
            longest[q] = best
        return longest[state]

    def shortest(self, state: int | None = None) -> list[int]:
        """A shortest token string (EOS excluded) from ``state`` (default: start) to a final
        state: one representative token per step, following the distances to the finals."""
        q = self.start if state is None else int(state)
        if not self.is_live(q):
            raise ValueError(f"state {q} is dead: no string from it is accepted")
        trip = self._triplets.long().numpy()
        eos_cls = None if self.eos_id is None else int(self._token_class[self.eos_id])
        rep = np.full(self.n_classes + 1, -1, dtype=np.int64)
        cls = self._token_class.long().numpy()
        rep[cls[::-1]] = np.arange(len(cls))[::-1]  # the smallest token id of every class
        out: list[int] = []
        while q not in self.finals:
            rows = trip[(trip[:, 0] == q) & (trip[:, 1] != (-1 if eos_cls is None else eos_cls))]
            j = int(np.argmin(self._dist[rows[:, 2]]))
            out.append(int(rep[rows[j, 1]]))
            q = int(rows[j, 2])
        return out

    def _successors(self) -> list[list[int]]:
        """Per state, the distinct live successors over non-EOS tokens."""
        trip = self._triplets.long().numpy()
        if self.eos_id is not None:
            trip = trip[trip[:, 1] != int(self._token_class[self.eos_id])]
        trip = trip[self._live[trip[:, 0]] & self._live[trip[:, 2]]]
        succ: list[list[int]] = [[] for _ in range(self.n_states)]
        for q, r in np.unique(trip[:, [0, 2]], axis=0).tolist() if len(trip) else []:
            succ[q].append(r)
        return succ

    def check_length(self, length: int, state: int | None = None) -> None:
        """Raise ``ValueError`` when no string of ``length`` tokens from ``state`` is accepted."""
        state = self.start if state is None else int(state)
        if not self.is_live(state):
            raise ValueError(f"state {state} is dead: no string from it is accepted")
        need = self.min_length(state)
        if need > length:
            raise ValueError(
                f"the constraint needs at least {need} token{'s' * (need != 1)} but only "
                f"{length} remain; increase the generation length"
            )

    def step(self, state: int, token: int) -> int:
        """The state after ``token`` from ``state`` (-1 if forbidden or ``state`` is -1)."""
        state, token = int(state), int(token)
        if not 0 <= state < self.n_states or not 0 <= token < self.vocab_size:
            return -1
        c = int(self._token_class[token])
        trip = self._triplets.numpy()
        lo, hi = np.searchsorted(trip[:, 0], [state, state + 1])
        j = lo + int(np.searchsorted(trip[lo:hi, 1], c))
        if j < hi and int(trip[j, 1]) == c:
            return int(trip[j, 2])
        return -1

    def run(self, tokens: Iterable[int], state: int | None = None) -> int:
        """The state after reading ``tokens`` from ``state`` (default: start); -1 if rejected."""
        q = self.start if state is None else int(state)
        for t in tokens:
            q = self.step(q, int(t))
            if q < 0:
                return -1
        return q

    def advance(self, states: Tensor, tokens: Tensor) -> Tensor:
        """Vectorised :meth:`run`: ``states[B]`` after reading ``tokens[B, L]`` (-1 where a
        row is rejected or starts at -1); on the device of ``tokens``."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        dev = tokens.device
        q = torch.as_tensor(states, dtype=torch.long).to(dev).reshape(-1).clone()
        if q.shape[0] != tokens.shape[0]:
            raise ValueError(f"got {q.shape[0]} states for {tokens.shape[0]} rows")
        trip = self._triplets.long().to(dev)
        width = self.n_classes + 1
        keys = trip[:, 0] * width + trip[:, 1]  # sorted: triplets are ordered by (src, class)
        cls = self._token_class.long().to(dev)
        tokens = tokens.long()
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        for i in range(tokens.shape[1]):
            c = cls[tokens[:, i].clamp(0, self.vocab_size - 1)]
            key = q.clamp_min(0) * width + c
            j = torch.searchsorted(keys, key).clamp_max(max(len(keys) - 1, 0))
            found = (keys[j] == key) if len(keys) else torch.zeros_like(q, dtype=torch.bool)
            nxt = trip[j, 2] if len(keys) else q
            q = torch.where(found & (q >= 0) & ~bad[:, i], nxt, torch.full_like(q, -1))
        return q

    def accepts(self, tokens: Iterable[int], state: int | None = None) -> bool:
        """Whether ``tokens`` read from ``state`` end in a final state."""
        return self.run(tokens, state) in self.finals

    # ------------------------------------------------------------------ decoder tables
    def tables(self, device: torch.device | str = "cpu") -> _Tables:
        """The automaton laid out for the decoders on ``device`` (cached per device)."""
        device = torch.device(device)
        hit = self._device_tables.get(device)
        if hit is not None:
            return hit
        trip = self._triplets.long().numpy()
        live = self._live
        keep = live[trip[:, 0]] & live[trip[:, 2]]
        trip = trip[keep]
        n = self.n_states
        pair_key, trip_pair = np.unique(trip[:, 0] * n + trip[:, 2], return_inverse=True)
        n_pairs = int(pair_key.shape[0])
        p_src, p_dst = pair_key // n, pair_key % n
        indeg = np.bincount(p_dst, minlength=n)
        k = max(int(indeg.max()) if n_pairs else 0, 1)
        pair_in = np.full((n, k), n_pairs, dtype=np.int64)
        order = np.argsort(p_dst, kind="stable")
        starts = np.concatenate([[0], np.cumsum(indeg)[:-1]])
        slot = np.arange(n_pairs) - starts[p_dst[order]]
        pair_in[p_dst[order], slot] = order
        token_class = self._token_class.long()
        out = _Tables(
            token_class=token_class.to(device),
            trip_src=torch.from_numpy(trip[:, 0].copy()).to(device),
            trip_cls=torch.from_numpy(trip[:, 1].copy()).to(device),
            trip_dst=torch.from_numpy(trip[:, 2].copy()).to(device),
            trip_pair=torch.from_numpy(trip_pair.reshape(-1).astype(np.int64)).to(device),
            n_pairs=n_pairs,
            pair_src=torch.from_numpy(p_src.astype(np.int64)).to(device),
            pair_dst=torch.from_numpy(p_dst.astype(np.int64)).to(device),
            pair_in=torch.from_numpy(pair_in).to(device),
            live=torch.from_numpy(live.copy()).to(device),
            dist=torch.from_numpy(self._dist.copy()).to(device),
        )
        self._device_tables[device] = out
        return out

    def end_mask(self, remaining: int | None, device: torch.device | str = "cpu") -> Tensor:
        """States a block may end in: live ones (``remaining=None``, DINGO Alg. 1 line 16) or
        those from which a final state is reachable within ``remaining`` more tokens (so the
        rest of the canvas can still be completed; ``remaining=0`` means final states)."""
        t = self.tables(device)
        if remaining is None:
            return t.live.clone()
        if remaining < 0:
            raise ValueError(f"remaining must be >= 0, got {remaining}")
        return t.live & (t.dist <= int(remaining))


# ---------------------------------------------------------------------- helpers
_UNREACHABLE = np.iinfo(np.int64).max // 4


def _drop_dead_class(
    token_class: np.ndarray, columns: np.ndarray, dead: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Renumber classes so the all-dead column (if any) becomes the sentinel class C."""
    n = columns.shape[0]
    if dead.size == 0:
        return token_class, columns
    d = int(dead[0])
    keep = np.array([i for i in range(n) if i != d], dtype=np.int64)
    remap = np.empty(n, dtype=np.int64)
    remap[keep] = np.arange(n - 1)
    remap[d] = n - 1
    return remap[token_class], columns[keep]


def _live_and_distance(
    n_states: int, triplets: np.ndarray, finals: frozenset[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Backward breadth-first search from the final states: live states (DINGO Def. 2.6) and
    the fewest tokens from each state to a final state."""
    pairs = np.unique(triplets[:, 0] * n_states + triplets[:, 2]) if len(triplets) else []
    preds: list[list[int]] = [[] for _ in range(n_states)]
    for key in pairs:
        preds[int(key) % n_states].append(int(key) // n_states)
    dist = np.full(n_states, _UNREACHABLE, dtype=np.int64)
    queue: deque[int] = deque()
    for f in finals:
        dist[f] = 0
        queue.append(f)
    while queue:
        q = queue.popleft()
        for p in preds[q]:
            if dist[p] == _UNREACHABLE:
                dist[p] = dist[q] + 1
                queue.append(p)
    return dist < _UNREACHABLE, dist


def end_anchored(pattern: str) -> str:
    """``pattern`` behind a one-byte start marker and before the end-of-text assertion ``\\z``:
    ``\\x01(?:pattern)\\z``; :func:`outlines_index` reads the marker first, so the language
    from the state after it is the pattern's.

    * ``\\z``: outlines-core 0.2.14 drops every token transition that enters a regex-automata
      "delayed match" state that is not itself accepting, i.e. a transition that continues
      past an accepting state into a non-accepting one: for ``(ab)+`` it loses ``ab -> aba``,
      for a top-level number it loses ``1 -> 1.``. (Fixed upstream after 0.2.14, commit
      2ba0b24.) With ``\\z`` no match can be recorded before the end of the input, so no such
      state exists and the index is complete.
    * The marker: with ``\\z``, a pattern that matches the empty string (``[a-z]*``) has no
      "anchored universal start state" and outlines-core refuses it; after one consumed byte
      the start no longer depends on look-around.
    """
    return f"\\x01(?:{pattern})\\z"


_MARKER = b"\x01"


def _python_hint(pattern: str) -> str:
    """Python's ``re`` diagnosis of a pattern outlines-core (Rust ``regex``) refused, which
    names the position; empty when ``re`` accepts it (the syntaxes differ slightly)."""
    import re
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except re.error as err:
        return f" ({err})"
    return ""


def outlines_index(
    pattern: str, by_text: dict[bytes, list[int]], eos_id: int, what: str = "regular expression"
) -> tuple[dict[int, dict[int, int]], int, set[int]]:
    """outlines-core's token index of ``pattern`` over the tokens ``by_text`` (bytes -> ids):
    ``(transitions[state][token] -> state, start, finals)``, restricted to the states
    reachable from the start, with EOS self-loops removed. Built through
    :func:`end_anchored`: an extra token id spells the marker byte and is read first."""
    import outlines_core

    marker_id = 1 + max([eos_id, *(i for ids in by_text.values() for i in ids)])
    tokens = dict(by_text)
    tokens[_MARKER] = [*by_text.get(_MARKER, []), marker_id]
    try:
        index = outlines_core.Index(
            end_anchored(pattern), outlines_core.Vocabulary(eos_id, tokens)
        )
    except ValueError as err:
        msg = str(err).replace(end_anchored(pattern), pattern)
        if "incompatible" in msg:  # some reachable state has no way forward
            raise ValueError(f"the vocabulary cannot spell {what} {pattern!r}: {msg}") from None
        raise ValueError(f"invalid {what} {pattern!r}: {msg}{_python_hint(pattern)}") from None
    trans = index.get_transitions()
    finals = set(index.get_final_states())
    start = trans.get(index.get_initial_state(), {}).get(marker_id)
    del index
    if start is None:  # the marker leads nowhere: no string at all
        raise ValueError(f"{what} {pattern!r} accepts no string")
    out: dict[int, dict[int, int]] = {}
    todo = [start]
    seen = {start}
    while todo:  # keep the states reachable from the start, drop the marker and EOS
        q = todo.pop()
        d = trans.get(q, {})
        d.pop(marker_id, None)
        d.pop(eos_id, None)
        out[q] = d
        new = set(d.values()) - seen
        seen |= new
        todo += new
    return out, start, finals & seen


def schema_to_regex(schema: str | dict[str, Any], *, whitespace_pattern: str | None = None) -> str:
    """The regular expression of a JSON schema (a ``dict`` or JSON text): reverie's exact
    translator, :func:`reverie.discrete.constraints.schema.to_regex`; ``ValueError`` for
    invalid JSON, an invalid schema, or a keyword it cannot translate exactly."""
    from reverie.discrete.constraints.schema import to_regex

    return to_regex(schema, whitespace_pattern=whitespace_pattern)


def _build_by_index(cls: type[TokenAutomaton], pattern: str, vocab: Vocabulary) -> TokenAutomaton:
    """The reference build: outlines-core's token index, then class compression."""
    size = len(vocab)
    by_text: dict[bytes, list[int]] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok:  # None (special) and empty tokens never appear in a constrained output
            by_text.setdefault(tok, []).append(i)
    if not by_text:
        raise ValueError("the vocabulary has no ordinary tokens")
    try:
        import outlines_core  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "constraints from regular expressions need outlines-core: pip install outlines-core"
        ) from err
    trans, start_raw, finals_raw = outlines_index(pattern, by_text, vocab.eos_id)
    # Remap outlines' (sparse, dense-DFA) state ids to 0..Q-1 with the start first; one more
    # state, DONE, is reached by EOS from any final state and loops on EOS.
    raw = sorted(set(trans) | finals_raw | {start_raw})
    raw.remove(start_raw)
    raw = [start_raw, *raw]
    ids = {s: i for i, s in enumerate(raw)}
    done = len(raw)
    n_states = done + 1
    keys = np.fromiter(ids.keys(), dtype=np.int64, count=len(ids))
    vals = np.fromiter(ids.values(), dtype=np.int64, count=len(ids))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    # Token classes by partition refinement, one state at a time: a token's label becomes the
    # pair (old label, next state in this state), touched only for the tokens valid there.
    label = np.zeros(size, dtype=np.int64)
    n_labels = 1
    per_state: list[tuple[int, np.ndarray, np.ndarray]] = []
    eos = vocab.eos_id
    for s_raw in list(trans):
        d = trans.pop(s_raw)  # free outlines' dict as we go
        toks = np.fromiter(d.keys(), dtype=np.int64, count=len(d))
        nxt_raw = np.fromiter(d.values(), dtype=np.int64, count=len(d))
        keep = toks != eos  # outlines' EOS self-loops are replaced by EOS -> DONE
        toks, nxt_raw = toks[keep], nxt_raw[keep]
        if toks.size == 0:
            continue
        nxt = vals[np.searchsorted(keys, nxt_raw)]
        q = ids[s_raw]
        per_state.append((q, toks.astype(np.int32), nxt.astype(np.int32)))
        _, inv = np.unique(label[toks] * n_states + nxt, return_inverse=True)
        label[toks] = n_labels + inv.reshape(-1)
        n_labels += int(inv.max()) + 1
    # EOS: its own class, valid from every final state and from DONE.
    eos_finals = sorted(ids[f] for f in finals_raw)
    label[eos] = n_labels
    n_labels += 1
    # Dead tokens: never valid (specials, the mask, empty tokens) -> sentinel class.
    dead = np.array([tok is None or len(tok) == 0 for tok in vocab.tokens]) | (label == 0)
    dead[eos] = False
    label[dead] = -1
    uniq, token_class = np.unique(label, return_inverse=True)
    token_class = token_class.reshape(-1)
    if uniq[0] == -1:  # the dead label sorts first: move it to the sentinel C
        token_class = token_class - 1
        n_classes = int(uniq.shape[0]) - 1
        token_class[dead] = n_classes
    else:
        n_classes = int(uniq.shape[0])
    rows = []
    for q, toks, nxt in per_state:
        cls_ids = token_class[toks]
        _, first = np.unique(cls_ids, return_index=True)
        rows.append(np.stack([np.full(first.shape, q), cls_ids[first], nxt[first]], axis=1))
    eos_cls = int(token_class[eos])
    for q in [*eos_finals, done]:
        rows.append(np.array([[q, eos_cls, done]], dtype=np.int64))
    triplets = np.concatenate(rows, axis=0).astype(np.int64)
    finals = {*eos_finals, done}
    automaton = cls._from_triplets(n_states, size, token_class, n_classes, triplets, 0, finals,
                                   vocab.eos_id, vocab.mask_id)
    if not automaton.is_live(0):
        raise ValueError(f"regular expression {pattern!r} accepts no string over this vocabulary")
    return automaton


def byte_dfa(pattern: str) -> tuple[dict[int, dict[int, int]], int, frozenset[int]]:
    """The pattern's byte-level DFA: outlines-core's index over the 256 one-byte tokens."""
    trans, start, finals = outlines_index(pattern, {bytes([b]): [b] for b in range(256)}, 256)
    return trans, start, frozenset(finals)


@lru_cache(maxsize=64)
def _dense_byte_dfa(pattern: str) -> ByteDFA:
    return ByteDFA.from_dict(*byte_dfa(pattern))


def _build_by_trie(cls: type[TokenAutomaton], pattern: str, vocab: Vocabulary) -> TokenAutomaton:
    """The token automaton by a trie walk over the byte DFA (:mod:`._trie`); the same
    automaton as :func:`_build_by_index`, state numbering included."""
    dfa = _dense_byte_dfa(pattern)
    trie = token_trie(vocab)
    if not len(trie):
        raise ValueError("the vocabulary has no ordinary tokens")
    string_cls, cols = token_columns(dfa, trie)
    sink = dfa.n_states
    # States reachable from the start by tokens (breadth first over the class columns).
    reach = np.zeros(sink + 1, dtype=bool)
    reach[[0, sink]] = True
    frontier = np.array([0])
    while frontier.size:
        nxt = np.unique(cols[frontier])
        frontier = nxt[~reach[nxt]]
        reach[frontier] = True
    reach[sink] = False
    states = np.flatnonzero(reach)  # ascending with the start (0) first, as the index build
    stuck = states[~dfa.finals[states] & (cols[states] == sink).all(axis=1)]
    if stuck.size:  # as outlines-core's index: a reachable state no token continues
        need = np.flatnonzero(dfa.table[stuck[0]] != sink)
        raise ValueError(
            f"the vocabulary cannot spell regular expression {pattern!r}: no token continues "
            f"it in some reachable state, which needs one of the bytes {bytes(need.tolist())!r}"
        )
    # Renumber the reachable states 0..Q-1; DONE = Q is reached by EOS from every final.
    new_id = np.full(sink + 1, -1, dtype=np.int64)
    new_id[states] = np.arange(len(states))
    done = len(states)
    table = new_id[cols[states]]  # [Q, C'] with -1 = forbidden
    # Classes over the reachable states only: merge columns that differ only elsewhere.
    columns, merged = unique_rows(table.T)
    dead = (columns == -1).all(axis=1)
    renum = np.cumsum(~dead) - 1
    n_plain = int((~dead).sum())
    eos_cls, n_classes = n_plain, n_plain + 1
    # Final class per trie class, then per string, then per token; a trailing -1 answers the
    # index -1 (a string valid nowhere, a special or empty token).
    final_of = np.append(np.where(dead[merged], -1, renum[merged]), -1)
    class_of_string = np.append(final_of[string_cls], -1)
    token_class = class_of_string[trie.string_of]
    token_class[token_class < 0] = n_classes  # specials, mask, dead tokens -> sentinel
    token_class[vocab.eos_id] = eos_cls
    columns = columns[~dead]  # [n_plain, Q]
    c_idx, q_idx = np.nonzero(columns >= 0)
    finals = [int(q) for q in new_id[states[dfa.finals[states]]]]
    eos_rows = np.array([[q, eos_cls, done] for q in [*finals, done]], dtype=np.int64)
    triplets = np.concatenate(
        [np.stack([q_idx, c_idx, columns[c_idx, q_idx]], axis=1), eos_rows])
    automaton = cls._from_triplets(done + 1, len(vocab), token_class, n_classes, triplets, 0,
                                   [*finals, done], vocab.eos_id, vocab.mask_id)
    if not automaton.is_live(0):
        raise ValueError(f"regular expression {pattern!r} accepts no string over this vocabulary")
    return automaton

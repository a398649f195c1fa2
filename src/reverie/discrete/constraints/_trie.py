"""Token automata by walking the vocabulary's byte trie over the pattern's byte DFA.

outlines-core's token index walks every token's bytes from every state from scratch, then
reverie compresses the ~10M resulting (state, token) pairs into ~150 token classes. Here the
distinct token strings form a byte trie (a shared prefix is one node), and the trie is walked
breadth first over the byte DFA for all states at once, one NumPy call per depth
(:func:`token_columns`). A node carries the id of its *row* (its state from every source
state, after deduplication); the few thousand distinct rows are what is computed, not the
~10M (state, token) pairs, and equal columns give the token classes exactly (no hashing).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from reverie.discrete.constraints._vocabulary import Vocabulary

__all__ = ["ByteDFA", "TokenTrie", "token_columns"]


@dataclass(frozen=True)
class ByteDFA:
    """A dense byte DFA: ``table[q, b]`` is the state after byte ``b`` from ``q``, or the
    sink ``n_states`` (a row of its own, mapping to itself). State 0 is the start; the
    others are numbered in the order of outlines-core's ids, as :func:`_build_by_index`
    numbers them."""

    table: np.ndarray  # int32 [S + 1, 256]
    finals: np.ndarray  # bool [S]

    @property
    def n_states(self) -> int:
        return int(self.finals.shape[0])

    @classmethod
    def from_dict(cls, trans: dict[int, dict[int, int]], start: int,
                  finals: frozenset[int]) -> ByteDFA:
        """From :func:`~reverie.discrete.constraints.automaton.byte_dfa`'s output."""
        raw = sorted(set(trans) | {start} | {r for d in trans.values() for r in d.values()})
        raw.remove(start)
        raw = [start, *raw]
        ids = {r: i for i, r in enumerate(raw)}
        sink = len(raw)
        table = np.full((sink + 1, 256), sink, dtype=np.int32)
        for r, d in trans.items():
            if d:
                byte = np.fromiter(d.keys(), np.int64, len(d))
                table[ids[r], byte] = [ids[x] for x in d.values()]
        is_final = np.array([r in finals for r in raw], dtype=bool)
        return cls(table, is_final)


class TokenTrie:
    """The distinct non-empty token strings of a vocabulary as a byte trie, by depth.

    Strings are sorted, so the nodes of each depth are numbered in string order and the
    children of a node are a contiguous run of the next depth. Per depth ``d`` (1-based):
    ``byte[d-1]`` the byte of each node, ``first_child[d-1]`` / ``n_children[d-1]`` its
    children at depth ``d+1``, ``string_at[d-1]`` the string ending at the node or -1.
    ``string_of[t]`` is token ``t``'s string (-1 for special and empty tokens).
    """

    def __init__(self, vocab: Vocabulary) -> None:
        toks = vocab.tokens
        ids = [i for i, t in enumerate(toks) if t]
        strings = sorted({toks[i] for i in ids})
        index = {s: k for k, s in enumerate(strings)}
        self.string_of = np.full(len(toks), -1, dtype=np.int64)
        self.string_of[ids] = [index[toks[i]] for i in ids]
        self.strings = strings
        n = len(strings)
        lens = np.fromiter(map(len, strings), np.int64, n)
        depth = int(lens.max()) if n else 0
        # Byte matrix, zero-padded; lcp[k] = longest common prefix of strings k-1 and k.
        mat = np.frombuffer(b"".join(s.ljust(depth, b"\0") for s in strings), np.uint8)
        mat = mat.reshape(n, depth)
        lcp = np.zeros(n, dtype=np.int64)
        if n > 1:
            differ = mat[1:] != mat[:-1]
            first_diff = np.where(differ.any(axis=1), differ.argmax(axis=1), depth)
            lcp[1:] = np.minimum(first_diff, np.minimum(lens[1:], lens[:-1]))
        self.byte: list[np.ndarray] = []
        self.string_at: list[np.ndarray] = []
        parents: list[np.ndarray] = []
        node_of = np.zeros(n, dtype=np.int64)  # node of each string at the previous depth
        for d in range(1, depth + 1):
            act = np.flatnonzero(lens >= d)  # strings that reach depth d (contiguous runs)
            new = lcp[act] < d  # the first string of each node at depth d
            node = np.cumsum(new) - 1
            parents.append(node_of[act][new])
            self.byte.append(mat[act[new], d - 1].astype(np.int64))
            ends = np.full(int(new.sum()), -1, dtype=np.int64)
            done = lens[act] == d
            ends[node[done]] = act[done]
            self.string_at.append(ends)
            node_of[act] = node
        # Children of depth-d nodes: a run of depth d+1, found from the (sorted) parents.
        self.first_child: list[np.ndarray] = []
        self.n_children: list[np.ndarray] = []
        for d in range(depth):
            count = len(self.byte[d])
            if d + 1 < depth:
                bounds = np.searchsorted(parents[d + 1], np.arange(count + 1))
            else:
                bounds = np.zeros(count + 1, dtype=np.int64)
            self.first_child.append(bounds[:-1])
            self.n_children.append(np.diff(bounds))
        self.n_nodes = sum(len(b) for b in self.byte)

    def __len__(self) -> int:
        return len(self.strings)


_TRIES: weakref.WeakValueDictionary[str, TokenTrie] = weakref.WeakValueDictionary()
_LAST_TRIES: list[TokenTrie] = []  # strong references to the most recent few
_TRIES_LOCK = threading.Lock()


def token_trie(vocab: Vocabulary) -> TokenTrie:
    """The :class:`TokenTrie` of ``vocab``, memoised by fingerprint (the 4 most recent)."""
    trie = _TRIES.get(vocab.fingerprint)
    if trie is None:
        trie = TokenTrie(vocab)
    with _TRIES_LOCK:
        trie = _TRIES.setdefault(vocab.fingerprint, trie)
        if trie in _LAST_TRIES:
            _LAST_TRIES.remove(trie)
        _LAST_TRIES.insert(0, trie)
        del _LAST_TRIES[4:]
    return trie


def _expand(trie: TokenTrie, d: int, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The children (at depth d+2, 1-based) of the depth-(d+1) ``node`` entries, and for each
    child the position of its parent entry in ``node``."""
    count = trie.n_children[d][node]
    total = int(count.sum())
    src = np.repeat(np.arange(len(node)), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    return trie.first_child[d][node][src] + offset, src


def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, axis=0, return_inverse=True)`` of a 2-D array, by sorting each row's
    bytes as one value (NumPy's ``axis=0`` sorts a structured view, several times slower)."""
    a = np.ascontiguousarray(a)
    flat = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1)
    _, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    return a[first], inv.reshape(-1)


def _unique_ints(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` for ints in ``[0, size)``; by a presence table
    (no sort) when ``size`` is small."""
    if size > 1 << 22:
        uniq, inv = np.unique(key, return_inverse=True)
        return uniq, inv.reshape(-1)
    present = np.zeros(size, dtype=bool)
    present[key] = True
    index = np.cumsum(present) - 1
    return np.flatnonzero(present), index[key]


def token_columns(dfa: ByteDFA, trie: TokenTrie) -> tuple[np.ndarray, np.ndarray]:
    """Token strings grouped by column: ``(cls [n_strings], columns [S, C])``, where
    ``columns[q, c]`` is the state after any string of class ``c`` from byte state ``q`` (the
    sink ``S`` if forbidden) and ``cls`` is -1 for strings valid from no state.

    The trie is walked breadth first by *rows*. A node's row holds its state in every column;
    the columns of a first-byte subtree are the distinct states after that byte (so the
    subtree is walked once per distinct state, not once per source state). Most nodes share
    their row with many others (inside a JSON string, "ab" and "cd" lead to the same states),
    so rows are deduplicated at every depth, the next rows are computed once per distinct
    (row, byte), and a node carries only its row's id. Where a string ends, its (row, first
    byte) gives its column over all source states; equal columns are one class, exactly.
    """
    table, sink = dfa.table, dfa.n_states
    cls = np.full(len(trie), -1, dtype=np.int64)
    if not len(trie):
        return cls, np.zeros((sink, 0), dtype=table.dtype)
    n1 = len(trie.byte[0])
    # Columns of each first-byte node: the distinct states after its byte, ranked.
    after = table[:sink, trie.byte[0]]  # [S, n1]
    pairs, pair_of = _unique_ints((np.arange(n1) * (sink + 1) + after).reshape(-1),
                                  n1 * (sink + 1))
    p_node, p_state = pairs // (sink + 1), pairs % (sink + 1)
    rank = np.arange(len(pairs)) - np.searchsorted(p_node, p_node)  # column within the row
    first = np.full((n1, int(rank.max()) + 1), sink, dtype=table.dtype)
    first[p_node, rank] = p_state
    pos = rank[pair_of].reshape(sink, n1).T  # pos[node, q]: the column that source q reads
    rows, row_id = unique_rows(first)
    node = root = np.arange(n1)
    pieces: list[np.ndarray] = []  # per distinct (row, first byte) where strings end: column
    piece_of = np.full(len(trie), -1, dtype=np.int64)
    n_pieces = 0
    for d in range(len(trie.byte)):
        keep = ~(rows == sink).all(axis=1)[row_id]  # drop the nodes dead in every column
        node, root, row_id = node[keep], root[keep], row_id[keep]
        ends = trie.string_at[d][node]
        hit = np.flatnonzero(ends >= 0)
        if hit.size:  # strings ending here: their columns over all source states
            pair, inv = _unique_ints(row_id[hit] * n1 + root[hit], len(rows) * n1)
            pieces.append(rows[(pair // n1)[:, None], pos[pair % n1]])
            piece_of[ends[hit]] = n_pieces + inv
            n_pieces += len(pair)
        if d + 1 == len(trie.byte) or not len(node):
            break
        child, src = _expand(trie, d, node)
        step, inv = _unique_ints(row_id[src] * 256 + trie.byte[d + 1][child], len(rows) * 256)
        rows, rid = unique_rows(table[rows[step // 256], (step % 256)[:, None]])
        node, root, row_id = child, root[src], rid[inv]
    if not pieces:
        return cls, np.zeros((sink, 0), dtype=table.dtype)
    columns, piece_cls = unique_rows(np.concatenate(pieces))
    live = piece_of >= 0
    cls[live] = piece_cls[piece_of[live]]
    return cls, columns.T

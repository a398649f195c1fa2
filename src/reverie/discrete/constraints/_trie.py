"""Token automata by walking the vocabulary's byte trie over the pattern's byte DFA.

outlines-core's token index walks every token's bytes from every state from scratch, then
reverie compresses the ~10M resulting (state, token) pairs into ~150 token classes. Here the
distinct token strings form a byte trie (a shared prefix is one node, walked once per state);
the trie is walked breadth first over the byte DFA, one NumPy call per depth, from the
distinct states after each first byte and dropping dead (node, state) pairs as it goes
(the variants "v3/v4" of /research/constraints_speed.md §3a). No (state, token) table is kept:
each token's column is folded into a 128-bit random hash, tokens with equal hashes form a
class, and one representative per class is walked again to get the class's column.
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
    sink ``n_states`` (a row of its own, mapping to itself); ``raw[q]`` is outlines-core's id
    of state ``q`` (``q = 0`` is the start)."""

    table: np.ndarray  # int32 [S + 1, 256]
    finals: np.ndarray  # bool [S]
    raw: np.ndarray  # int64 [S]

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
        return cls(table, is_final, np.asarray(raw, dtype=np.int64))


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
        self.lengths = lens
        depth = int(lens.max()) if n else 0
        # Byte matrix, zero-padded; lcp[k] = longest common prefix of strings k-1 and k.
        mat = np.frombuffer(b"".join(s.ljust(depth, b"\0") for s in strings), np.uint8)
        self.matrix = mat.reshape(n, depth)
        lcp = np.zeros(n, dtype=np.int64)
        if n > 1:
            differ = self.matrix[1:] != self.matrix[:-1]
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
            self.byte.append(self.matrix[act[new], d - 1].astype(np.int64))
            ends = np.full(int(new.sum()), -1, dtype=np.int64)
            done = lens[act] == d
            ends[node[done]] = act[done]
            self.string_at.append(ends)
            node_of[act] = node
        self.parent = parents  # per depth, each node's parent at the previous depth
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


#: States that may start more than this share of the token strings are walked densely.
WIDE = 0.1
#: Columns (distinct states after a first byte) per dense pass; memory: nodes of one depth x
#: this x 4 bytes for the states, x 16 bytes for the hashes of the strings ending there.
DENSE_BATCH = 64


def _expand(trie: TokenTrie, d: int, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The children (at depth d+2, 1-based) of the depth-(d+1) ``node`` entries, and for each
    child the position of its parent entry in ``node``."""
    count = trie.n_children[d][node]
    total = int(count.sum())
    src = np.repeat(np.arange(len(node)), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    return trie.first_child[d][node][src] + offset, src


def _first_pairs(dfa: ByteDFA, trie: TokenTrie, qs: np.ndarray,
                 weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct live (first-byte node, state after it) pairs from the states ``qs``, sorted
    by node, with the summed weights ``R_q`` of the q's that lead to each: the subtree below
    a first byte is walked once per distinct state, not once per source state."""
    sink = dfa.n_states
    after = dfa.table[qs][:, trie.byte[0]]  # [K, n1]
    key = np.arange(after.shape[1])[None, :] * (sink + 1) + after
    pair_key, pair_of = np.unique(key.ravel(), return_inverse=True)
    pair_w = np.zeros((2, len(pair_key)), dtype=np.uint64)
    for h in range(2):
        np.add.at(pair_w[h], pair_of.ravel(),
                  np.broadcast_to(weights[h][qs][:, None], after.shape).ravel())
    live = pair_key % (sink + 1) != sink
    return pair_key[live] // (sink + 1), pair_key[live] % (sink + 1), pair_w[:, live]


def _walk_sparse(dfa: ByteDFA, trie: TokenTrie, qs: np.ndarray, weights: np.ndarray,
                 codes: np.ndarray, hashes: np.ndarray, valid: np.ndarray, depth: int) -> None:
    """Add the source states ``qs`` to the column hashes, walking (node, state) pairs and
    dropping dead pairs at every depth. Suits "narrow" states, from which few tokens are
    valid."""
    table, sink = dfa.table, dfa.n_states
    node, state, pair_w = _first_pairs(dfa, trie, qs, weights)
    state = state.astype(np.int32)
    pair = np.arange(len(node))
    for d in range(depth):
        # Strings ending at this depth: fold (pair weight) * code(end state) into their hash.
        ends = trie.string_at[d][node]
        hit = ends >= 0
        s_end, p_end, state_end = ends[hit], pair[hit], state[hit]
        valid[s_end] = True
        for h in range(2):
            np.add.at(hashes[h], s_end, pair_w[h][p_end] * codes[h][state_end])
        if d + 1 == depth or len(node) == 0:
            break
        # Expand every (node, state) to the node's children, one byte further; drop the dead.
        child, src = _expand(trie, d, node)
        nxt = table[state[src], trie.byte[d + 1][child]]
        keep = nxt != sink
        node, state, pair = child[keep], nxt[keep], pair[src[keep]]


def _walk_dense(dfa: ByteDFA, trie: TokenTrie, qs: np.ndarray, weights: np.ndarray,
                codes: np.ndarray, hashes: np.ndarray, valid: np.ndarray, depth: int) -> None:
    """Add the source states ``qs`` to the column hashes, walking trie nodes with a row of
    states per node: row = the distinct states after the node's first byte (padded with the
    sink), dropping nodes dead in every column. Suits "wide" states, from which most tokens
    are valid (inside a JSON string): no per-pair bookkeeping."""
    sink = dfa.n_states
    table = dfa.table.astype(np.int16) if sink < 2**15 else dfa.table  # less memory traffic
    p_node, p_state, p_w = _first_pairs(dfa, trie, qs, weights)
    n1 = len(trie.byte[0])
    starts = np.searchsorted(p_node, np.arange(n1 + 1))
    rank = np.arange(len(p_node)) - starts[p_node]  # column of each pair in its node's row
    width = int(rank.max()) + 1 if len(rank) else 0
    for j in range(0, width, DENSE_BATCH):  # column chunks are independent
        cols = (rank >= j) & (rank < j + DENSE_BATCH)
        k = min(DENSE_BATCH, width - j)
        state = np.full((n1, k), sink, dtype=table.dtype)
        state[p_node[cols], rank[cols] - j] = p_state[cols]
        w0 = np.zeros((2, n1, k), dtype=np.uint64)  # weight of each (first-byte row, column)
        w0[:, p_node[cols], rank[cols] - j] = p_w[:, cols]
        node = root = np.arange(n1)
        for d in range(depth):
            alive = (state != sink).any(axis=1)
            node, root, state = node[alive], root[alive], state[alive]
            ends = trie.string_at[d][node]
            hit = np.flatnonzero(ends >= 0)
            if hit.size:  # each string ends at one node: plain (unbuffered) += is exact
                end = state[hit]
                valid[ends[hit]] |= (end != sink).any(axis=1)
                hashes[:, ends[hit]] += (codes[:, end] * w0[:, root[hit]]).sum(axis=2)
            if d + 1 == depth or len(node) == 0:
                break
            child, src = _expand(trie, d, node)
            state = table[state[src], trie.byte[d + 1][child][:, None]]
            node, root = child, root[src]


def _share_alive(dfa: ByteDFA, trie: TokenTrie) -> np.ndarray:
    """Per state, the share of token strings whose first two bytes (or only byte) it can
    read: an estimate of how much of the trie a walk from it visits."""
    table, sink = dfa.table, dfa.n_states
    m, lens = trie.matrix, trie.lengths
    one = np.bincount(m[lens == 1, 0], minlength=256).astype(np.float64)
    two = np.zeros((256, 256))
    if m.shape[1] > 1:  # some string has two bytes
        np.add.at(two, (m[lens > 1, 0], m[lens > 1, 1]), 1.0)
    ok = (table != sink).astype(np.float64)  # [S + 1, 256], the sink row all 0
    after = ok @ two.T  # after[u, b1]: strings b1 b2.. whose b2 state u can read
    return (ok[:sink] @ one + after[table[:sink], np.arange(256)].sum(axis=1)) / len(trie)


def _walk(dfa: ByteDFA, trie: TokenTrie, weights: np.ndarray, codes: np.ndarray,
          wide: float = WIDE) -> tuple[np.ndarray, np.ndarray]:
    """Per token string: a 2x64-bit hash of its column ``(delta(q, s))_q`` over all byte
    states (``sum_q R_q * C[delta(q, s)]`` mod 2**64, dead = 0) and whether it is valid
    anywhere. ``weights`` is ``R`` [2, S], ``codes`` is ``C`` [2, S + 1] with ``C[sink] = 0``.
    States whose first bytes start more than ``wide`` of the strings go to the dense walk,
    the others to the sparse one (the hash is a sum over states, so they simply add up)."""
    n = len(trie)
    hashes = np.zeros((2, n), dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    if n == 0:
        return hashes, valid
    depth = len(trie.byte)
    reach = _share_alive(dfa, trie)
    dense = np.flatnonzero(reach > wide)
    _walk_sparse(dfa, trie, np.flatnonzero(reach <= wide), weights, codes, hashes, valid, depth)
    if dense.size:
        _walk_dense(dfa, trie, dense, weights, codes, hashes, valid, depth)
    return hashes, valid


def token_columns(dfa: ByteDFA, trie: TokenTrie,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token classes of identical columns over all byte states: ``(cls [n_strings] with -1
    for strings valid nowhere, columns [S, C])``, where ``columns[q, c]`` is the state
    after any string of class ``c`` from ``q`` (the sink ``S`` if forbidden)."""
    rng = np.random.default_rng(seed)
    sink = dfa.n_states
    weights = rng.integers(0, 2**63, size=(2, sink), dtype=np.int64).astype(np.uint64) * 2 + 1
    codes = rng.integers(0, 2**63, size=(2, sink + 1), dtype=np.int64).astype(np.uint64) * 2 + 1
    codes[:, sink] = 0  # a dead end adds nothing
    hashes, valid = _walk(dfa, trie, weights, codes)
    cls = np.full(len(trie), -1, dtype=np.int64)
    live = np.flatnonzero(valid)
    if live.size == 0:
        return cls, np.zeros((sink, 0), dtype=np.int64)
    _, rep, inv = np.unique(hashes[:, live].T, axis=0, return_index=True, return_inverse=True)
    cls[live] = inv.reshape(-1)
    # One representative string per class, walked from every state: the class's column.
    reps = live[rep]
    mat, lens = trie.matrix[reps], trie.lengths[reps]
    cols = np.broadcast_to(np.arange(sink)[:, None], (sink, len(reps))).copy()
    for j in range(int(lens.max())):
        on = np.flatnonzero(lens > j)
        cols[:, on] = dfa.table[cols[:, on], mat[on, j]]
    return cls, cols

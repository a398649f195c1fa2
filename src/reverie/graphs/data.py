"""Small synthetic graph families as dense adjacency matrices ``[N, N]`` (symmetric, 0/1,
zero diagonal): random trees, grids, stochastic-block (community) graphs, Erdos-Renyi, and
every labelled graph on a few nodes (for exact, enumerable graph laws)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from reverie._checks import positive_int

__all__ = ["check_adjacency", "triu", "from_triu", "tree", "grid", "sbm", "erdos_renyi",
           "all_graphs", "FAMILIES", "family"]


def check_adjacency(a: Tensor, name: str = "adjacency") -> Tensor:
    """Raise ``ValueError`` unless ``a`` is ``[..., N, N]`` and symmetric; returns ``a``."""
    if not isinstance(a, Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise ValueError(f"{name} must be a square [..., N, N] tensor, got {got}")
    if not torch.allclose(a, a.transpose(-1, -2)):
        raise ValueError(f"{name} must be symmetric (A == A^T)")
    return a


def triu(a: Tensor) -> Tensor:
    """The strict upper triangle ``[..., N(N-1)/2]`` of ``[..., N, N]`` matrices."""
    n = a.shape[-1]
    i, j = torch.triu_indices(n, n, 1)
    return a[..., i, j]


def from_triu(v: Tensor, n: int) -> Tensor:
    """The symmetric zero-diagonal ``[..., n, n]`` matrix with strict upper triangle ``v``."""
    if v.shape[-1] != n * (n - 1) // 2:
        raise ValueError(f"expected {n * (n - 1) // 2} upper-triangle entries for n={n}, "
                         f"got {v.shape[-1]}")
    i, j = torch.triu_indices(n, n, 1)
    out = v.new_zeros(*v.shape[:-1], n, n)
    out[..., i, j] = v
    return out + out.transpose(-1, -2)


def _edges(n: int, pairs) -> Tensor:
    a = torch.zeros(n, n)
    for i, j in pairs:
        a[i, j] = a[j, i] = 1.0
    return a


def tree(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniform random labelled tree on ``n`` nodes (decoded from a random Pruefer code)."""
    positive_int("n", n)
    if n < 3:
        return _edges(n, [(0, 1)] if n == 2 else [])
    code = torch.randint(n, (n - 2,), generator=generator).tolist()
    degree = [1] * n
    for c in code:
        degree[c] += 1
    pairs = []
    for c in code:  # Pruefer decoding: join the smallest leaf to the next code entry
        leaf = min(i for i in range(n) if degree[i] == 1)
        pairs.append((leaf, c))
        degree[leaf] -= 1
        degree[c] -= 1
    u, v = [i for i in range(n) if degree[i] == 1]
    return _edges(n, pairs + [(u, v)])


def grid(rows: int, cols: int) -> Tensor:
    """The ``rows x cols`` 2-D lattice graph (node ``r * cols + c``)."""
    positive_int("rows", rows), positive_int("cols", cols)
    idx = lambda r, c: r * cols + c  # noqa: E731
    pairs = [(idx(r, c), idx(r, c + 1)) for r in range(rows) for c in range(cols - 1)]
    pairs += [(idx(r, c), idx(r + 1, c)) for r in range(rows - 1) for c in range(cols)]
    return _edges(rows * cols, pairs)


def sbm(sizes: list[int], p_in: float, p_out: float,
        generator: torch.Generator | None = None) -> Tensor:
    """A stochastic-block (community) graph: blocks of ``sizes``, edge probability ``p_in``
    within a block and ``p_out`` between blocks, independently per pair."""
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    p = torch.where(block[:, None] == block[None, :], p_in, p_out)
    n = len(block)
    u = torch.rand(n * (n - 1) // 2, generator=generator)
    return from_triu((u < triu(p)).float(), n)


def erdos_renyi(n: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """G(n, p): every pair an edge with probability ``p`` (the baseline family)."""
    return sbm([n], p, p, generator)


def all_graphs(n: int) -> Tensor:
    """Every labelled graph on ``n`` nodes, ``[2^(n(n-1)/2), n, n]`` (n <= 5)."""
    if not 1 <= n <= 5:
        raise ValueError(f"all_graphs enumerates n in 1..5 nodes, got {n}")
    m = n * (n - 1) // 2
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=m))).reshape(-1, m)
    return from_triu(bits, n)


#: name -> ``fn(generator) -> [N, N]`` for the bench's families.
FAMILIES = {
    "tree": lambda g: tree(12, g),
    "grid": lambda g: grid(3, 4),
    "community": lambda g: sbm([6, 6], 0.7, 0.05, g),
    "erdos_renyi": lambda g: erdos_renyi(12, 0.25, g),
}


def family(name: str, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` graphs ``[count, N, N]`` of a family in :data:`FAMILIES`."""
    if name not in FAMILIES:
        raise ValueError(f"unknown graph family {name!r}; expected one of {', '.join(FAMILIES)}")
    return torch.stack([FAMILIES[name](generator) for _ in range(positive_int("count", count))])

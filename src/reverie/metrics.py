"""Distances between sample sets and exact distributions (used by tests and benchmarks)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._random import Generators

__all__ = ["sliced_wasserstein", "mode_weights", "mode_weight_error", "sliced_wasserstein_floor"]


def _quantiles(v: Tensor, n: int) -> Tensor:
    """``n`` evenly spaced empirical quantiles of each column of ``v`` (sorted, interpolated)."""
    v = v.sort(dim=0).values
    if v.shape[0] == n:
        return v
    pos = (torch.arange(n, dtype=v.dtype) + 0.5) / n * v.shape[0] - 0.5
    pos = pos.clamp(0, v.shape[0] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=v.shape[0] - 1)
    w = (pos - lo).unsqueeze(1)
    return (1 - w) * v[lo] + w * v[hi]


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int = 256, generator: Generators = None, p: int = 2
) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(E_u W2^2(u.x, u.y))`` over random unit directions
    ``u`` (Rabin et al. 2011), between two sample sets ``[n, D]`` and ``[m, D]``.

    ``p = 1`` gives the mean over directions of the 1-Wasserstein distance ``E_u W1(u.x, u.y)``
    (the convention of the MCGdiff Gaussian-mixture benchmark, Cardoso et al. 2024)."""
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    g = generator if isinstance(generator, torch.Generator) else None
    u = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    n = max(x.shape[0], y.shape[0])
    px, py = _quantiles(x @ u, n), _quantiles(y @ u, n)
    if p == 1:
        return float((px - py).abs().mean())
    return math.sqrt(float(((px - py) ** 2).mean()))


def sliced_wasserstein_floor(
    sampler, n: int, repeats: int = 5, projections: int = 256, generator: Generators = None
) -> float:
    """Mean sliced-W2 between two independent exact sample sets of size ``n``: the sampling
    noise floor against which a method's distance is judged. ``sampler(n) -> [n, D]``."""
    vals = [
        sliced_wasserstein(sampler(n), sampler(n), projections, generator) for _ in range(repeats)
    ]
    return sum(vals) / len(vals)


def mode_weights(x: Tensor, mixture) -> Tensor:
    """Fraction of samples assigned to each mixture component (most probable component)."""
    comp = mixture.classify(x.reshape(x.shape[0], -1))
    return torch.bincount(comp, minlength=mixture.n_components).to(torch.float64) / x.shape[0]


def mode_weight_error(x: Tensor, mixture) -> float:
    """Total variation between the empirical mode weights and the exact ones (well-separated
    modes: the assignment by most probable component is then exact up to overlap)."""
    return 0.5 * float((mode_weights(x, mixture) - mixture.weights).abs().sum())

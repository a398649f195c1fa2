"""Graph statistics and the MMD between sets of graphs as in GDSS's evaluation (Jo et al. 2022,
following GraphRNN, You et al. 2018): degree and clustering-coefficient histograms and the
normalised-Laplacian spectrum, compared by a Gaussian kernel on the total-variation distance
of the histograms (``k(p, q) = exp(-TV(p, q)^2 / (2 s^2))``)."""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.graphs.data import check_adjacency

__all__ = ["degree_hist", "clustering_hist", "spectrum_hist", "STATS", "mmd", "graph_mmd"]


def degree_hist(a: Tensor, bins: int = 16) -> Tensor:
    """Normalised degree histograms ``[B, bins]`` (degrees 0..bins-1, larger clipped)."""
    deg = a.sum(-1).round().long().clamp(max=bins - 1)
    h = torch.nn.functional.one_hot(deg, bins).to(torch.float64).sum(-2)
    return h / h.sum(-1, keepdim=True)


def clustering_hist(a: Tensor, bins: int = 10) -> Tensor:
    """Histograms ``[B, bins]`` on [0, 1] of the local clustering coefficients
    ``triangles_i / (d_i (d_i - 1) / 2)`` (0 where ``d_i < 2``)."""
    a = a.to(torch.float64)
    tri = torch.diagonal(a @ a @ a, dim1=-2, dim2=-1) / 2
    d = a.sum(-1)
    c = torch.where(d > 1, tri / (d * (d - 1) / 2).clamp(min=1), torch.zeros_like(d))
    idx = (c * bins).long().clamp(max=bins - 1)
    h = torch.nn.functional.one_hot(idx, bins).to(torch.float64).sum(-2)
    return h / h.sum(-1, keepdim=True)


def spectrum_hist(a: Tensor, bins: int = 20) -> Tensor:
    """Histograms ``[B, bins]`` on [0, 2] of the normalised-Laplacian eigenvalues."""
    a = a.to(torch.float64)
    d = a.sum(-1)
    inv = torch.where(d > 0, d.clamp(min=1e-12).rsqrt(), torch.zeros_like(d))
    lap = torch.eye(a.shape[-1], dtype=a.dtype) - inv[..., :, None] * a * inv[..., None, :]
    ev = torch.linalg.eigvalsh(lap).clamp(0, 2)
    idx = (ev / 2 * bins).long().clamp(max=bins - 1)
    h = torch.nn.functional.one_hot(idx, bins).to(torch.float64).sum(-2)
    return h / h.sum(-1, keepdim=True)


STATS = {"degree": degree_hist, "clustering": clustering_hist, "spectrum": spectrum_hist}


def mmd(p: Tensor, q: Tensor, sigma: float = 1.0) -> float:
    """Squared MMD between two sets of histograms ``[B, K]`` with the Gaussian-TV kernel."""
    def k(x: Tensor, y: Tensor) -> Tensor:
        tv = 0.5 * (x[:, None] - y[None]).abs().sum(-1)
        return torch.exp(-tv**2 / (2 * sigma**2))
    return float(k(p, p).mean() + k(q, q).mean() - 2 * k(p, q).mean())


def graph_mmd(a: Tensor, b: Tensor, stats=("degree", "clustering", "spectrum")) -> dict:
    """The MMD of each statistic between graph sets ``[B, N, N]`` and ``[B', N', N']``
    (histograms with equal bins, so different node counts compare)."""
    check_adjacency(a, "a"), check_adjacency(b, "b")
    return {s: mmd(STATS[s](a), STATS[s](b)) for s in stats}

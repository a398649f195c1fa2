"""Distances of forecast samples to an exact Gaussian law (the references of
:mod:`reverie.timeseries`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["crps_gaussian", "gaussian_errors", "gaussian_w2"]


def _sqrtm(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(0.5 * (c + c.T))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def gaussian_w2(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> float:
    """The 2-Wasserstein distance between ``N(m1, c1)`` and ``N(m2, c2)``:
    ``|m1 - m2|^2 + tr(c1 + c2 - 2 (c2^1/2 c1 c2^1/2)^1/2)`` (Dowson & Landau 1982), rooted."""
    r = _sqrtm(c2)
    cross = _sqrtm(r @ c1 @ r)
    sq = float(((m1 - m2) ** 2).sum() + torch.trace(c1 + c2 - 2 * cross))
    return math.sqrt(max(sq, 0.0))


def gaussian_errors(samples: Tensor, mean: Tensor, cov: Tensor) -> dict[str, float]:
    """How far samples ``[n, d]`` are from the law ``N(mean, cov)``:

    * ``mean_z``: the largest ``|sample mean - mean| / sqrt(var / n)`` over the ``d``
      coordinates (a z-score: about 3 at most for exact samples, whatever ``n``);
    * ``mean_err``: the root-mean-square error of the sample mean, in the law's units;
    * ``cov_err``: ``|sample cov - cov|_F / |cov|_F``;
    * ``w2``: the Gaussian 2-Wasserstein distance between ``N(sample mean, sample cov)`` and
      the law, divided by ``sqrt(tr cov)`` (0 = exact, 1 = as far as the law's own spread).
    """
    x = samples.to(torch.float64).reshape(samples.shape[0], -1)
    m, c = mean.to(torch.float64).reshape(-1), cov.to(torch.float64)
    n = x.shape[0]
    if n < 2 or x.shape[1] != m.numel() or c.shape != (m.numel(), m.numel()):
        raise ValueError(f"samples must be [n >= 2, {m.numel()}] against a mean [{m.numel()}] and "
                         f"a covariance [{m.numel()}, {m.numel()}]; got {tuple(samples.shape)}, "
                         f"{tuple(mean.shape)}, {tuple(cov.shape)}")
    mh, ch = x.mean(0), torch.cov(x.T).reshape(m.numel(), m.numel())
    var = torch.diagonal(c).clamp(min=1e-300)
    return {
        "mean_z": float(((mh - m).abs() / (var / n).sqrt()).max()),
        "mean_err": float(((mh - m) ** 2).mean().sqrt()),
        "cov_err": float(torch.linalg.norm(ch - c) / torch.linalg.norm(c)),
        "w2": gaussian_w2(mh, ch, m, c) / math.sqrt(float(torch.trace(c))),
    }


def crps_gaussian(samples: Tensor, mean: Tensor, std: Tensor) -> float:
    """The expected continuous ranked probability score of the sample forecast ``[n, d]``
    when the truth is drawn from ``N(mean, std^2)`` (independently per coordinate), averaged
    over the ``d`` coordinates: ``E|X - Y| - E|X - X'| / 2`` with ``X, X'`` from the samples
    and ``E|x - Y| = std (z (2 Phi(z) - 1) + 2 phi(z))``, ``z = (x - mean) / std`` (Gneiting &
    Raftery 2007). The exact law scores ``std / sqrt(pi)``, the floor."""
    x = samples.to(torch.float64).reshape(samples.shape[0], -1)
    m = mean.to(torch.float64).reshape(-1)
    s = std.to(torch.float64).reshape(-1).clamp(min=1e-300)
    z = (x - m) / s
    normal = torch.distributions.Normal(0.0, 1.0)
    e_xy = s * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp())
    xs = x.sort(0).values  # E|X - X'| from the sorted samples in O(n log n)
    n = x.shape[0]
    k = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    e_xx = 2 * ((2 * k - n - 1) * xs).sum(0) / n**2
    return float((e_xy.mean(0) - 0.5 * e_xx).mean())

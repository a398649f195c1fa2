"""Exact products and unions of Gaussian mixtures: closed-form targets for model composition.

* ``N(x; m1, S1) N(x; m2, S2) = N(m1; m2, S1 + S2) N(x; m, S)`` with
  ``S = S1 (S1 + S2)^{-1} S2`` and ``m = S2 (S1 + S2)^{-1} m1 + S1 (S1 + S2)^{-1} m2``
  (Petersen & Pedersen, "The Matrix Cookbook", sec. 8.1.8), so the normalised product of two
  mixtures is a mixture of ``K1 K2`` components with weights
  ``w1_i w2_j N(m1_i; m2_j, S1_i + S2_j)``.
* A weighted union (mixture of mixtures) concatenates the components.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reverie.reference.gaussian import GaussianMixture

__all__ = ["mixture_product", "mixture_union"]


def mixture_product(a: GaussianMixture, b: GaussianMixture) -> GaussianMixture:
    """The normalised product ``a(x) b(x) / Z`` as a mixture of ``K_a K_b`` components."""
    if a.dim != b.dim:
        raise ValueError(f"the mixtures have different dimensions: {a.dim} and {b.dim}")
    sa, sb = a.covariances, b.covariances                          # [Ka, D, D], [Kb, D, D]
    ssum = sa[:, None] + sb[None]                                  # [Ka, Kb, D, D]
    inv = torch.linalg.inv(ssum)
    cov = sa[:, None] @ inv @ sb[None]                             # S1 (S1 + S2)^-1 S2
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    ma, mb = a.means[:, None, :, None], b.means[None, :, :, None]
    mean = (sb[None] @ inv @ ma + sa[:, None] @ inv @ mb)[..., 0]  # [Ka, Kb, D]
    diff = (a.means[:, None] - b.means[None])[..., None]          # m1 - m2
    maha = (diff.transpose(-1, -2) @ inv @ diff)[..., 0, 0]
    logdet = torch.logdet(ssum)
    log_w = (a.log_weights[:, None] + b.log_weights[None]
             - 0.5 * (maha + logdet + a.dim * math.log(2 * math.pi)))
    w = torch.softmax(log_w.flatten(), 0)
    d = a.dim
    return GaussianMixture(mean.reshape(-1, d), cov.reshape(-1, d, d), w.clamp(min=1e-300))


def mixture_union(
    mixtures: Sequence[GaussianMixture], weights: Sequence[float] | None = None
) -> GaussianMixture:
    """``sum_k omega_k p_k`` as one mixture (``omega`` uniform unless given)."""
    if len(mixtures) == 0:
        raise ValueError("need at least one mixture")
    dims = {m.dim for m in mixtures}
    if len(dims) != 1:
        raise ValueError(f"the mixtures have different dimensions: {sorted(dims)}")
    om = torch.full((len(mixtures),), 1.0 / len(mixtures), dtype=torch.float64)
    if weights is not None:
        om = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if om.shape != (len(mixtures),) or not bool((om > 0).all()):
            raise ValueError(f"weights must be {len(mixtures)} positive numbers, got {om.tolist()}")
        om = om / om.sum()
    means = torch.cat([m.means for m in mixtures])
    covs = torch.cat([m.covariances for m in mixtures])
    w = torch.cat([o * m.weights for o, m in zip(om, mixtures)])
    return GaussianMixture(means, covs, w)

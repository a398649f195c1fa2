"""Exact posterior of a Gaussian-mixture prior under a linear-Gaussian likelihood.

For ``x ~ sum_k w_k N(mu_k, S_k)`` and ``y = A x + e``, ``e ~ N(0, R)``, the posterior is again
a mixture (Bishop, *Pattern Recognition and Machine Learning*, eq. 2.113-2.117, applied per
component):

    G_k  = A S_k A^T + R                               (predictive covariance of y)
    K_k  = S_k A^T G_k^{-1}                            (Kalman gain)
    m_k' = mu_k + K_k (y - A mu_k),   S_k' = S_k - K_k A S_k
    w_k' ∝ w_k N(y; A mu_k, G_k)

This is the exact reference of the Gaussian-mixture benchmark of MCGdiff (Cardoso et al. 2024,
section 4.1) and of the inverse-problem tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie.reference.gaussian import GaussianMixture

__all__ = ["linear_gaussian_posterior"]


def _noise_cov(noise: float | Tensor, m: int) -> Tensor:
    r = torch.as_tensor(noise, dtype=torch.float64)
    if r.ndim == 0:
        if float(r) < 0:
            raise ValueError(f"noise variance must be >= 0, got {float(r)}")
        return float(r) * torch.eye(m, dtype=torch.float64)
    if r.shape == (m,):
        if bool((r < 0).any()):
            raise ValueError("noise variances must be >= 0")
        return torch.diag(r)
    if r.shape == (m, m):
        return 0.5 * (r + r.T)
    raise ValueError(
        f"noise_cov must be a scalar variance, [m]={m} variances or an [m, m] covariance; "
        f"got shape {tuple(r.shape)}"
    )


def linear_gaussian_posterior(
    prior: GaussianMixture, A: Tensor, y: Tensor, noise_cov: float | Tensor
) -> GaussianMixture:
    """The exact posterior ``p(x | y)`` of ``prior`` given ``y = A x + N(0, noise_cov)``.

    ``A``: ``[m, D]`` matrix; ``y``: ``[m]``; ``noise_cov``: a scalar *variance*
    (``sigma_y^2``), ``[m]`` variances or an ``[m, m]`` covariance. The predictive covariance
    ``A S_k A^T + R`` must be invertible (a noiseless measurement is fine when ``A`` has full
    row rank). Returns a :class:`GaussianMixture` with full covariances.
    """
    if not isinstance(prior, GaussianMixture):
        raise TypeError(f"prior must be a GaussianMixture, got {type(prior).__name__}")
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.ndim != 2 or A.shape[1] != prior.dim:
        raise ValueError(
            f"A must have shape [m, {prior.dim}] for a prior of dimension {prior.dim}; "
            f"got {tuple(A.shape)}"
        )
    m = A.shape[0]
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if y.shape != (m,):
        raise ValueError(f"y must hold {m} values (the rows of A), got shape {tuple(y.shape)}")
    R = _noise_cov(noise_cov, m)
    S = prior.covariances  # [K, D, D]
    SAt = S @ A.T  # [K, D, m]
    G = A @ SAt + R  # [K, m, m]
    G = 0.5 * (G + G.transpose(-1, -2))
    L = torch.linalg.cholesky(G)  # fails if G is singular
    resid = y - prior.means @ A.T  # [K, m]
    sol = torch.cholesky_solve(resid.unsqueeze(-1), L).squeeze(-1)  # G^{-1} (y - A mu)
    means = prior.means + (SAt @ sol.unsqueeze(-1)).squeeze(-1)  # mu + S A^T G^{-1} r
    gain_t = torch.cholesky_solve(SAt.transpose(-1, -2), L)  # G^{-1} A S  [K, m, D]
    covs = S - SAt @ gain_t
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    # log N(y; A mu_k, G_k)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    loglik = -0.5 * ((resid * sol).sum(-1) + logdet + m * math.log(2 * math.pi))
    logits = prior.log_weights + loglik
    weights = torch.softmax(logits, dim=0)
    # components whose weight underflows to 0 are kept at a tiny positive weight
    weights = weights.clamp(min=1e-300)
    return GaussianMixture(means, covs, weights)

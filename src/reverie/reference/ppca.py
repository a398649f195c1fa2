"""Probabilistic PCA and the linear VAE: the exact reference of VAE training.

pPCA (Tipping & Bishop 1999, "Probabilistic Principal Component Analysis") models
``x = W z + mu + e`` with ``z ~ N(0, I_k)``, ``e ~ N(0, s2 I_D)``, so ``x ~ N(mu, W W^T + s2 I)``.
Its maximum-likelihood fit to data with sample mean ``mu`` and sample covariance ``S = U L U^T``
(eigenvalues ``l_1 >= ... >= l_D``) is closed-form (their eq. 7-8):

    s2_ML = mean(l_{k+1}, ..., l_D),     W_ML = U_k (L_k - s2_ML I)^(1/2)

A linear VAE (affine decoder ``N(W z + b, exp(obs_logvar) I)``, Gaussian encoder) has a
closed-form ELBO (Lucas et al. 2019, "Don't Blame the ELBO! A Linear VAE Perspective on
Posterior Collapse", Sec. 4):

    E_q log p(x|z) = -1/2 [D (log 2 pi + obs_logvar)
                           + (|x - W m - b|^2 + sum_j |W_:j|^2 exp(logvar_j)) exp(-obs_logvar)]
    KL(q || N(0, I)) = 1/2 sum_j (m_j^2 + exp(logvar_j) - 1 - logvar_j)

for ``q(z | x) = N(m, diag exp(logvar))``; its global optimum is pPCA's maximum likelihood
(their Sec. 4.1: at ``W_ML`` with orthogonal columns the exact posterior is diagonal, so the
ELBO is tight). :func:`fit_ppca` and :func:`linear_vae_elbo` give both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PPCA", "fit_ppca", "linear_vae_elbo"]


@dataclass
class PPCA:
    """A pPCA model: ``mean [D]``, ``weight [D, k]`` and ``noise_var`` (``s2``)."""

    mean: Tensor
    weight: Tensor
    noise_var: float

    def covariance(self) -> Tensor:
        """``W W^T + s2 I``: the covariance of ``x``."""
        d = self.mean.shape[0]
        return self.weight @ self.weight.T + self.noise_var * torch.eye(d, dtype=self.mean.dtype)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log N(x; mean, W W^T + s2 I)`` per row of ``x [N, D]``."""
        return torch.distributions.MultivariateNormal(self.mean, self.covariance()).log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior ``p(z | x) = N(M^-1 W^T (x - mean), s2 M^-1)``, ``M = W^T W +
        s2 I`` (Tipping & Bishop eq. 6): ``(means [N, k], covariance [k, k])``."""
        k = self.weight.shape[1]
        m = self.weight.T @ self.weight + self.noise_var * torch.eye(k, dtype=self.mean.dtype)
        means = torch.linalg.solve(m, self.weight.T @ (x - self.mean).T).T
        return means, self.noise_var * torch.linalg.inv(m)


def fit_ppca(data: Tensor, k: int) -> PPCA:
    """pPCA's maximum-likelihood fit with ``k`` latent dimensions (module docstring), in
    float64; ``data [N, D]`` with ``1 <= k < D``."""
    if data.ndim != 2 or not 1 <= k < data.shape[1]:
        raise ValueError(f"need data [N, D] and 1 <= k < D, got {list(data.shape)} and k={k}")
    x = data.to(torch.float64)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / x.shape[0]  # the ML (1/N) sample covariance
    vals, vecs = torch.linalg.eigh(cov)
    vals, vecs = vals.flip(0), vecs.flip(1)  # descending
    s2 = float(vals[k:].mean())  # eq. 8: the mean of the discarded eigenvalues
    weight = vecs[:, :k] * (vals[:k] - s2).clamp(min=0).sqrt()  # eq. 7 with R = I
    return PPCA(mu, weight, s2)


def linear_vae_elbo(x: Tensor, enc_mean: Tensor, enc_logvar: Tensor, weight: Tensor,
                    bias: Tensor, obs_logvar: float | Tensor) -> Tensor:
    """The exact ELBO per row of ``x [N, D]`` (module docstring) for the encoder's
    ``q(z | x) = N(enc_mean, diag exp(enc_logvar))`` (``[N, k]`` each) and the decoder
    ``N(weight z + bias, exp(obs_logvar) I)`` (``weight [D, k]``)."""
    d = x.shape[1]
    lv = torch.as_tensor(obs_logvar, dtype=x.dtype)
    resid = ((x - enc_mean @ weight.T - bias) ** 2).sum(1)
    spread = (enc_logvar.exp() * (weight**2).sum(0)).sum(1)  # tr(W S W^T)
    expected = -0.5 * (d * (math.log(2 * math.pi) + lv) + (resid + spread) * torch.exp(-lv))
    kl = 0.5 * (enc_mean**2 + enc_logvar.exp() - 1.0 - enc_logvar).sum(1)
    return expected - kl

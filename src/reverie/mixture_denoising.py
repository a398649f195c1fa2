"""Mixture reverse kernels: denoising with a mixture posterior over ``x0``.

Li, van Breugel & van der Schaar (2024), "Soft Mixture Denoising: Beyond the Expressive
Bottleneck of Diffusion Models": a Gaussian reverse kernel ``p(x_s | x_t) = N(mu(x_t), c^2 I)``
cannot represent the true kernel ``q(x_s | x_t) = int q(x_s | x_t, x0) p(x0 | x_t) dx0``, which
is multimodal when ``p(x0 | x_t)`` is (sec. 3: the error is unbounded, worst at few steps). The
remedy is a mixture kernel. Here it is written through the posterior over ``x0``: a
*mixture posterior* ``p(x0 | x_t) = sum_k w_k N(m_k, C_k)`` gives

    q(x_s | x_t) = sum_k w_k int q(x_s | x_t, x0) N(x0; m_k, C_k) dx0,

sampled by drawing ``k``, then ``x0``, then the forward-process posterior step
(:func:`mixture_ancestral`). With the exact posterior of Gaussian-mixture data
(:func:`exact_mixture_posterior`) every step is exact, at any number of steps; DDPM's Gaussian
step with ``E[x0 | x_t]`` is not. :class:`MixturePosteriorNet` is a trainable mixture posterior
(isotropic components, EDM-style skip), fitted by the maximum likelihood of ``x0``
(:func:`reverie.train.mixture.train_mixture`); its mean is an ordinary denoiser
(:class:`MixtureMeanDenoiser`) that every sampler and the likelihood module take.

This is the mixture-posterior form of SMD's kernel, not the paper's continuous latent with a
hypernetwork and its upper-bound loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reverie._random import Generators, randn_like
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.nets.mlp import SinusoidalEmbedding
from reverie.process import GaussianProcess
from reverie.reference import GaussianMixture

__all__ = ["MixturePosteriorNet", "MixtureMeanDenoiser", "exact_mixture_posterior",
           "mixture_ancestral", "mixture_nll"]

#: ``posterior(x [B, D], t [B]) -> (log_w [B, K], means [B, K, D], covs [B, K, D, D] or
#: variances [B, K])``
Posterior = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def exact_mixture_posterior(gm: GaussianMixture, process: GaussianProcess) -> Posterior:
    """``p(x0 | x_t)`` of mixture data under ``process``: for component ``k`` with ``x_t | k ~
    N(a mu_k, C_k)``, ``C_k = a^2 S_k + s^2 I``, the posterior is ``N(mu_k + a S_k C_k^{-1}
    (x - a mu_k), S_k - a^2 S_k C_k^{-1} S_k)`` with weight ``p(k | x_t)``."""

    def posterior(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tt = float(t.reshape(-1)[0])
        a, s = float(process.alpha(tt)), float(process.sigma(tt))
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        covs = gm.covariances  # [K, D, D]
        eye = torch.eye(gm.dim, dtype=torch.float64)
        c = a**2 * covs + s**2 * eye
        gain = a * covs @ torch.linalg.inv(c)  # [K, D, D]
        diff = x64[:, None, :] - a * gm.means[None]  # [B, K, D]
        means = gm.means[None] + torch.einsum("kij,bkj->bki", gain, diff)
        post = covs - a * gain @ covs
        log_w = torch.log_softmax(gm.log_weights + _gauss_logpdf(diff, c), dim=-1)
        return log_w, means, post.expand(x.shape[0], *post.shape)

    return posterior


def _gauss_logpdf(diff: Tensor, cov: Tensor) -> Tensor:
    """``log N(diff; 0, cov)``: ``diff [B, K, D]``, ``cov [K, D, D]`` -> ``[B, K]``."""
    chol = torch.linalg.cholesky(cov)
    sol = torch.linalg.solve_triangular(chol[None], diff[..., None], upper=False)[..., 0]
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * ((sol**2).sum(-1) + logdet[None] + diff.shape[-1] * math.log(2 * math.pi))


class MixturePosteriorNet(nn.Module):
    """``(x_t, t) -> (log_w [B, K], means [B, K, D], variances [B, K])``: a K-component
    isotropic mixture posterior over ``x0`` for ``process``. Means are ``c_skip x_t + c_out
    F_k`` with EDM's ``c_skip = a sd^2 / (a^2 sd^2 + s^2)``, ``c_out = s sd / sqrt(a^2 sd^2 +
    s^2)`` (``sd`` the data std), so an untrained network already predicts the Gaussian
    posterior mean of data with that scale."""

    def __init__(self, process: GaussianProcess, dim: int = 2, components: int = 8,
                 hidden: int = 128, depth: int = 3, sigma_data: float = 1.0):
        super().__init__()
        if components < 1 or dim < 1:
            raise ValueError(f"components and dim must be positive, got {components}, {dim}")
        self.process, self.dim, self.k, self.sigma_data = process, dim, components, sigma_data
        self.embed = nn.Sequential(SinusoidalEmbedding(64), nn.Linear(64, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Linear(hidden, components * (dim + 2))

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """In ``x``'s dtype (the network runs in its own)."""
        t = time_tensor(t, x)
        dtype, x = x.dtype, x.to(self.inp.weight.dtype)
        a = self.process.alpha(t).to(x.dtype)[:, None]
        s = self.process.sigma(t).to(x.dtype)[:, None]
        sd = self.sigma_data
        norm = torch.sqrt(a**2 * sd**2 + s**2)
        h = self.inp(x / norm) + self.embed(100 * t.float()).to(x.dtype)
        for block in self.blocks:
            h = h + block(h)
        out = self.out(nn.functional.silu(h)).reshape(x.shape[0], self.k, self.dim + 2)
        c_skip, c_out = a * sd**2 / norm**2, s * sd / norm
        means = c_skip[..., None] * x[:, None, :] + c_out[..., None] * out[..., : self.dim]
        log_w = torch.log_softmax(out[..., self.dim], dim=-1)
        # variances relative to the Gaussian posterior's c_out^2, floored
        var = c_out**2 * torch.exp(out[..., self.dim + 1].clamp(-12, 4)) + 1e-8
        return log_w.to(dtype), means.to(dtype), var.to(dtype)


def mixture_nll(log_w: Tensor, means: Tensor, var: Tensor, x0: Tensor) -> Tensor:
    """``-log sum_k w_k N(x0; m_k, v_k I)`` per row (isotropic components)."""
    d = x0.shape[-1]
    sq = ((x0[:, None, :] - means) ** 2).sum(-1)
    logp = -0.5 * (sq / var + d * torch.log(2 * math.pi * var))
    return -torch.logsumexp(log_w + logp, dim=-1)


class MixtureMeanDenoiser(DenoiserBase):
    """The mixture posterior's mean ``sum_k w_k m_k = E[x0 | x_t]``: an ordinary denoiser."""

    def __init__(self, posterior: Posterior, process: GaussianProcess):
        self.posterior, self.process = posterior, process

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        log_w, means, _ = self.posterior(x, t)
        return (torch.exp(log_w)[..., None] * means).sum(1).to(x.dtype)


def _draw_x0(log_w: Tensor, means: Tensor, cov: Tensor, generator: Generators) -> Tensor:
    g = generator if isinstance(generator, torch.Generator) else None
    k = torch.multinomial(torch.exp(log_w.to(torch.float64)), 1, generator=g)[:, 0]
    rows = torch.arange(means.shape[0])
    mean = means[rows, k]
    z = randn_like(mean, generator)
    if cov.ndim == 2:  # isotropic variances [B, K]
        return mean + cov[rows, k].sqrt()[:, None] * z
    chol = torch.linalg.cholesky(cov[rows, k].to(torch.float64)).to(mean.dtype)
    return mean + (chol @ z[..., None])[..., 0]


def mixture_ancestral(posterior: Posterior, x: Tensor, process: GaussianProcess, grid: Tensor,
                      *, generator: Generators = None) -> Tensor:
    """Ancestral sampling with the mixture kernel: at each grid point draw ``x0`` from the
    mixture posterior, then ``x_{i+1} ~ q(x_{i+1} | x_i, x0)`` (the forward-process posterior,
    DDPM eq. 7 in ``alpha``/``sigma`` form); the last step returns the drawn ``x0``. ``x``
    starts at ``grid[0]`` (e.g. ``sigma(t_max) * noise``)."""
    from reverie.samplers import Schedule

    sch = Schedule.build(process, grid)
    for i in range(sch.steps):
        t = torch.full((x.shape[0],), sch.t[i], dtype=x.dtype)
        with torch.no_grad():
            log_w, means, cov = posterior(x, t)
        x0 = _draw_x0(log_w, means.to(x.dtype), cov.to(x.dtype), generator)
        j = i + 1
        if sch.sigma[j] == 0:
            return sch.alpha[j] * x0
        # q(x_j | x_i, x0): mean alpha_j x0 + sqrt(sigma_j^2 - c^2) eps, std c
        c = sch.sigma[j] * math.sqrt(-math.expm1(-2 * sch.h(i)))
        eps = (x - sch.alpha[i] * x0) / sch.sigma[i]
        x = sch.alpha[j] * x0 + math.sqrt(max(sch.sigma[j] ** 2 - c**2, 0.0)) * eps
        x = x + c * randn_like(x, generator)
    return x

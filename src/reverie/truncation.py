"""Truncated diffusion time with an auxiliary prior.

Franzese et al. (2023), "How Much is Enough? A Study on Diffusion Times in Score-based
Generative Models": a diffusion stopped at ``T`` below the usual ``T_max`` leaves a forward
marginal ``q_T`` that is not ``N(0, sigma_T^2 I)``. Its ELBO splits into a score-matching part,
which shrinks with ``T``, and the prior gap ``KL(q_T || p_prior)``, which grows as ``T`` shrinks
unless the prior is an auxiliary model fitted to ``q_T``. Sampling starts from that
auxiliary model at ``T`` and runs any reverse sampler down to the data.

For a deterministic (probability-flow) model the prior gap is exact pointwise: with the exact
denoiser the ODE maps ``x`` to ``x_T`` and

    log p_model(x) = log p_0(x) + log p_prior(x_T) - log q_T(x_T),

so the mean NLL excess over the data entropy is ``KL(q_T || p_prior)`` (KL is invariant under
the ODE's bijection). :class:`reverie.process.Truncated` is the process; here are the auxiliary
prior (a Gaussian mixture fitted by EM to forward samples at ``T``), the sampler that starts from
it and the likelihood that uses its density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess, Truncated
from reverie.reference import GaussianMixture

__all__ = ["forward_samples", "fit_gaussian_mixture", "fit_prior", "sample_truncated",
           "truncated_log_likelihood"]


def forward_samples(data: Tensor, process: GaussianProcess, t: float,
                    generator: torch.Generator | None = None) -> Tensor:
    """``x_t = alpha(t) x0 + sigma(t) eps`` for every row of ``data`` (one noise draw each)."""
    eps = torch.randn(data.shape, generator=generator, dtype=torch.float64)
    return process.add_noise(data.to(torch.float64), eps, t)


def fit_gaussian_mixture(x: Tensor, n_components: int = 8, *, iters: int = 200,
                         reg: float = 1e-4, generator: torch.Generator | None = None
                         ) -> GaussianMixture:
    """Maximum-likelihood Gaussian mixture with full covariances by EM (Dempster et al. 1977),
    started from ``n_components`` distinct random rows; ``reg`` is added to each covariance's
    diagonal."""
    positive_int("n_components", n_components)
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n, d = x.shape
    if n < n_components * (d + 1):
        raise ValueError(f"need at least {n_components * (d + 1)} points to fit {n_components} "
                         f"components in {d} dimensions, got {n}")
    idx = torch.randperm(n, generator=generator)[:n_components]
    means = x[idx].clone()
    eye = torch.eye(d, dtype=torch.float64)
    covs = torch.cov(x.T).reshape(d, d).expand(n_components, d, d).clone() + reg * eye
    log_w = torch.full((n_components,), -math.log(n_components), dtype=torch.float64)
    for _ in range(iters):
        # E step: responsibilities r_nk proportional to w_k N(x_n; mu_k, S_k)
        dist = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
        logp = dist.log_prob(x[:, None, :]) + log_w
        r = torch.softmax(logp, dim=1)
        # M step: weighted means and covariances
        nk = r.sum(0) + 1e-12
        means = (r.T @ x) / nk[:, None]
        diff = x[:, None, :] - means[None]
        covs = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / nk[:, None, None] + reg * eye
        log_w = torch.log(nk / n)
    return GaussianMixture(means, covs, torch.exp(log_w))


def fit_prior(data: Tensor, process: Truncated, n_components: int = 8, *, copies: int = 1,
              iters: int = 200, generator: torch.Generator | None = None) -> GaussianMixture:
    """The auxiliary prior of Franzese et al.: a Gaussian mixture fitted to the forward
    marginal ``q_T`` at ``T = process.t_max`` (``copies`` noise draws per data row)."""
    if not isinstance(process, GaussianProcess):
        raise TypeError(f"process must be a GaussianProcess, got {type(process).__name__}")
    positive_int("copies", copies)
    x = data.to(torch.float64).repeat(copies, *([1] * (data.ndim - 1)))
    x_t = forward_samples(x, process, process.t_max, generator)
    return fit_gaussian_mixture(x_t, n_components, iters=iters, generator=generator)


def sample_truncated(denoiser: DenoiserBase, prior: GaussianMixture, n: int,
                     sampler: str = "heun", steps: int = 20, *, grid: str | Tensor | None = None,
                     generator: torch.Generator | None = None, noise_generator: Generators = None,
                     cond: Mapping[str, Any] | None = None, **options: Any) -> Tensor:
    """Draw ``x_T`` from the auxiliary ``prior`` at ``T = denoiser.process.t_max`` and run the
    registered ``sampler`` down to the data (Franzese et al.). ``generator`` draws the
    prior samples, ``noise_generator`` the sampler's own noise."""
    from reverie.samplers import SAMPLERS, resolve_grid, run

    positive_int("n", n)
    info = SAMPLERS[sampler]
    g = resolve_grid(info, denoiser.process, steps, grid)
    x = prior.sample(n, generator)
    return run(info, denoiser, x, g, generator=noise_generator, cond=cond, **options).x0


def truncated_log_likelihood(denoiser: DenoiserBase, x: Tensor, prior: GaussianMixture | None,
                             **kwargs: Any):
    """``log p(x)`` of the probability-flow model of ``denoiser`` on its (truncated) process with
    the auxiliary ``prior``'s density at ``T`` (``None``: ``N(0, sigma_T^2 I)``); ``kwargs`` go
    to :func:`reverie.likelihood.log_likelihood`."""
    from reverie.likelihood import log_likelihood

    log_prior = None if prior is None else (lambda z: prior.log_prob(z))
    return log_likelihood(denoiser, x, prior=log_prior, **kwargs)

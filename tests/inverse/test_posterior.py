"""The exact linear-Gaussian posterior of a Gaussian-mixture prior."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from reverie.reference import Gaussian, GaussianMixture, linear_gaussian_posterior


def _problem():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 3, generator=g, dtype=torch.float64) * 2
    b = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    covs = b @ b.transpose(-1, -2) + 0.2 * torch.eye(3, dtype=torch.float64)
    prior = GaussianMixture(means, covs, torch.tensor([0.2, 0.5, 0.3]))
    A = torch.randn(2, 3, generator=g, dtype=torch.float64)
    R = torch.tensor([0.3, 0.1], dtype=torch.float64)
    y = torch.tensor([0.7, -1.2], dtype=torch.float64)
    return prior, A, R, y


def test_posterior_density_is_bayes_rule():
    """log p(x | y) = log p(x) + log N(y; A x, R) - log p(y) at arbitrary points, with the
    evidence p(y) = sum_k w_k N(y; A mu_k, A S_k A^T + R) computed independently."""
    prior, A, R, y = _problem()
    post = linear_gaussian_posterior(prior, A, y, R)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    lik = MultivariateNormal(x @ A.T, torch.diag(R)).log_prob(y)
    comps = [
        math.log(w) + MultivariateNormal(A @ m, A @ S @ A.T + torch.diag(R)).log_prob(y)
        for w, m, S in zip(prior.weights.tolist(), prior.means, prior.covariances)
    ]
    log_evidence = torch.logsumexp(torch.stack(comps), 0)
    expected = prior.log_prob(x) + lik - log_evidence
    torch.testing.assert_close(post.log_prob(x), expected, atol=1e-9, rtol=0)


def test_single_gaussian_matches_joint_conditioning():
    """For one Gaussian: condition the joint Gaussian of (x, y) (Schur complement)."""
    g = torch.Generator().manual_seed(2)
    m = torch.randn(4, generator=g, dtype=torch.float64)
    b = torch.randn(4, 4, generator=g, dtype=torch.float64)
    S = b @ b.T + torch.eye(4, dtype=torch.float64)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, generator=g, dtype=torch.float64)
    post = linear_gaussian_posterior(Gaussian(m, S), A, y, 0.25)
    Syy = A @ S @ A.T + 0.25 * torch.eye(2, dtype=torch.float64)
    Sxy = S @ A.T
    mean = m + Sxy @ torch.linalg.solve(Syy, y - A @ m)
    cov = S - Sxy @ torch.linalg.solve(Syy, Sxy.T)
    torch.testing.assert_close(post.mean(), mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(post.covariance(), cov, atol=1e-10, rtol=0)


def test_noiseless_measurement_is_satisfied():
    prior, A, _, y = _problem()
    post = linear_gaussian_posterior(prior, A, y, 0.0)
    x = post.sample(200, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x @ A.T, y.expand(200, 2), atol=1e-6, rtol=0)


def test_posterior_bad_input():
    prior, A, R, y = _problem()
    with pytest.raises(ValueError, match=r"A must have shape \[m, 3\]"):
        linear_gaussian_posterior(prior, torch.ones(2, 4), y, R)
    with pytest.raises(ValueError, match="y must hold 2 values"):
        linear_gaussian_posterior(prior, A, torch.ones(3), R)
    with pytest.raises(ValueError, match="noise variance must be >= 0"):
        linear_gaussian_posterior(prior, A, y, -1.0)
    with pytest.raises(TypeError, match="GaussianMixture"):
        linear_gaussian_posterior("prior", A, y, R)


def test_isotropic_fast_path_matches_general_denoiser():
    """GaussianMixture.denoise_at takes matrix products for isotropic components; the same
    mixture written with full covariances goes the general way."""
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(5, 6, generator=g, dtype=torch.float64) * 3
    v = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.0], dtype=torch.float64)
    iso = GaussianMixture(mu, v, torch.rand(5, generator=g) + 0.1)
    full = GaussianMixture(mu, torch.diag_embed(v[:, None].expand(5, 6)), iso.weights)
    x = torch.randn(7, 6, generator=g, dtype=torch.float64) * 4
    ts = torch.rand(7, dtype=torch.float64)
    for a, s in [(0.9, 0.4), (ts, 1 - ts)]:
        got, ref = iso.denoise_at(x, a, s), full.denoise_at(x, a, s)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)

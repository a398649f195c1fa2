"""The exact tilted target and soft value of a Gaussian mixture under a linear reward."""

from __future__ import annotations

import math

import pytest
import torch

import reverie
from reverie.reference import GaussianMixture, TiltedMixture
from reverie.rewards import LinearReward


def _full_cov_mixture() -> GaussianMixture:
    a = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    b = torch.tensor([[0.2, -0.1], [-0.1, 0.4]], dtype=torch.float64)
    c = torch.tensor([[0.3, 0.0], [0.0, 0.1]], dtype=torch.float64)
    return GaussianMixture([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]], torch.stack([a, b, c]),
                           [0.5, 0.3, 0.2])


def test_tilted_mixture_matches_importance_weights():
    mix = _full_cov_mixture()
    w, T, b = torch.tensor([0.8, -0.6], dtype=torch.float64), 0.7, 0.3
    tilt = TiltedMixture(mix, w, T, bias=b)
    x = mix.sample(400_000, torch.Generator().manual_seed(0))
    logw = (x @ w + b) / T
    p = torch.softmax(logw, 0)
    ess = 1.0 / float((p * p).sum())
    mean = p @ x
    cov = (p[:, None] * (x - mean)).T @ (x - mean)
    exact_cov = tilt.target.covariance()
    sd = exact_cov.diagonal().sqrt()
    assert torch.allclose(mean, tilt.target.mean(), atol=float(6 * sd.max() / math.sqrt(ess)))
    assert torch.allclose(cov, exact_cov, atol=float(8 * exact_cov.abs().max() / math.sqrt(ess)))
    # log Z = log E_p[exp(r/T)]
    log_z = float(torch.logsumexp(logw, 0)) - math.log(len(x))
    assert abs(log_z - tilt.log_normalizer) < 6 / math.sqrt(ess)
    assert abs(tilt.mean_reward() - float(p @ (x @ w + b))) < 6 * float(
        (x @ w).std()) / math.sqrt(ess)


def _soft_value_by_components(tilt: TiltedMixture, x, alpha, sigma):
    """V = T log sum_k p(k | x_t) E_k[exp(r(x0)/T) | x_t]: Gaussian posterior per component."""
    mix, w, T = tilt.mixture, tilt.weight, tilt.temperature
    resp = mix.responsibilities_at(x, alpha, sigma)
    out = []
    eye = torch.eye(mix.dim, dtype=torch.float64)
    for k in range(mix.n_components):
        S = mix.covariances[k]
        G = alpha**2 * S + sigma**2 * eye
        gain = alpha * S @ torch.linalg.inv(G)
        m = mix.means[k] + (x - alpha * mix.means[k]) @ gain.T
        C = S - alpha * gain @ S
        out.append(torch.log(resp[:, k]) + (m @ w + tilt.bias) / T + (w @ C @ w) / (2 * T * T))
    return T * torch.logsumexp(torch.stack(out, 1), 1)


@pytest.mark.parametrize("t", [50.0, 400.0, 900.0])
def test_soft_value_closed_forms_agree(t):
    mix = _full_cov_mixture()
    tilt = TiltedMixture(mix, [0.8, -0.6], 0.5, bias=-0.2)
    proc = reverie.VP.linear()
    x = mix.prior_sample(proc, t, 64, torch.Generator().manual_seed(1))
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    v = tilt.soft_value(x, t, proc)
    assert torch.allclose(v, _soft_value_by_components(tilt, x, a, s), rtol=1e-9, atol=1e-9)


def test_soft_value_limits():
    mix = _full_cov_mixture()
    tilt = TiltedMixture(mix, [0.8, -0.6], 0.5, bias=0.1)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # clean end: the reward itself; alpha = 0: x_t says nothing about x0, V = T log Z
    assert torch.allclose(tilt.soft_value_at(x, 1.0, 0.0), tilt.reward(x), atol=1e-9)
    v1 = tilt.soft_value(x, 1.0, reverie.RectifiedFlow())
    assert torch.allclose(v1, torch.full_like(v1, tilt.temperature * tilt.log_normalizer))


def test_soft_value_gradient_is_the_tilted_score():
    mix = _full_cov_mixture()
    tilt = TiltedMixture(mix, [0.8, -0.6], 0.5)
    a, s = 0.8, 0.6
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_(True)
    (grad_v,) = torch.autograd.grad(tilt.soft_value_at(x, a, s).sum(), x)
    x = x.detach()
    lhs = tilt.target.score_at(x, a, s)
    rhs = mix.score_at(x, a, s) + grad_v / tilt.temperature
    assert torch.allclose(lhs, rhs, atol=1e-9)


def test_soft_value_monte_carlo():
    """E[exp(r(x0)/T) | x_t] by self-normalised importance sampling from the prior."""
    mix = _full_cov_mixture()
    tilt = TiltedMixture(mix, [0.8, -0.6], 1.0)
    a, s = 0.7, 0.7
    x0 = mix.sample(400_000, torch.Generator().manual_seed(4))
    xt = torch.tensor([[0.3, 0.2], [1.0, -0.4], [-0.8, 0.9]], dtype=torch.float64)
    for row in xt:
        logq = -((row - a * x0) ** 2).sum(1) / (2 * s * s)
        p = torch.softmax(logq, 0)
        ess = 1.0 / float((p * p).sum())
        r = tilt.reward(x0)
        est = float(torch.log(p @ torch.exp(r / tilt.temperature)))
        exact = float(tilt.soft_value_at(row[None], a, s)[0]) / tilt.temperature
        assert abs(est - exact) < 0.05 + 8 / math.sqrt(ess)


def test_best_of_n_moments_exact():
    g = TiltedMixture(GaussianMixture([[0.0]], 1.0), [1.0])
    m2, _ = g.best_of_n_reward_moments(2)
    m3, _ = g.best_of_n_reward_moments(3)
    _, s1 = g.best_of_n_reward_moments(1)
    assert abs(m2 - 1 / math.sqrt(math.pi)) < 1e-6
    assert abs(m3 - 1.5 / math.sqrt(math.pi)) < 1e-6
    assert abs(s1 - 1.0) < 1e-6
    # a mixture against brute force
    mix = _full_cov_mixture()
    tilt = TiltedMixture(mix, [0.8, -0.6])
    r = tilt.reward(mix.sample(8 * 50_000, torch.Generator().manual_seed(5))).reshape(-1, 8)
    best = r.max(1).values
    mean, std = tilt.best_of_n_reward_moments(8)
    assert abs(float(best.mean()) - mean) < 5 * std / math.sqrt(len(best))
    assert abs(float(best.std()) - std) < 0.02 * std


def test_linear_reward_tilt_and_errors():
    mix = _full_cov_mixture()
    reward = LinearReward([0.8, -0.6], bias=0.5)
    tilt = reward.tilt(mix, 0.5)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(reward(x), tilt.reward(x))
    with pytest.raises(ValueError, match="2 entries"):
        TiltedMixture(mix, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="temperature"):
        TiltedMixture(mix, [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="3 weights"):
        LinearReward([1.0, 2.0, 3.0])(x)

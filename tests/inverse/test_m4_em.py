"""MMPS (registered "mmps") against an exact anisotropic Gaussian posterior, and EM
(reverie.inverse.em_prior) learning a 2-D mixture prior from corrupted observations only."""

import math

import pytest
import torch

import reverie
from reverie.inverse import MatrixOperator, diffusion_fit, em_prior, solve
from reverie.metrics import sliced_wasserstein
from reverie.nets import MLP
from reverie.reference import Gaussian, GaussianMixture, linear_gaussian_posterior
from reverie.truncation import fit_gaussian_mixture

F64 = torch.float64
PROC = reverie.VP.linear()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_mmps_is_exact_for_an_anisotropic_gaussian_prior():
    """Tweedie's covariance is the exact covariance of x_0 | x_t for a Gaussian prior, so MMPS
    samples the exact posterior of N(m, diag(9, 0.25)) (far from PiGDM's unit-variance
    assumption): the mean within 4 standard errors, the covariance within 30% (50 steps).
    PiGDM's isotropic r_t^2 I (the wrong covariance) misses the mean by > 4 standard errors."""
    prior = Gaussian(torch.tensor([1.0, -1.0], dtype=F64),
                     torch.diag(torch.tensor([9.0, 0.25], dtype=F64)))
    A, y, sy = torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([3.0], dtype=F64), 0.5
    post = linear_gaussian_posterior(prior, A, y, sy**2)
    mu, C = post.mean(), post.covariance()
    se = torch.sqrt(torch.diagonal(C) / 1000)

    def run(method):
        return solve(prior.denoiser(PROC), MatrixOperator(A), y, sy, method=method, steps=50,
                     n=1000, generator=_gen(1))

    x = run("mmps")
    assert float(((x.mean(0) - mu) / se).abs().max()) < 4, (x.mean(0), mu)
    assert float(torch.linalg.norm(x.T.cov() - C) / torch.linalg.norm(C)) < 0.3
    assert float(((run("pigdm").mean(0) - mu) / se).abs().max()) > 4


def _observations(per=50, sy=0.2):
    """Four groups of 1-D projections (angles 0, 45, 90, 135 degrees) of a 2-D mixture."""
    true = GaussianMixture(torch.tensor([[-2.0, -1.0], [1.5, 1.5]], dtype=F64), 0.3,
                           torch.tensor([0.4, 0.6], dtype=F64))
    g, obs = _gen(0), []
    for th in (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4):
        A = torch.tensor([[math.cos(th), math.sin(th)]], dtype=F64)
        x = true.sample(per, g)
        obs.append((MatrixOperator(A), x @ A.T + sy * torch.randn(per, 1, generator=g, dtype=F64)))
    return true, obs, sy


def test_em_learns_the_mixture_from_projections():
    """200 noisy 1-D projections, never a clean point: from N(0, 4 I) the learned prior's
    sliced W2 to the true mixture falls round by round (1.05 at the start; measured 0.71,
    0.60, 0.50, 0.38, 0.34) to under half the start, and ends well below the naive fit to
    the pseudo-inverses A^+ y (0.77), the wrong variant that no round of EM repairs."""
    true, obs, sy = _observations()
    ref = true.sample(4000, _gen(9))

    def dist(mix):
        return sliced_wasserstein(mix.sample(4000, _gen(8)), ref, 64, _gen(3))

    models = []

    def fit(x):  # the M-step: a 2-component maximum-likelihood mixture and its exact denoiser
        models.append(fit_gaussian_mixture(x, 2, iters=50, generator=_gen(1)))
        return models[-1].denoiser(PROC)

    start = GaussianMixture(torch.zeros(1, 2, dtype=F64), 4.0, torch.ones(1, dtype=F64))
    em_prior(fit, start.denoiser(PROC), obs, sy, rounds=5, steps=12, generator=_gen(2))
    d = [dist(start)] + [dist(m) for m in models]
    assert d[-1] < 0.5 * d[0] and d[-1] < d[2] < d[0], d
    naive = dist(fit_gaussian_mixture(torch.cat([op.pinv(y) for op, y in obs]), 2, iters=50,
                                      generator=_gen(1)))
    assert d[-1] < 0.6 * naive, (d, naive)


def test_em_with_diffusion_training_as_the_m_step():
    """The paper's M-step (diffusion_fit: a small MLP trained by reverie.train on the E-step's
    samples, warm-started across rounds): two rounds bring the learned prior's sliced W2 (its
    DDIM samples) from 0.98 to 0.56 (measured). The wrong M-step that trains the same network on
    samples of the current prior instead of the posterior (the observations ignored) stays
    near the start (0.89)."""
    true, obs, sy = _observations()
    ref = true.sample(2000, _gen(9))
    start = GaussianMixture(torch.zeros(1, 2, dtype=F64), 4.0, torch.ones(1, dtype=F64))

    def dist(den):
        x = reverie.sample(den, torch.randn(1000, 2, generator=_gen(8), dtype=F64), "ddim",
                           steps=16)
        return float(sliced_wasserstein(x, ref, 64, _gen(3)))

    def fit():
        torch.manual_seed(0)
        return diffusion_fit(MLP(dim=2, hidden=32, depth=2, time_scale=1.0), PROC, steps=150,
                             batch_size=128, lr=2e-3, warmup=20, ema_decay=0.99)

    d0 = dist(start.denoiser(PROC))
    d = dist(em_prior(fit(), start.denoiser(PROC), obs, sy, rounds=2, steps=12,
                      generator=_gen(2)))
    wrong = fit()
    for k in range(2):  # M-step on prior samples: q_{k+1} fitted to q_k, the data never seen
        den = wrong(start.sample(200, _gen(5 + k)))
    bad = dist(den)
    assert d < 0.75 * d0 and d < 0.75 * bad, (d0, d, bad)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        diffusion_fit(lambda x, t: x, PROC)


def test_em_bad_input():
    true, obs, sy = _observations(per=2)
    den = true.denoiser(PROC)
    with pytest.raises(ValueError, match="at least one group"):
        em_prior(lambda x: den, den, [], sy)
    with pytest.raises(ValueError, match=r"must be \[n >= 1, 1\]"):
        em_prior(lambda x: den, den, [(obs[0][0], torch.zeros(3, 2, dtype=F64))], sy)
    with pytest.raises(TypeError, match="LinearOperator"):
        em_prior(lambda x: den, den, [(lambda x: x, torch.zeros(3, 1))], sy)

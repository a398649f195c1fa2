"""Linear multivariate diffusions (reverie.multivariate: MDM, Singhal et al. 2023; FP-Diffusion,
Du et al. 2023): closed-form marginals against Monte Carlo, the ELBO against an exact identity,
the reverse samplers against a Gaussian data law; each with a deliberately wrong sibling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.learned_process import LearnedProcess, PerDimSchedule
from reverie.learned_process import elbo_terms as nfdm_elbo_terms
from reverie.multivariate import (
    GaussianLinearReference,
    LinearDiffusion,
    elbo_terms,
    sample_linear,
    score_from_eps,
)
from reverie.process import VPLinear

D64 = torch.float64
MEAN = torch.tensor([0.8, -0.5], dtype=D64)
COV = torch.tensor([[0.4, 0.15], [0.15, 0.25]], dtype=D64)
R_FP = [[1.2, 0.3], [0.3, 0.6]]
OMEGA_FP = [[0.0, 0.8], [-0.8, 0.0]]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _processes():
    return {"cld": LinearDiffusion.cld(), "malda": LinearDiffusion.malda(3),
            "fp": LinearDiffusion.fp(R_FP, OMEGA_FP)}


def _simulate(proc, x, t_end, steps=400, seed=0):
    """Euler-Maruyama on the forward SDE from u_0 = (x, y_0 ~ N(0, aux_var))."""
    g = _gen(seed)
    n_pts = x.shape[0]
    u = torch.zeros(proc.state_shape(x), dtype=D64)
    u[:, : proc.p] = proc.rows(x)
    u[:, proc.p:] = proc.aux_var**0.5 * torch.randn(u[:, proc.p:].shape, generator=g, dtype=D64)
    with torch.no_grad():
        m, chol = proc.Q() + proc.D(), torch.linalg.cholesky(proc.D() + 1e-14 * torch.eye(proc.n))
    h = t_end / steps
    for i in range(steps):
        b = float(proc.beta(torch.tensor((i + 0.5) * h)))
        u = u - h * b * (m @ u) + (2 * b * h) ** 0.5 * chol @ torch.randn(
            u.shape, generator=g, dtype=D64)
    return u.reshape(n_pts, -1)


@pytest.mark.parametrize("name", ["cld", "malda", "fp"])
def test_closed_form_marginals_match_monte_carlo(name):
    proc = _processes()[name]
    u = _simulate(proc, MEAN.repeat(6000, 1), 0.2, steps=150)

    def errors(p):  # mean error, relative covariance error (a point mass at MEAN)
        mean, cov = GaussianLinearReference(p, MEAN, torch.zeros(2, 2, dtype=D64)).law(0.2)
        return float((u.mean(0) - mean).norm()), float((torch.cov(u.T) - cov).norm() / cov.norm())

    m_err, c_err = errors(proc)
    assert m_err < 0.05 and c_err < 0.06, (m_err, c_err)
    # the process with the transposed drift (Q -> -Q: the other rotation) is rejected
    wrong = LinearDiffusion(-proc.Q().detach(), proc.D().detach(), spatial=proc.spatial,
                            aux_var=proc.aux_var)
    m_err, c_err = errors(wrong)
    assert m_err > 0.1 or c_err > 0.1, (m_err, c_err)


def test_vp_special_case_is_vplinear_and_its_elbo_is_vdm():
    proc, vp = LinearDiffusion.vp(), VPLinear()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=D64)
    a, s = proc.moments(t)
    assert torch.allclose(a[:, 0, 0], vp.alpha(t)) and torch.allclose(s[:, 0, 0], vp.sigma(t) ** 2)
    # the same eps-network, times and noise: the KL-form ELBO equals NFDM's / VDM's
    g = _gen(1)
    x = torch.randn(32, 2, generator=g, dtype=D64)
    tt = 1e-3 + 0.998 * torch.rand(32, generator=g, dtype=D64)
    eps = torch.randn(32, 1, 2, generator=g, dtype=D64)
    w = torch.tensor([[0.9, 0.1], [-0.2, 0.7]], dtype=D64)
    mine = elbo_terms(proc, lambda u, s_: u @ w.T * s_[:, None, None], x, tt, eps)
    vdm = nfdm_elbo_terms(LearnedProcess(PerDimSchedule(2, learn=False)).double(),
                          lambda z, s_: z @ w.T * s_[:, None], x, tt, eps[:, 0])
    for k in ("diffusion", "prior", "reconstruction"):
        torch.testing.assert_close(mine[k], vdm[k])


def _gauss_kl(m0, c0, m1, c1):
    k = m0.numel()
    sol = torch.linalg.solve(c1, c0)
    d = m1 - m0
    return 0.5 * (torch.trace(sol) + d @ torch.linalg.solve(c1, d) - k
                  + torch.logdet(c1) - torch.logdet(c0))


def _diffusion_integral(proc, ref, x, x_cov, eps_t=1e-3, nodes=64):
    """E_x int_eps^1 E_{q(u_t|x)} |G^T (s - grad log q(u_t|x))|^2 / 2 dt, x ~ N(x, x_cov), in
    closed form (the score's error is affine in u and x), Gauss-Legendre in log t."""
    xs, ws = np.polynomial.legendre.leggauss(nodes)
    lo, hi = np.log(eps_t), 0.0
    total = 0.0
    for xi, wi in zip(xs, ws):
        t = float(np.exp(0.5 * (hi - lo) * xi + 0.5 * (hi + lo)))
        total += _diffusion_integrand(proc, ref, x, x_cov, t) * wi * 0.5 * (hi - lo) * t
    return total


def _diffusion_integrand(proc, ref, x, x_cov, t):
    eye_m = torch.eye(ref.m, dtype=D64)
    mean, cov = ref.law(t)
    with torch.no_grad():
        a, sig = proc.moments(torch.tensor(t, dtype=D64))
        gg = torch.kron(2 * proc.beta(torch.tensor(t, dtype=D64)) * proc.D(), eye_m)
    k, sf = torch.kron(a, eye_m), torch.kron(sig, eye_m)
    bm = torch.linalg.inv(sf) - torch.linalg.inv(cov)
    c = torch.linalg.solve(cov, k @ x - mean)
    ck = torch.linalg.solve(cov, k)
    return float(0.5 * (torch.trace(gg @ bm @ sf @ bm.T) + c @ gg @ c
                        + torch.trace(gg @ ck @ x_cov @ ck.T)))


def _avg_kl(proc, ref, x, x_cov, t):
    """E_x KL(q(u_t | x) || ref_t) for x ~ N(x, x_cov)."""
    point = GaussianLinearReference(proc, x, torch.zeros_like(x_cov))
    mean, cov = ref.law(t)
    k = torch.kron(proc.moments(torch.tensor(t, dtype=D64))[0].detach(),
                   torch.eye(ref.m, dtype=D64))
    return float(_gauss_kl(*point.law(t), mean, cov)
                 + 0.5 * torch.trace(torch.linalg.solve(cov, k @ x_cov @ k.T)))


@pytest.mark.parametrize("name", ["cld", "fp"])
def test_elbo_with_the_exact_score_is_tight(name):
    # with the exact score and the exact prior q_1 the path KL vanishes, for every x:
    # KL(q(u_1|x) || q_1) + int |G^T (s - grad log q(u_t|x))|^2 / 2 = KL(q(u_eps|x) || q_eps)
    proc = _processes()[name]
    ref = GaussianLinearReference(proc, MEAN, COV)

    def gap(score_ref, x, x_cov):
        lhs = _avg_kl(proc, ref, x, x_cov, 1.0) + _diffusion_integral(proc, score_ref, x, x_cov)
        return lhs - _avg_kl(proc, ref, x, x_cov, 1e-3)

    point, zero = torch.tensor([0.1, 0.2], dtype=D64), torch.zeros(2, 2, dtype=D64)
    scale = _avg_kl(proc, ref, point, zero, 1e-3)
    assert abs(gap(ref, point, zero)) < 2e-3 * scale
    assert abs(gap(ref, MEAN, COV)) < 2e-3 * scale
    # averaged over the data, the score of a 15%-wider data law leaves a clear gap (path KL)
    assert gap(GaussianLinearReference(proc, MEAN, 1.15**2 * COV), MEAN, COV) > 0.02


def test_elbo_terms_estimate_the_diffusion_integrand():
    proc = LinearDiffusion.cld()
    ref = GaussianLinearReference(proc, MEAN, COV)
    n, t = 20000, 0.2
    x = MEAN.repeat(n, 1)
    eps = torch.randn(n, 2, 2, generator=_gen(3), dtype=D64)
    tt = torch.full((n,), t, dtype=D64)
    lt = torch.linalg.cholesky(proc.moments(tt)[1])

    def eps_model(score_ref):
        return lambda u, s: -(lt.transpose(-1, -2) @ score_ref.score(u, s))

    exact = _diffusion_integrand(proc, ref, MEAN, torch.zeros(2, 2, dtype=D64), t)
    got = float(elbo_terms(proc, eps_model(ref), x, tt, eps)["diffusion"].mean()) / (1 - 1e-3)
    assert abs(got - exact) < 0.01 * exact
    torch.testing.assert_close(score_from_eps(proc, -(lt[:4].transpose(-1, -2) @ eps[:4]), tt[:4]),
                               eps[:4])
    wrong = float(elbo_terms(proc, eps_model(GaussianLinearReference(proc, MEAN, 1.15**2 * COV)),
                             x, tt, eps)["diffusion"].mean()) / (1 - 1e-3)
    assert abs(wrong - exact) > 0.03 * exact
    # the weight of another process (damping 15% off) is rejected as well
    other = float(elbo_terms(LinearDiffusion.cld(2.3), eps_model(ref), x, tt, eps)["diffusion"]
                  .mean()) / (1 - 1e-3)
    assert abs(other - exact) > 0.015 * exact


@pytest.mark.parametrize("name, method, steps", [("cld", "euler_maruyama", 100),
                                                 ("malda", "euler_maruyama", 150),
                                                 ("fp", "heun", 40)])
def test_reverse_samplers_recover_the_gaussian_data_law(name, method, steps):
    proc = _processes()[name]
    m = 1 if proc.spatial else 2
    noise = torch.randn(2000, proc.n, m, generator=_gen(4), dtype=D64)

    def errors(cov):
        ref = GaussianLinearReference(proc, MEAN, cov)
        x = sample_linear(proc, ref.score, noise, steps, method=method, generator=_gen(5))
        return float((x.mean(0) - MEAN).norm()), float((torch.cov(x.T) - COV).norm() / COV.norm())

    m_err, c_err = errors(COV)
    assert m_err < 0.05 and c_err < 0.1, (m_err, c_err)
    assert errors(1.15**2 * COV)[1] > 0.25  # the score of a 15%-wider law is rejected


def test_bad_input():
    with pytest.raises(ValueError, match="does not reach every coordinate"):
        LinearDiffusion([[0.0, -1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="antisymmetric"):
        LinearDiffusion([[0.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="semi-definite"):
        LinearDiffusion([[0.0]], [[-1.0]])
    proc = LinearDiffusion.cld()
    with pytest.raises(ValueError, match="noise must be"):
        sample_linear(proc, lambda u, t: u, torch.zeros(4, 3, 2), 4)
    with pytest.raises(ValueError, match="x must be"):
        LinearDiffusion.fp(R_FP).rows(torch.zeros(4, 3))


def test_train_linear_learns_the_process_and_the_score():
    from reverie.nets import MLP
    from reverie.train.multivariate import LinearDiffusionModel, train_linear

    g = _gen(6)
    data = MEAN + torch.randn(2000, 2, generator=g, dtype=D64) @ torch.linalg.cholesky(COV).T
    proc = LinearDiffusion.learnable(2, seed=1)
    frozen = LinearDiffusion.learnable(2, seed=1)
    q0, d0 = proc.Q().detach().clone(), proc.D().detach().clone()
    torch.manual_seed(0)
    res = train_linear(LinearDiffusionModel(MLP(dim=4, hidden=32, depth=1), proc), data,
                       steps=60, batch_size=64, lr=1e-2, ema_decay=0.9, log_every=15)
    assert res.losses[-1] < res.losses[0]
    learned = res.net.process
    with torch.no_grad():
        moved = float((learned.Q() - q0).abs().max() + (learned.D() - d0).abs().max())
    assert moved > 1e-3 and torch.equal(frozen.Q(), q0)       # (Q, D) trained with the network
    # the trained eps-network's score beats a zero network on the Gaussian's exact score
    ref = GaussianLinearReference(res.ema.process, MEAN, COV)
    u = ref.sample(500, 0.5, _gen(7))
    t = torch.full((500,), 0.5, dtype=D64)
    with torch.no_grad():
        err = float(((res.ema.score(u, t) - ref.score(u, t)) ** 2).mean())
    assert err < 0.3 * float((ref.score(u, t) ** 2).mean())

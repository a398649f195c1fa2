"""FP-Diffusion's x-dependent spatial SDE (reverie.fp_diffusion; Du et al. 2023): N(0, I) is
stationary with the correction term Gamma (exactly, by the Fokker-Planck equation, and by
simulation), not without it; constant (R, omega) is LinearDiffusion.fp exactly; the reverse
samplers keep / regenerate exact laws, a 15%-wrong score is rejected."""

from __future__ import annotations

import pytest
import torch

from reverie.fp_diffusion import (
    FlexibleSDE,
    fokker_planck_residual,
    log_likelihood_flexible,
    sample_flexible,
)
from reverie.multivariate import GaussianLinearReference, LinearDiffusion
from reverie.train.fp_diffusion import implicit_score_matching

D64 = torch.float64
R_FP = [[1.2, 0.3], [0.3, 0.6]]
OMEGA_FP = [[0.0, 0.8], [-0.8, 0.0]]


def R_x(x):
    return FlexibleSDE.example().R_fn(x)


def omega_x(x):
    return FlexibleSDE.example().omega_fn(x)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _moment_error(x):
    """(max |mean|, max |cov - I|) against N(0, I)."""
    cov = torch.cov(x.T) - torch.eye(x.shape[1], dtype=x.dtype)
    return float(x.mean(0).abs().max()), float(cov.abs().max())


def test_fokker_planck_stationary_current_is_divergence_free_only_with_the_correction():
    x = 1.5 * torch.randn(16, 2, generator=_gen(0), dtype=D64)
    exact = fokker_planck_residual(FlexibleSDE(R_x, omega_x), x)
    assert exact.abs().max() < 1e-10                             # d p_s / dt = 0 everywhere
    wrong = fokker_planck_residual(FlexibleSDE(R_x, omega_x, correction=False), x)
    assert wrong.abs().mean() > 1.0                              # without Gamma: not stationary
    # a non-Gaussian target exp(-U), U = |x|^4 / 4 + |x|^2 / 2: stationary too
    quartic = FlexibleSDE(R_x, omega_x, grad_U=lambda y: y * (1 + (y**2).sum(-1, keepdim=True)))
    assert fokker_planck_residual(quartic, x).abs().max() < 1e-9


def test_simulated_forward_sde_keeps_the_stationary_law_only_with_the_correction():
    x0 = torch.randn(4000, 2, generator=_gen(1), dtype=D64)
    kw = dict(beta_min=2.0, beta_max=2.0)                         # B(1) = 2: well mixed

    def run(correction):
        proc = FlexibleSDE(R_x, omega_x, correction=correction, **kw)
        return _moment_error(proc.simulate(x0, 1.0, 100, generator=_gen(2)))

    m_err, c_err = run(True)
    assert m_err < 0.05 and c_err < 0.06                          # MC noise ~0.02-0.03
    m_bad, c_bad = run(False)
    assert m_bad > 0.1 or c_bad > 0.08                            # drifts off N(0, I)


def test_constant_R_omega_is_the_linear_fp_process_exactly():
    lin = LinearDiffusion.fp(R_FP, OMEGA_FP)
    flex = FlexibleSDE.constant(R_FP, OMEGA_FP)
    x = torch.randn(16, 2, generator=_gen(3), dtype=D64)
    t = 0.37
    b = float(lin.beta(torch.tensor(t)))
    with torch.no_grad():
        m, d = lin.Q() + lin.D(), lin.D()
    assert torch.allclose(flex.drift(x, t), -b * x @ m.T, atol=1e-13)
    assert torch.allclose(flex.diffusion(x, t), 2 * b * d.expand(16, 2, 2), atol=1e-13)
    assert flex.correction_term(x).abs().max() == 0 and flex.div_diffusion(x, t).abs().max() == 0


@pytest.mark.parametrize("wrong", [False, True])
def test_probability_flow_on_the_constant_case_regenerates_the_exact_law(wrong):
    """Heun on the ODE with the exact Gaussian score maps exactly N(0, I) moments (whitened
    noise) to the exact law at t_min; the score of a 15%-wider data law does not."""
    mean, cov = torch.tensor([0.8, -0.5], dtype=D64), torch.tensor([[0.4, 0.15], [0.15, 0.25]],
                                                                   dtype=D64)
    proc = FlexibleSDE.constant(R_FP, OMEGA_FP)
    ref = GaussianLinearReference(LinearDiffusion.fp(R_FP, OMEGA_FP), mean,
                                  cov * (1.15**2 if wrong else 1.0))
    z = torch.randn(2000, 2, generator=_gen(4), dtype=D64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T   # moments exactly (0, I)
    out = sample_flexible(proc, lambda x, t: ref.score(x[..., None], t)[..., 0], z, 60,
                          method="heun")
    exact = GaussianLinearReference(LinearDiffusion.fp(R_FP, OMEGA_FP), mean, cov)
    m1, c1 = exact.law(proc.t_min)
    err = max(float((out.mean(0) - m1).abs().max()), float((torch.cov(out.T) - c1).abs().max()))
    assert (err > 0.03) if wrong else (err < 0.01)


@pytest.mark.parametrize("scale", [1.0, 1.15])
def test_reverse_sde_with_x_dependent_metric_keeps_the_stationary_law(scale):
    """Data ~ N(0, I) = p_s: every marginal is N(0, I), the score is -x; the reverse SDE (with its
    div Sigma term) must keep N(0, I). The score of N(0, 1.15^2 I) is rejected."""
    proc = FlexibleSDE(R_x, omega_x, beta_min=2.0, beta_max=2.0, t_min=0.02)
    z = torch.randn(3000, 2, generator=_gen(5), dtype=D64)
    out = sample_flexible(proc, lambda x, t: -x / scale**2, z, 60, generator=_gen(6))
    m_err, c_err = _moment_error(out)
    if scale == 1.0:
        assert m_err < 0.06 and c_err < 0.07
    else:
        assert c_err > 0.12


@pytest.mark.parametrize("wrong", [False, True])
def test_probability_flow_log_likelihood_matches_the_exact_density(wrong):
    """Constant case, Gaussian data, exact score and the exact q_1 as prior: the change of
    variables gives log q_{t_min}(x) exactly (up to Heun's error); a 15%-wider law's score not."""
    mean, cov = torch.tensor([0.8, -0.5], dtype=D64), torch.tensor([[0.4, 0.15], [0.15, 0.25]],
                                                                   dtype=D64)
    proc = FlexibleSDE.constant(R_FP, OMEGA_FP)
    exact = GaussianLinearReference(LinearDiffusion.fp(R_FP, OMEGA_FP), mean, cov)
    ref = GaussianLinearReference(LinearDiffusion.fp(R_FP, OMEGA_FP), mean,
                                  cov * (1.15**2 if wrong else 1.0))

    def law(t):
        return torch.distributions.MultivariateNormal(*exact.law(t))

    x = exact.sample(16, proc.t_min, generator=_gen(7))[..., 0]
    ll = log_likelihood_flexible(proc, lambda u, t: ref.score(u[..., None], t)[..., 0], x, 80,
                                 prior=law(1.0).log_prob)
    err = float((ll - law(proc.t_min).log_prob(x)).abs().max())
    assert (err > 0.3) if wrong else (err < 0.05)


def test_bad_input():
    with pytest.raises(TypeError, match="callables"):
        FlexibleSDE([[1.0]])
    with pytest.raises(ValueError, match=r"R\(x\) and omega\(x\) must be"):
        FlexibleSDE(lambda x: torch.eye(3).expand(x.shape[0], 3, 3)).drift(torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="positive definite"):
        FlexibleSDE(lambda x: -torch.eye(2, dtype=D64).expand(x.shape[0], 2, 2)).simulate(
            torch.zeros(3, 2, dtype=D64), 0.1, 2)
    with pytest.raises(ValueError, match="antisymmetric"):
        FlexibleSDE.constant(R_FP, [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="unknown method"):
        sample_flexible(FlexibleSDE(R_x), lambda x, t: -x, torch.zeros(2, 2), method="rk4")


class _GaussianScore(torch.nn.Module):
    """The score of N(0, scale^2 C) with the ISM weight sigma_t = 1."""

    def __init__(self, cov, scale):
        super().__init__()
        self.prec = torch.linalg.inv(cov) / scale**2

    def sigma(self, t):
        return torch.ones_like(t)

    def forward(self, x, t):
        return -x @ self.prec.T


def test_implicit_score_matching_is_minimised_by_the_true_score():
    """ISM's value at the exact score is -tr(C^-1) / 2 (closed form); a 15%-wider score scores
    higher, so training is pulled to the true score."""
    cov = torch.tensor([[0.4, 0.15], [0.15, 0.25]], dtype=D64)
    x = torch.randn(20000, 2, generator=_gen(8), dtype=D64) @ torch.linalg.cholesky(cov).T
    t = torch.full((20000,), 0.5, dtype=D64)
    exact = implicit_score_matching(_GaussianScore(cov, 1.0), x, t).mean().detach()
    wrong = implicit_score_matching(_GaussianScore(cov, 1.15), x, t).mean().detach()
    closed = -0.5 * torch.linalg.inv(cov).trace()
    assert abs(float(exact - closed)) < 0.05 * abs(float(closed))
    assert float(wrong - exact) > 0.02 * abs(float(closed))

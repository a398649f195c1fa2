"""Learned forward processes (reverie.learned_process): exact checks of the family, its NFDM
ELBO and its sampler, each with a sibling that feeds a deliberately wrong variant."""

from __future__ import annotations

import pytest
import torch

from reverie.learned_process import (
    AuxiliaryLatentProcess,
    GaussianEncoder,
    LatentConditioned,
    LearnedProcess,
    PerDimSchedule,
    PolynomialSchedule,
    ResidualTransform,
    auxiliary_elbo_terms,
    elbo_terms,
    sample_auxiliary,
    sample_learned,
)
from reverie.process import VPLinear

D64 = torch.float64
B_MAT = torch.tensor([[0.5, -0.3], [0.2, 0.4]], dtype=D64)     # F(x, t) = (I + t B) x
M = torch.tensor([0.7, -0.4], dtype=D64)
S = torch.tensor([[0.5, 0.15], [0.15, 0.3]], dtype=D64)        # data law N(M, S)
EXPONENTS = torch.tensor([1.3, 0.8], dtype=D64)                # per-dimension time warps


class _Linear(torch.nn.Module):
    def forward(self, x, t):
        return x @ B_MAT.T


def _linear_process(beta_max: float = 20.0) -> LearnedProcess:
    sched = PerDimSchedule(2, VPLinear(beta_max=beta_max), learn=False)
    sched.a.data = EXPONENTS.log()
    return LearnedProcess(sched, ResidualTransform(_Linear())).double()


def _closed_form(t: torch.Tensor, exponents: torch.Tensor = EXPONENTS):
    """Per-dimension alpha, sigma, d lambda/dt of the linear process, analytically."""
    vp = VPLinear()
    u = t[:, None] ** exponents
    lam = vp.log_snr(u)
    beta = vp.beta_min + (vp.beta_max - vp.beta_min) * u
    dlam = -beta / torch.sigmoid(-lam) * exponents * t[:, None] ** (exponents - 1)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt(), dlam


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M + torch.randn(n, 2, generator=g, dtype=D64) @ torch.linalg.cholesky(S).T


class _WrongDerivative(LearnedProcess):
    """sigma detached from t: the jvp sees d sigma/dt = 0 (a wrong derivative term)."""

    def moments(self, x, t):
        mu, sigma = super().moments(x, t)
        return mu, sigma.detach()


@pytest.mark.parametrize("wrong", [False, True])
def test_identity_vp_elbo_is_vdm(wrong):
    # F = identity, VPLinear: NFDM's ELBO is VDM's: -1/2 dSNR/dt |x - x_hat|^2, the prior KL
    # and the Gaussian decoder, all in closed form.
    cls = _WrongDerivative if wrong else LearnedProcess
    proc = cls(PerDimSchedule(2, learn=False)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=D64)
    t = 1e-3 + 0.998 * torch.rand(64, generator=g, dtype=D64)
    eps = torch.randn(64, 2, generator=g, dtype=D64)
    w = torch.tensor([[0.9, 0.1], [-0.2, 0.7]], dtype=D64)

    def eps_net(z, s):
        return z @ w.T * s[:, None]

    terms = elbo_terms(proc, eps_net, x, t, eps)
    vp = VPLinear()
    a, s = vp.alpha(t)[:, None], vp.sigma(t)[:, None]
    z = a * x + s * eps
    x_hat = (z - s * eps_net(z, t)) / a
    tt = t.clone().requires_grad_(True)
    dsnr = torch.autograd.grad(vp.log_snr(tt).exp().sum(), tt)[0]
    want = -0.5 * dsnr * ((x - x_hat) ** 2).sum(-1) * (1 - 1e-3)
    a1, s1 = float(vp.alpha(1.0)), float(vp.sigma(1.0))
    prior = 0.5 * ((a1 * x) ** 2 + s1**2 - 1 - 2 * torch.log(torch.tensor(s1))).sum(-1)
    v0 = float(vp.sigma(1e-3) / vp.alpha(1e-3)) ** 2
    recon = torch.full((64,), 0.5 * 2 * (1 + torch.log(torch.tensor(2 * torch.pi * v0))),
                       dtype=D64)
    torch.testing.assert_close(terms["prior"], prior)
    torch.testing.assert_close(terms["reconstruction"], recon)
    err = float(((terms["diffusion"] - want).abs() / want).max())
    if wrong:
        assert err > 0.05
    else:
        assert err < 1e-8


@pytest.mark.parametrize("beta_max", [20.0, 23.0])              # 23 = a 15%-off schedule
def test_linear_transform_closed_form(beta_max):
    proc = _linear_process(beta_max)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8], dtype=D64)
    x = _data(4, 1)
    alpha, sigma, _ = _closed_form(t)
    ax = ((torch.eye(2, dtype=D64) + t[:, None, None] * B_MAT) @ x[:, :, None])[..., 0]
    mu, sig = proc.moments(x, t)
    want = _linear_diffusion(t, x)
    got = elbo_terms(proc, lambda z, s: torch.zeros_like(z), x, t, torch.zeros_like(x),
                     prediction="x")["diffusion"]
    # the marginal of z_t under N(M, S) data: N(alpha A M, alpha A S A^T alpha + diag sigma^2)
    n = 100_000
    z = proc.sample(_data(n, 2), torch.full((n,), 0.3, dtype=D64),
                    torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=D64))
    a3, s3, _ = _closed_form(torch.tensor([0.3], dtype=D64))
    A3 = torch.eye(2, dtype=D64) + 0.3 * B_MAT
    cov = a3.T * (A3 @ S @ A3.T) * a3 + torch.diag(s3[0] ** 2)
    ok = [torch.allclose(mu, alpha * ax, rtol=1e-10), torch.allclose(sig, sigma, rtol=1e-10),
          torch.allclose(got, want, rtol=1e-8),
          torch.allclose(z.mean(0), a3[0] * (A3 @ M), atol=0.01),
          torch.allclose(torch.cov(z.T), cov, atol=0.01)]
    assert all(ok) if beta_max == 20.0 else not any(ok)


def _linear_diffusion(t: torch.Tensor, x: torch.Tensor, exponents: torch.Tensor = EXPONENTS):
    """The ELBO's diffusion term of the linear process at ``x_hat = 0``, by hand."""
    alpha, sigma, dlam = _closed_form(t, exponents)
    A = torch.eye(2, dtype=D64) + t[:, None, None] * B_MAT
    ax = (A @ x[:, :, None])[..., 0]
    # the reverse drift's x-coefficient, by hand: C x = (alpha A)' x - k alpha A x with
    # alpha'/alpha = sigma^2 lambda'/2, k = sigma'/sigma + g^2/(2 sigma^2)
    #   = -(1 + alpha^2) lambda'/2
    dalpha = alpha * sigma**2 * dlam / 2
    k = -(1 + alpha**2) * dlam / 2
    cx = dalpha * ax + alpha * (x @ B_MAT.T) - k * alpha * ax
    return (cx**2 / (2 * -sigma**2 * dlam)).sum(-1) * (1 - 1e-3)


def _posterior_mean(proc: LearnedProcess, cov_data: torch.Tensor):
    """E[x | z_t] for x ~ N(M, cov_data) under the linear process (a Gaussian conditional)."""

    def den(z, t):
        lam = proc.schedule.log_snr(t)
        A = torch.eye(2, dtype=D64) + t[:, None, None] * B_MAT
        Mt = torch.sigmoid(lam).sqrt()[:, :, None] * A          # z = M_t x + sigma eps
        cz = Mt @ cov_data @ Mt.transpose(1, 2) + torch.diag_embed(torch.sigmoid(-lam))
        r = (z - Mt @ M)[:, :, None]
        return M + (cov_data @ Mt.transpose(1, 2) @ torch.linalg.solve(cz, r))[..., 0]

    return den


@pytest.mark.parametrize("sde, steps", [(True, 100), (False, 50)])
@pytest.mark.parametrize("scale", [1.0, 0.85])                  # 0.85: a 15%-off posterior
def test_sampler_recovers_gaussian_data(sde, steps, scale):
    # the exact E[x | z_t] plugged into the reverse SDE / ODE regenerates the data law
    proc = _linear_process()
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(4), dtype=D64)
    x = sample_learned(proc, _posterior_mean(proc, scale * S), noise, steps, sde=sde,
                       prediction="x", generator=torch.Generator().manual_seed(5))
    err = float((torch.cov(x.T) - S).abs().max())
    assert (err < 0.035) if scale == 1.0 else (err > 0.045)
    if scale == 1.0:
        assert torch.allclose(x.mean(0), M, atol=0.05)


def test_bad_input():
    proc = LearnedProcess(PerDimSchedule(2, learn=False)).double()
    x = torch.zeros(3, 2, dtype=D64)
    t = torch.full((3,), 0.5, dtype=D64)
    with pytest.raises(ValueError, match="prediction"):
        elbo_terms(proc, lambda z, s: z, x, t, x, prediction="v")
    with pytest.raises(ValueError, match="steps"):
        sample_learned(proc, lambda z, s: z, x, 0)
    with pytest.raises(ValueError, match="t_min"):
        LearnedProcess(PerDimSchedule(2), t_min=0.0)
    from reverie.train.learned import LearnedDiffusion
    with pytest.raises(TypeError, match="LearnedProcess"):
        LearnedDiffusion(torch.nn.Identity(), VPLinear())


class _Unconstrained(PolynomialSchedule):
    """The polynomial without MuLAN's square: ``f' = a t^2 + b t + k`` can turn negative."""

    def warp(self, t, c):
        a, b, k = self.coefficients(c.to(t.dtype)).unbind(-1)

        def f(u):
            return a * u**3 / 3 + b * u**2 / 2 + k * u
        return f(t[:, None]) / f(torch.ones_like(t)[:, None])


@pytest.mark.parametrize("cls", [PolynomialSchedule, _Unconstrained])
def test_polynomial_schedule_monotone_for_every_context(cls):
    g = torch.Generator().manual_seed(0)
    sched = cls(2, 3).double()
    with torch.no_grad():                                        # conditioning on, strongly
        sched.linear.weight.copy_(2 * torch.randn(6, 3, generator=g, dtype=D64))
    c = torch.randn(50, 3, generator=g, dtype=D64)               # 50 contexts x 200 times
    t = torch.linspace(0, 1, 200, dtype=D64)
    lam = torch.stack([sched.log_snr(t, ci.expand(200, 3)) for ci in c])   # [50, 200, 2]
    vp = VPLinear()
    ends = [torch.allclose(lam[:, 0], vp.log_snr(torch.zeros(1, dtype=D64)).expand(50, 2)),
            torch.allclose(lam[:, -1], vp.log_snr(torch.ones(1, dtype=D64)).expand(50, 2))]
    assert all(ends)                                             # end points: the base's
    monotone = bool((lam.diff(dim=1) < 0).all())                 # VP log-SNR strictly falls
    assert monotone if cls is PolynomialSchedule else not monotone


@pytest.mark.parametrize("variant", ["off", "on", "beta23"])   # on / 23: ~15% changes
def test_conditioned_elbo_reduces_to_unconditioned(variant):
    # conditioning switched off (zero context weights, identity bias): for any context the
    # ELBO is the unconditioned linear process's, closed form, exponents 1
    t = torch.tensor([0.05, 0.2, 0.5, 0.8], dtype=D64)
    x, c = _data(4, 1), torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=D64)
    sched = PolynomialSchedule(2, 3, VPLinear(beta_max=23.0 if variant == "beta23" else 20.0))
    if variant == "on":
        with torch.no_grad():
            sched.linear.weight.copy_(0.03 * torch.randn(6, 3, generator=torch.Generator()
                                                        .manual_seed(7)))
    proc = LearnedProcess(sched.double().given(c), ResidualTransform(_Linear())).double()
    plain = LearnedProcess(PerDimSchedule(2, learn=False), ResidualTransform(_Linear())).double()
    got = elbo_terms(proc, lambda z, s: torch.zeros_like(z), x, t, torch.zeros_like(x),
                     prediction="x")
    ref = elbo_terms(plain, lambda z, s: torch.zeros_like(z), x, t, torch.zeros_like(x),
                     prediction="x")
    want = _linear_diffusion(t, x, torch.ones(2, dtype=D64))
    rel = float(((got["diffusion"] - want).abs() / want).max().detach())
    same = [torch.allclose(got[k], ref[k]) for k in ("prior", "reconstruction")]
    if variant == "off":
        assert rel < 1e-8 and all(same)
    else:
        assert rel > 0.05
    if variant == "on":
        assert same[0]                       # t = 1 is fixed: the prior term is unchanged


def test_polynomial_schedule_bad_context():
    with pytest.raises(ValueError, match="context"):
        PolynomialSchedule(2, 3).log_snr(torch.ones(4), torch.ones(4, 2))


# MuLAN's auxiliary latent: encoder q(z_aux | x), prior N(0, I), z_aux-conditioned schedule


def _encoder(latent: int = 3, log_std: float = -0.5) -> GaussianEncoder:
    """A linear Gaussian encoder: mean W x, log-std a constant plus a small x-dependence."""
    lin = torch.nn.Linear(2, 2 * latent).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2 * latent, 2, generator=torch.Generator().manual_seed(8)))
        lin.bias.copy_(torch.cat([torch.zeros(latent), torch.full((latent,), log_std)]))
        lin.weight[latent:] *= 0.2
    return GaussianEncoder(2, latent, net=lin)


def _aux_process(weight: float = 0.0, cls=PolynomialSchedule) -> AuxiliaryLatentProcess:
    sched = cls(2, 3).double()
    with torch.no_grad():
        sched.linear.weight.copy_(weight * torch.randn(6, 3, generator=torch.Generator()
                                                       .manual_seed(7), dtype=D64))
    return AuxiliaryLatentProcess(_encoder(), sched, ResidualTransform(_Linear()))


def _eps_net(z, s):
    return z @ torch.tensor([[0.9, 0.1], [-0.2, 0.7]], dtype=D64).T * s[:, None]


@pytest.mark.parametrize("weight", [0.0, 0.03])                  # 0.03: z_aux moves the warp
def test_auxiliary_elbo_reduces_to_learned_elbo(weight):
    # a z_aux-independent schedule (W = 0) and a point-mass draw (eps_aux = 0, z_aux = m(x)):
    # every diffusion-bound term is the plain process's (NFDM / VDM ELBO), to 1e-8
    proc = _aux_process(weight)
    g = torch.Generator().manual_seed(0)
    x, eps = _data(16, 1), torch.randn(16, 2, generator=g, dtype=D64)
    t = 1e-3 + 0.998 * torch.rand(16, generator=g, dtype=D64)
    got = auxiliary_elbo_terms(proc, lambda z, s, za: _eps_net(z, s), x, t, eps,
                               torch.zeros(16, 3, dtype=D64))
    plain = LearnedProcess(PerDimSchedule(2, learn=False), ResidualTransform(_Linear())).double()
    ref = elbo_terms(plain, _eps_net, x, t, eps)
    rel = max(float(((got[k] - ref[k]).abs() / ref[k].abs()).max().detach()) for k in ref)
    assert set(got) == {"diffusion", "prior", "reconstruction", "latent"}
    assert (rel < 1e-8) if weight == 0.0 else (rel > 0.05)


@pytest.mark.parametrize("scale", [1.0, 0.85])                   # 0.85: a 15%-off posterior std
def test_auxiliary_kl_closed_form(scale):
    # KL(q(z_aux | x) || N(0, I)) against torch.distributions' closed form
    proc = _aux_process()
    x = _data(32, 3)
    got = auxiliary_elbo_terms(proc, lambda z, s, za: z, x, torch.full((32,), 0.5, dtype=D64),
                               torch.zeros_like(x), torch.zeros(32, 3, dtype=D64))["latent"]
    m, r = proc.encoder(x)
    normal = torch.distributions.Normal
    want = torch.distributions.kl_divergence(normal(m, scale * r.exp()),
                                             normal(torch.zeros_like(m), 1.0)).sum(-1)
    ok = torch.allclose(got, want, rtol=1e-10) and torch.allclose(proc.encoder.kl(x), want)
    assert ok if scale == 1.0 else not ok


class _IgnoresContext(PolynomialSchedule):
    """A schedule that drops z_aux: the bias coefficients for every context."""

    def coefficients(self, c):
        return self.bias.expand(len(c), self.dim, 3)


@pytest.mark.parametrize("cls", [PolynomialSchedule, _IgnoresContext])
def test_auxiliary_schedule_adapts_to_z(cls):
    # the bound uses the schedule at the drawn z_aux = m(x) + exp(r(x)) eps_aux: equal to the
    # process given that z_aux, and different draws of z_aux give different bounds
    proc = _aux_process(0.5, cls)
    x, t = _data(8, 4), torch.linspace(0.1, 0.9, 8, dtype=D64)
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(9), dtype=D64)
    eps_aux = torch.randn(8, 3, generator=torch.Generator().manual_seed(10), dtype=D64)
    got = [auxiliary_elbo_terms(proc, lambda z, s, za: _eps_net(z, s), x, t, eps, e)["diffusion"]
           for e in (torch.zeros_like(eps_aux), eps_aux)]
    m, r = proc.encoder(x)
    ref = elbo_terms(proc.given(m + r.exp() * eps_aux), _eps_net, x, t, eps)["diffusion"]
    assert torch.allclose(got[1], ref, rtol=1e-12)
    moved = float(((got[1] - got[0]).abs() / got[0]).max().detach())
    assert (moved > 0.05) if cls is PolynomialSchedule else (moved < 1e-12)


@pytest.mark.parametrize("told", ["same", "15% off", "prior mean"])
def test_sample_auxiliary_recovers_gaussian_data(told):
    # z_aux ~ N(0, I); the exact E[x | z_t] of N(M, S) data under the process given z_aux, fed
    # the same z_aux, regenerates the data law; a 15%-off posterior, or the right posterior fed
    # another z_aux (zeros) than the process's, does not
    proc = _aux_process(0.5)
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4), dtype=D64)

    def den(z, s, za):
        cov = 0.85 * S if told == "15% off" else S
        return _posterior_mean(proc.given(0 * za if told == "prior mean" else za), cov)(z, s)

    x = sample_auxiliary(proc, den, noise, 30, sde=False, prediction="x",
                         generator=torch.Generator().manual_seed(5))
    err = max(float((torch.cov(x.T) - S).abs().max()), float((x.mean(0) - M).abs().max()))
    assert (err < 0.04) if told == "same" else (err > 0.05)


def test_auxiliary_training_and_bad_input():
    from reverie.nets import MLP
    from reverie.train.learned import LearnedDiffusion, negative_elbo, train_learned

    torch.manual_seed(0)
    proc = AuxiliaryLatentProcess(GaussianEncoder(2, 2, hidden=16), PolynomialSchedule(2, 2))
    model = LearnedDiffusion(LatentConditioned(MLP(dim=4, hidden=16, depth=1), 2), proc)
    res = train_learned(model, torch.randn(64, 2), steps=5, batch_size=16, warmup=1)
    assert res.net.process.schedule.linear.weight.abs().sum() > 0   # d bound / d W != 0
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="eps_aux"):
        negative_elbo(model, x, torch.full((3,), 0.5), x)
    with pytest.raises(ValueError, match="latent_dim"):
        AuxiliaryLatentProcess(GaussianEncoder(2, 3), PolynomialSchedule(2, 2))
    with pytest.raises(ValueError, match="encoder net"):
        GaussianEncoder(2, 3, net=torch.nn.Linear(2, 5))(x)

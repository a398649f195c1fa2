"""Forward-process variants (issue 19, row M1): two-sided stochastic interpolants, truncated
diffusion with an auxiliary prior, Brownian bridges, E-TSDM's shared time conditions.

Each accuracy check runs against a closed form (Gaussian end points, Gaussian-mixture
marginals) and has a sibling that feeds a deliberately wrong variant and must be rejected."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.bridge import BrownianBridge, GaussianBridgeReference, bridge_sample
from reverie.grids import make_grid
from reverie.interpolants import (
    GaussianInterpolantReference,
    TwoSidedInterpolant,
    interpolant_log_likelihood,
    interpolant_ode,
    interpolant_sde,
)
from reverie.metrics import mode_weight_error
from reverie.mixture_denoising import (
    MixtureMeanDenoiser,
    exact_mixture_posterior,
    mixture_ancestral,
    mixture_nll,
)
from reverie.process import VE, Truncated, VPLinear
from reverie.reference import Gaussian, GaussianMixture
from reverie.samplers import sample
from reverie.structured_noise import (
    phase_preserving_noise,
    radial_frequency,
    structured_add_noise,
)
from reverie.train.etsdm import SharedTimeConditions, time_lipschitz
from reverie.train.interpolants import interpolant_loss, train_interpolant
from reverie.train.mixture import train_mixture
from reverie.truncation import fit_prior, sample_truncated, truncated_log_likelihood

M0, S0 = [-1.0, 0.5], [[0.3, 0.1], [0.1, 0.5]]
M1, S1 = [2.0, 1.0], [[1.0, -0.3], [-0.3, 0.4]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(interp: TwoSidedInterpolant) -> GaussianInterpolantReference:
    return GaussianInterpolantReference.build(interp, M0, S0, M1, S1)


def _scaled_gamma(c: float, gdg_factor: float = 1.0) -> TwoSidedInterpolant:
    """The linear interpolant with gamma = c sqrt(t (1 - t)); ``gdg_factor`` scales only the
    ``gamma gamma'`` the velocity uses (a velocity inconsistent with its own marginals)."""
    return TwoSidedInterpolant(
        lambda t: 1 - t, lambda t: t.clone(),
        lambda t: c * torch.sqrt((t * (1 - t)).clamp(min=0.0)),
        gamma_d_gamma_fn=lambda t: gdg_factor * 0.5 * c**2 * (1 - 2 * t))


def _affine_law(velocity, t1: float, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of N(M0, S0) pushed by the ODE to ``t1``: the Gaussian velocity is
    affine in x, so the flow map is affine and is read off from d + 1 transported points."""
    m0, s0 = torch.tensor(M0, dtype=torch.float64), torch.tensor(S0, dtype=torch.float64)
    basis = torch.cat([m0[None], m0 + torch.eye(2, dtype=torch.float64)])
    out = interpolant_ode(velocity, basis, steps, t1=t1)
    a = (out[1:] - out[0]).T
    return out[0], a @ s0 @ a.T


def _law_errors(x, gm):
    """Mean error, relative covariance error and mode-weight TV of samples against a mixture
    (robust where a sliced distance swings with the sampled mode weights)."""
    cov = gm.covariance()
    return (float((x.mean(0) - gm.mean()).norm()),
            float((torch.cov(x.T) - cov).norm() / cov.norm()), mode_weight_error(x, gm))


def _close(mean, cov, law, tol):
    return float((mean - law[0]).norm()) < tol and float((cov - law[1]).norm()) < tol


# ---------------------------------------------------------------------------------------------
# Two-sided stochastic interpolants (Albergo et al. 2023)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", ["sqrt", "quadratic"])
def test_interpolant_ode_transports_the_exact_gaussian_law(gamma):
    ref = _reference(TwoSidedInterpolant.linear(1.0, gamma))
    for t1 in (0.5, 1.0):
        mean, cov = _affine_law(ref.velocity, t1)
        assert _close(mean, cov, ref.law(t1), 1e-3), (t1, mean, cov, ref.law(t1))


def test_interpolant_ode_rejects_a_wrong_gamma():
    good = _reference(_scaled_gamma(1.0))
    # gamma 15% too large: another valid interpolant -- same end laws, other marginals
    wrong = _reference(_scaled_gamma(1.15))
    assert _close(*_affine_law(wrong.velocity, 1.0), good.law(1.0), 1e-3)
    assert not _close(*_affine_law(wrong.velocity, 0.5), good.law(0.5), 1e-2)
    # a velocity whose gamma term is 15% off its own marginals misses the end law
    inconsistent = _reference(_scaled_gamma(1.0, gdg_factor=1.15))
    assert not _close(*_affine_law(inconsistent.velocity, 1.0), good.law(1.0), 1e-2)


def test_interpolant_sde_keeps_the_marginals_and_needs_the_score():
    interp = TwoSidedInterpolant.linear(1.0, "sqrt")
    ref = _reference(interp)
    x0 = Gaussian(M0, torch.tensor(S0)).sample(6000, _gen(0))
    m1, s1 = ref.law(1.0)

    def err(denoiser):
        x = interpolant_sde(ref.velocity, denoiser, interp, x0, 100, epsilon=1.0,
                            generator=_gen(1))
        return float((x.mean(0) - m1).norm() + (torch.cov(x.T) - s1).norm())

    assert err(ref.denoiser) < 0.08
    assert err(lambda x, t: torch.zeros_like(x)) > 0.3  # noise without the score correction


def test_interpolant_log_likelihood_is_exact():
    ref = _reference(TwoSidedInterpolant.linear(1.0, "sqrt"))
    x = Gaussian(M1, torch.tensor(S1)).sample(8, _gen(2))
    base = lambda z: ref.log_prob(z, 0.0)  # noqa: E731
    exact = ref.log_prob(x, 1.0)
    assert float((interpolant_log_likelihood(ref.velocity, x, base) - exact).abs().max()) < 1e-3
    wrong = _reference(_scaled_gamma(1.0, gdg_factor=1.15))
    assert float((interpolant_log_likelihood(wrong.velocity, x, base) - exact).abs().max()) > 1e-2


@pytest.mark.parametrize("objective", ["velocity", "denoiser"])
def test_interpolant_objectives_are_minimised_by_the_exact_fields(objective):
    interp = TwoSidedInterpolant.linear(1.0, "quadratic")
    ref = _reference(interp)
    g = _gen(3)
    n = 20000
    x0 = Gaussian(M0, torch.tensor(S0)).sample(n, g)
    x1 = Gaussian(M1, torch.tensor(S1)).sample(n, g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.4, dtype=torch.float64)  # one time: the references take one
    exact = ref.velocity if objective == "velocity" else ref.denoiser

    def loss(fn):
        return float(interpolant_loss(fn, interp, x0, x1, z, t, objective))

    best = loss(exact)
    assert best < loss(lambda x, tt: 1.15 * exact(x, tt))
    assert best < loss(lambda x, tt: exact(x, tt) + 0.15)


def test_train_interpolant_learns_the_gaussian_velocity():
    from reverie.nets import MLP
    from reverie.train.interpolants import field_of

    interp = TwoSidedInterpolant.linear(1.0, "quadratic")
    ref = _reference(interp)
    torch.manual_seed(0)
    src, tgt = Gaussian(M0, torch.tensor(S0)), Gaussian(M1, torch.tensor(S1))
    res = train_interpolant(MLP(dim=2, hidden=32, depth=1), lambda n, g: src.sample(n, g).float(),
                            lambda n, g: tgt.sample(n, g).float(), interp, steps=150,
                            batch_size=128, lr=1e-2, ema_decay=0.9, seed=0)
    x = src.sample(256, _gen(4))
    mean, cov = ref.law(1.0)
    out = interpolant_ode(field_of(res.ema), x, 20)
    moved = float((out.mean(0) - mean).norm())
    assert moved < 0.2 < float((x.mean(0) - mean).norm())
    assert res.losses[-1] < res.losses[0]


def test_one_sided_special_case_runs_the_registered_samplers():
    interp = TwoSidedInterpolant.linear(1.0, "sqrt")
    proc = interp.one_sided()
    # x0 ~ N(0, I): x_t = beta x1 + sqrt(alpha^2 + gamma^2) eps at reversed time u = 1 - t
    u = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(proc.alpha(u), interp.beta(1 - u))
    assert torch.allclose(proc.sigma(u) ** 2, interp.alpha(1 - u) ** 2 + interp.gamma(1 - u) ** 2)
    gm = GaussianMixture([[-1.5, 0.0], [1.0, 1.0]], 0.1, [0.3, 0.7])
    noise = torch.randn(3000, 2, generator=_gen(7), dtype=torch.float64)
    for name in ("heun", "dpmpp_2m", "ddim", "euler_maruyama"):
        m, c, w = _law_errors(sample(gm.denoiser(proc), noise, name, 30, generator=_gen(8)), gm)
        assert m < 0.05 and c < 0.05 and w < 0.03, (name, m, c, w)
    # noise 15% too large at the start (a wrong sigma(t_max)) is rejected
    m, c, w = _law_errors(sample(gm.denoiser(proc), 1.15 * noise, "heun", 30), gm)
    assert c > 0.05 or w > 0.03, (m, c, w)


def test_interpolant_bad_input():
    with pytest.raises(ValueError, match="gamma must vanish"):
        TwoSidedInterpolant(lambda t: 1 - t, lambda t: t.clone(), lambda t: 0 * t + 0.1)
    with pytest.raises(ValueError, match="alpha"):
        TwoSidedInterpolant(lambda t: 1 + 0 * t, lambda t: t.clone(), lambda t: t * (1 - t))
    with pytest.raises(ValueError, match="unknown gamma"):
        TwoSidedInterpolant.linear(1.0, "cubic")
    with pytest.raises(ValueError, match="one_sided needs"):
        TwoSidedInterpolant.linear().one_sided(t_max=1.0)
    with pytest.raises(ValueError, match="vanish where gamma"):
        ref = _reference(TwoSidedInterpolant.linear())
        interpolant_sde(ref.velocity, ref.denoiser, ref.interpolant, torch.zeros(3, 2), 4,
                        epsilon=lambda t: 1.0)


# ---------------------------------------------------------------------------------------------
# Truncated diffusion with an auxiliary prior (Franzese et al. 2023)
# ---------------------------------------------------------------------------------------------

MIX = GaussianMixture([[-2.0, 0.0], [1.5, 1.0]],
                      torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 0.6]]]),
                      [0.4, 0.6])


def test_truncated_process_is_the_base_stopped_early():
    base = VPLinear()
    proc = Truncated(base, 0.3)
    t = torch.tensor([0.01, 0.1, 0.3], dtype=torch.float64)
    for name in ("alpha", "sigma", "log_snr", "d_alpha", "d_sigma"):
        assert torch.allclose(getattr(proc, name)(t), getattr(base, name)(t)), name
    assert (proc.t_min, proc.t_max, proc.t_clean) == (base.t_min, 0.3, base.t_clean)
    with pytest.raises(ValueError, match="truncation time"):
        Truncated(base, 1.5)
    with pytest.raises(ValueError, match="truncation time"):
        Truncated(base, 1e-4)
    with pytest.raises(TypeError):
        Truncated(VE(), "0.5")


def test_truncated_likelihood_with_the_exact_prior_is_exact():
    proc = Truncated(VPLinear(), 0.3)
    x = MIX.sample(16, _gen(1))
    q_T = MIX.marginal(proc, proc.t_max)
    exact = MIX.log_prob(x)
    ll = truncated_log_likelihood(MIX.denoiser(proc), x, q_T)
    assert float((ll - exact).abs().max()) < 1e-3
    # N(0, sigma_T^2 I) at T = 0.3: the model is off by log p_prior(x_T) - log q_T(x_T) per point
    res = truncated_log_likelihood(MIX.denoiser(proc), x, None, return_info=True)
    gap = res.prior - q_T.log_prob(res.x_T)
    assert float((res.log_likelihood - exact - gap).abs().max()) < 1e-3
    assert float(gap.mean()) < -0.3  # the prior gap KL(q_T || N) is far from zero


def test_sampling_from_the_exact_truncated_marginal_reproduces_the_data():
    proc = Truncated(VPLinear(), 0.3)
    den = MIX.denoiser(proc)

    def errors(prior):
        return _law_errors(sample_truncated(den, prior, 3000, "heun", 20, generator=_gen(4)), MIX)

    m, c, w = errors(MIX.marginal(proc, 0.3))
    assert m < 0.1 and c < 0.06 and w < 0.03
    m, c, _ = errors(Gaussian([0.0, 0.0], 1.0))  # N(0, I) at small T is not the marginal
    assert m > 0.2 and c > 0.2


def test_fitted_prior_matches_the_forward_marginal():
    proc = Truncated(VPLinear(), 0.3)
    q_T = MIX.marginal(proc, 0.3)
    prior = fit_prior(MIX.sample(3000, _gen(5)), proc, n_components=2, iters=60,
                      generator=_gen(6))
    fresh = q_T.sample(4000, _gen(7))
    exact = float(q_T.log_prob(fresh).mean())
    assert abs(float(prior.log_prob(fresh).mean()) - exact) < 0.03
    normal = Gaussian([0.0, 0.0], float(proc.sigma(0.3)) ** 2)
    assert exact - float(normal.log_prob(fresh).mean()) > 0.3


# ---------------------------------------------------------------------------------------------
# Brownian bridges (BBDM / EBDM)
# ---------------------------------------------------------------------------------------------

BRIDGE_S = torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=torch.float64)


def _bridge_reference(bridge, s_scale=1.0):
    return GaussianBridgeReference.build(bridge, [[0.5, 0.2], [0.0, -0.8]], [1.0, 0.0],
                                         BRIDGE_S * s_scale)


def test_bridge_marginal_and_posterior_are_exact():
    bridge = BrownianBridge(1.0)
    x0 = torch.tensor([[1.0, -1.0]], dtype=torch.float64).repeat(20000, 1)
    y = torch.tensor([[0.0, 2.0]], dtype=torch.float64).repeat(20000, 1)
    xt = bridge.add_noise(x0, y, torch.randn(x0.shape, generator=_gen(0), dtype=torch.float64),
                          0.3)
    assert torch.allclose(xt.mean(0), torch.tensor([0.7, -0.1], dtype=torch.float64), atol=0.02)
    assert torch.allclose(xt.var(0), torch.full((2,), 2 * 0.3 * 0.7, dtype=torch.float64),
                          rtol=0.05)

    def brute(b, t, s):  # condition the bridge's Gaussian pair (x_s, x_t): Cov = 2 k s (1 - t)
        var_s, var_t, cov = 2 * b * s * (1 - s), 2 * b * t * (1 - t), 2 * b * s * (1 - t)
        return math.sqrt(var_s - cov**2 / var_t)

    for t, s in ((0.8, 0.5), (0.3, 0.1), (0.55, 0.5)):
        assert abs(bridge.posterior_std(t, s) - brute(1.0, t, s)) < 1e-12
        assert abs(BrownianBridge(1.15).posterior_std(t, s) - brute(1.0, t, s)) > 1e-3
    assert abs(bridge.posterior_std(1.0, 0.9) - math.sqrt(bridge.delta(0.9))) < 1e-12


def test_bridge_sampler_reaches_the_gaussian_target():
    bridge = BrownianBridge(1.0)
    ref = _bridge_reference(bridge)
    y = torch.tensor([[0.7, -1.2]], dtype=torch.float64).repeat(4000, 1)
    mean = ref.target_mean(y[:1])[0]

    def err(denoiser, eta=1.0):
        x = bridge_sample(denoiser, y, bridge, 500, eta=eta, generator=_gen(1))
        return float((x.mean(0) - mean).norm()), float((torch.cov(x.T) - BRIDGE_S).norm()
                                                        / BRIDGE_S.norm())

    m_err, c_err = err(ref)
    assert m_err < 0.02 and c_err < 0.12
    # the denoiser of a bridge with 15% more variance, and of a 15%-wider target, are rejected
    assert err(GaussianBridgeReference(BrownianBridge(1.15), ref.A, ref.b, ref.S))[1] > 0.15
    assert err(_bridge_reference(bridge, 1.15**2))[1] > 0.15
    # eta = 0 from a pinned start is deterministic: one point per source, no spread
    assert err(ref, eta=0.0)[1] > 0.99


def test_bridge_needs_its_end_point():
    bridge = BrownianBridge()
    ref = _bridge_reference(bridge)
    with pytest.raises(ValueError, match="end point"):
        bridge_sample(ref, None, bridge, 10)
    with pytest.raises(ValueError, match="end point"):
        bridge.add_noise(torch.zeros(4, 2), None, torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="end point"):
        bridge.add_noise(torch.zeros(4, 2), torch.zeros(3, 2), torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="variance scale"):
        BrownianBridge(0.0)


# ---------------------------------------------------------------------------------------------
# E-TSDM: shared time conditions near t = 0 (Yang et al. 2024)
# ---------------------------------------------------------------------------------------------


class _Probe(torch.nn.Module):
    """Returns its time input, to see the conditions the wrapper feeds."""

    def forward(self, x, t):
        return t[:, None].expand_as(x)


def test_shared_time_conditions_quantise_only_near_zero():
    wrap = SharedTimeConditions(_Probe(), t_tilde=0.1, n=5)
    t = torch.tensor([0.0, 0.019, 0.02, 0.05, 0.099, 0.1, 0.5], dtype=torch.float64)
    got = wrap(torch.zeros(7, 1), t)[:, 0]
    want = torch.tensor([0.0, 0.0, 0.02, 0.04, 0.08, 0.1, 0.5], dtype=torch.float64)
    assert torch.allclose(got, want)
    with pytest.raises(ValueError):
        SharedTimeConditions(_Probe(), t_tilde=0.0, n=5)


def test_shared_time_conditions_bound_the_lipschitz_constant_of_the_exact_eps():
    # the exact eps of a mixture is steep in t near 0 away from the data; with shared
    # conditions the wrapped function is flat inside each interval
    proc = VPLinear()
    den = MIX.denoiser(proc)
    x = torch.tensor([[0.0, 3.0], [-4.0, -2.0]], dtype=torch.float64)
    ts = torch.linspace(proc.t_min, 0.1, 60, dtype=torch.float64)
    base = time_lipschitz(den.eps, x, ts)
    shared = SharedTimeConditions(lambda x_, t_: den.eps(x_, t_.clamp(min=proc.t_min)), 0.1, 5)
    inside = time_lipschitz(shared, x, torch.linspace(0.021, 0.039, 10, dtype=torch.float64))
    assert float(inside.max()) == 0.0 < float(base.max())
    # between the shared conditions (spacing 0.02) the constant is below the fine-grid maximum
    grid = torch.linspace(0.0, 0.1, 6, dtype=torch.float64).clamp(min=proc.t_min)
    assert float(time_lipschitz(den.eps, x, grid).max()) < float(base.max())


# ---------------------------------------------------------------------------------------------
# Mixture reverse kernel (soft mixture denoising, Li et al. 2024)
# ---------------------------------------------------------------------------------------------


def test_exact_mixture_posterior_has_the_exact_mean():
    proc = VPLinear()
    post = exact_mixture_posterior(MIX, proc)
    x = MIX.prior_sample(proc, 0.4, 6, _gen(1))
    assert torch.allclose(MixtureMeanDenoiser(post, proc)(x, 0.4), MIX.denoise(x, 0.4, proc),
                          atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_mixture_kernel_is_exact_at_few_steps_where_the_gaussian_kernel_is_not(steps):
    proc = VPLinear()
    grid = make_grid(proc, steps, "uniform")
    noise = torch.randn(3000, 2, generator=_gen(2), dtype=torch.float64)
    x = mixture_ancestral(exact_mixture_posterior(MIX, proc), noise * float(proc.sigma(grid[0])),
                          proc, grid, generator=_gen(3))
    m, c, w = _law_errors(x, MIX)
    assert m < 0.1 and c < 0.06 and w < 0.03, (m, c, w)
    # DDPM's Gaussian kernel with the same exact E[x0 | x_t]: the expressive bottleneck
    x = sample(MIX.denoiser(proc), noise, "ddpm", steps, grid=grid, generator=_gen(3))
    m, c, w = _law_errors(x, MIX)
    assert c > 0.3, (m, c, w)


def test_mixture_objective_prefers_the_true_posterior():
    proc = VPLinear()
    x0 = _isotropic_mix().sample(4000, _gen(4))
    t = torch.full((4000,), 0.5, dtype=torch.float64)
    xt = proc.add_noise(x0, torch.randn(x0.shape, generator=_gen(5), dtype=torch.float64), t)
    log_w, means, covs = exact_mixture_posterior(_isotropic_mix(), proc)(xt, t)
    var = torch.diagonal(covs, dim1=-2, dim2=-1)[..., 0]
    best = float(mixture_nll(log_w, means, var, x0).mean())
    assert best < float(mixture_nll(log_w, means, 1.15**2 * var, x0).mean())
    assert best < float(mixture_nll(log_w, means + 0.15, var, x0).mean())
    with pytest.raises(TypeError):
        train_mixture(torch.nn.Linear(2, 2), x0.float(), steps=1)


def _isotropic_mix() -> GaussianMixture:
    return GaussianMixture([[-2.0, 0.0], [1.5, 1.0]], torch.tensor([0.3, 0.2]), [0.4, 0.6])


# ---------------------------------------------------------------------------------------------
# Phase-preserving and frequency-selective structured noise (NeuralRemaster)
# ---------------------------------------------------------------------------------------------


def _unit(spec):
    return spec / spec.abs()


def test_phase_preserving_noise_keeps_energy_and_takes_the_reference_phase():
    ref = torch.randn(4, 1, 8, 10, generator=_gen(1), dtype=torch.float64)
    eps = torch.randn(4, 1, 8, 10, generator=_gen(2), dtype=torch.float64)
    out = phase_preserving_noise(ref, noise=eps)
    spec_o, spec_r, spec_e = (torch.fft.rfft2(v) for v in (out, ref, eps))
    # Parseval: the magnitudes (so the energy) are the Gaussian draw's, the phases the reference's
    assert torch.allclose(out.pow(2).sum((-2, -1)), eps.pow(2).sum((-2, -1)), atol=1e-10)
    assert torch.allclose(spec_o.abs(), spec_e.abs(), atol=1e-10)
    assert torch.allclose(_unit(spec_o), _unit(spec_r), atol=1e-10)
    # the phase of another image is rejected
    other = torch.randn(4, 1, 8, 10, generator=_gen(3), dtype=torch.float64)
    assert not torch.allclose(_unit(torch.fft.rfft2(phase_preserving_noise(other, noise=eps))),
                              _unit(spec_r), atol=1e-2)


def test_frequency_selective_noise_locks_only_low_frequencies():
    ref = torch.randn(2, 8, 8, generator=_gen(4), dtype=torch.float64)
    eps = torch.randn(2, 8, 8, generator=_gen(5), dtype=torch.float64)
    out = phase_preserving_noise(ref, noise=eps, cutoff=0.4)
    freq = radial_frequency(8, 8)
    low = freq <= 0.4 * float(freq.max())
    spec_o, spec_r, spec_e = (torch.fft.rfft2(v) for v in (out, ref, eps))
    assert torch.allclose(_unit(spec_o)[..., low], _unit(spec_r)[..., low], atol=1e-10)
    assert torch.allclose(spec_o[..., ~low], spec_e[..., ~low], atol=1e-10)
    assert torch.allclose(phase_preserving_noise(ref, noise=eps, cutoff=0.0), eps, atol=1e-12)
    assert torch.allclose(phase_preserving_noise(ref, noise=eps, cutoff=1.0),
                          phase_preserving_noise(ref, noise=eps), atol=1e-12)
    with pytest.raises(ValueError, match="cutoff"):
        phase_preserving_noise(ref, cutoff=1.5)
    with pytest.raises(ValueError, match="shape"):
        phase_preserving_noise(ref, noise=eps[:1, :4])
    x = structured_add_noise(VPLinear(), ref, ref, 0.5, generator=_gen(6))
    assert x.shape == ref.shape

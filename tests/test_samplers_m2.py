"""The M2 training-free samplers against exact answers: SA-Solver, EVODiff and adaptive
DPM-Solver (orders, NFE, law), the calibrated model (Pang et al. 2023), the geometric
perspective's tools and ODE-jump (Chen et al. 2023) and ReDi retrieval (Zhang et al. 2023).

The registry-wide tests of tests/test_samplers.py also run ``sa_solver`` and ``evodiff``
(mixture law on VP / EDM / flow, order, exact output law of ``sa_solver`` with its 15%-off-noise
siblings, NFE, the step API); here the rest, each accuracy check with a wrong sibling."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.conftest import gen
from tests.test_samplers import _observed_order
from tests.test_samplers_k import _history_off

import reverie
from reverie import geometry, redi
from reverie.calibration import calibrated
from reverie.ksamplers import exp_lagrange_integrals
from reverie.metrics import SlicedWasserstein
from reverie.reference import Gaussian, GaussianMixture
from reverie.samplers_m2 import dpm_adaptive

# ---------------------------------------------------------------------------------------------
# SA-Solver
# ---------------------------------------------------------------------------------------------


def test_exp_lagrange_integrals_match_quadrature():
    """SA-Solver's coefficients: the exact integrals of ``c e^{-c (t - l)} L_k(l)`` against a
    fine trapezoid rule (1e-9); the coefficients sum to ``1 - e^{-c h}`` (the basis sums to 1);
    with ``c`` 10% off (a wrong tau) they differ by > 1e-3."""
    nodes, ls, lt, c = [0.1, 0.3, 0.35, 0.5], 0.35, 0.5, 2.0
    w = exp_lagrange_integrals(nodes, ls, lt, c)
    grid = np.linspace(ls, lt, 400_001)
    for k, wk in enumerate(w):
        basis = np.prod([(grid - nodes[m]) / (nodes[k] - nodes[m]) for m in range(4) if m != k], 0)
        assert abs(wk - np.trapezoid(c * np.exp(-c * (lt - grid)) * basis, grid)) < 1e-9
    assert abs(sum(w) + math.expm1(-c * (lt - ls))) < 1e-12
    wrong = exp_lagrange_integrals(nodes, ls, lt, 1.1 * c)
    assert max(abs(a - b) for a, b in zip(w, wrong)) > 1e-3


def test_sa_solver_ode_order(gaussian):
    """With ``eta = 0`` SA-Solver (predictor 3, corrector 4) is an ODE solver: observed order
    > 2.2 against the exact ODE map (measured 2.5 on EDM); with its past predictions 2% off the
    order collapses (< 1)."""
    proc = reverie.EDM()
    slope, errors = _observed_order(gaussian, proc, "sa_solver", eta=0.0)
    assert slope > 2.2 and errors[-1] < 1e-3, (slope, errors)
    wrong, _ = _observed_order(gaussian, proc, _history_off("sa_solver", 1.02), eta=0.0)
    assert wrong < 1.0


def test_sa_solver_brownian_tree_is_stable_across_step_counts(gaussian):
    """``noise_sampler="brownian_tree"``: at 20 and 40 steps the same seed gives nearly the same
    samples (one Brownian path: mean distance 0.27); fresh Gaussian noise per step does not
    (1.45, independent samples)."""
    proc = reverie.VP.linear()
    den = gaussian.denoiser(proc)
    noise = torch.randn(256, 2, generator=gen(0), dtype=torch.float64)

    def gap(ns: str) -> float:
        a, b = (reverie.sample(den, noise, "sa_solver", n, generator=gen(4), noise_sampler=ns)
                for n in (20, 40))
        return float((a - b).norm(dim=1).mean())

    assert gap("brownian_tree") < 0.4 < 1.0 < gap("gaussian")


# ---------------------------------------------------------------------------------------------
# EVODiff
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proc", [reverie.EDM(), reverie.VP.linear()], ids=repr)
def test_evodiff_order_and_its_released_coefficients(gaussian, proc):
    """Default EVODiff: observed order > 1.5 (measured 1.66-1.71) and errors below 0.01 at 64
    steps; the released sampler's weights (``released=True``) are first order (measured
    0.87-0.89) and 10x less accurate; with its history 2% off the default falls below 0.5."""
    slope, errors = _observed_order(gaussian, proc, "evodiff")
    assert slope > 1.5 and errors[-1] < 0.01, (slope, errors)
    rel, rel_errors = _observed_order(gaussian, proc, "evodiff", released=True)
    assert rel < 1.2 and rel_errors[-1] > 5 * errors[-1], (rel, rel_errors)
    wrong, _ = _observed_order(gaussian, proc, _history_off("evodiff", 1.02))
    assert wrong < 0.5


# ---------------------------------------------------------------------------------------------
# Adaptive DPM-Solver
# ---------------------------------------------------------------------------------------------


class _Counting(reverie.DenoiserBase):
    def __init__(self, inner):
        self.inner, self.process, self.calls = inner, inner.process, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        return self.inner(x, t, **cond)


def test_dpm_adaptive_error_follows_the_tolerance(gaussian):
    """Against the exact ODE map of a Gaussian: the reported NFE is the model calls counted;
    tightening rtol/atol 50x spends more calls and cuts the error >= 5x (measured on EDM 0.055
    at 35 NFE -> 0.0084 at 66); order 2 (DPM-Solver-1/2) needs more calls for the same
    tolerance than order 3."""
    proc = reverie.EDM()
    den = _Counting(gaussian.denoiser(proc))
    noise = torch.randn(200, 2, generator=gen(0), dtype=torch.float64)
    exact = gaussian.ode_map(noise * float(proc.sigma(proc.t_max)), float(proc.t_max),
                             float(proc.t_clean), proc)

    def err(**kw):
        den.calls = 0
        out = dpm_adaptive(den, noise, **kw)
        assert out.nfe == den.calls and out.accepted > 0
        return float((out.x0 - exact).norm(dim=1).max()), out.nfe

    loose, tight = err(rtol=0.05, atol=0.01), err(rtol=1e-3, atol=2e-4)
    assert tight[1] > loose[1] and tight[0] < loose[0] / 5 and tight[0] < 0.02, (loose, tight)
    assert err(rtol=1e-3, atol=2e-4, order=2)[1] > tight[1]
    flow = reverie.RectifiedFlow()  # from a thousandth below t = 1 (log-SNR -inf at 1)
    x0 = dpm_adaptive(gaussian.denoiser(flow), noise, rtol=1e-3, atol=2e-4).x0
    start = noise * float(flow.sigma(0.999))
    assert float((x0 - gaussian.ode_map(start, 0.999, 0.0, flow)).norm(dim=1).max()) < 0.02


def test_dpm_adaptive_ancestral_law(gaussian):
    """``eta = 1``: the output law of the adaptive ancestral solver matches the Gaussian (20k
    samples: |mean err| + |cov err|_F < 0.05); with its noise 15% low it does not (> 0.1)."""
    proc = reverie.EDM()
    den = gaussian.denoiser(proc)
    noise = torch.randn(20_000, 2, generator=gen(1), dtype=torch.float64)

    def law(s_noise):
        x = dpm_adaptive(den, noise, eta=1.0, s_noise=s_noise, rtol=0.01, atol=0.002,
                         generator=gen(2)).x0
        return float((x.mean(0) - gaussian.mean()).norm()
                     + (torch.cov(x.T) - gaussian.covariance()).norm())

    assert law(1.0) < 0.05 < 0.1 < law(0.85)


def test_dpm_adaptive_bad_input(gaussian):
    den = gaussian.denoiser(reverie.EDM())
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="order"):
        dpm_adaptive(den, noise, order=4)
    with pytest.raises(ValueError, match="rtol"):
        dpm_adaptive(den, noise, rtol=0.0)
    with pytest.raises(TypeError, match="denoiser"):
        dpm_adaptive(lambda x, t: x, noise)
    with pytest.raises(ValueError, match="noise_sampler"):
        dpm_adaptive(den, noise, eta=1.0, noise_sampler="brownian")


# ---------------------------------------------------------------------------------------------
# Calibration (Pang et al. 2023)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mix():
    covs = torch.tensor([[0.30, 0.20], [0.20, 0.25], [0.15, 0.40]])
    gm = GaussianMixture([[-2.5, 0.0], [2.5, 0.5], [0.0, 3.5]], covs, [0.5, 0.3, 0.2])
    sw = SlicedWasserstein(gm.sample(20_000, gen(1)), 64, gen(7), p=1)
    return gm, sw, torch.randn(4000, 2, generator=gen(3), dtype=torch.float64)


def test_calibration_removes_a_constant_eps_bias(mix):
    """A model whose noise prediction is off by a constant (0.3, -0.2): sliced W1 to the exact
    mixture 1.48 (exact model 0.045); calibrated from 4000 data samples it is back within 0.01
    of the exact model's (measured 0.046), and its offsets recover the bias."""
    gm, sw, noise = mix
    proc = reverie.VP.linear()
    den = gm.denoiser(proc)
    bias = torch.tensor([0.3, -0.2], dtype=torch.float64)
    biased = reverie.Denoiser(lambda x, t: den.eps(x, t) + bias, proc, "eps")
    fixed = calibrated(biased, gm.sample(4000, gen(11)), generator=gen(12))
    exact_d = sw(reverie.sample(den, noise, "dpmpp_2m", 25))
    biased_d = sw(reverie.sample(biased, noise, "dpmpp_2m", 25))
    fixed_d = sw(reverie.sample(fixed, noise, "dpmpp_2m", 25))
    assert biased_d > 10 * exact_d and abs(fixed_d - exact_d) < 0.01, (exact_d, biased_d, fixed_d)
    assert all(float((eta - bias).norm()) < 0.05 for eta in fixed.offsets.values())
    assert fixed.calls == len(fixed.offsets)  # one batch of 4000 per time


def test_calibration_leaves_an_exact_model_unchanged(mix):
    """The exact model's noise prediction already has mean zero: its offsets are at the
    Monte-Carlo floor (< 0.02) and the samples move by < 0.05 on average; calibrating without
    the control variate (plain means of eps) would move them ~10x more (checked: the offsets of
    a wrong eta = E[eps] + 0.05 shift the samples by > 0.5)."""
    gm, sw, noise = mix
    proc = reverie.VP.linear()
    den = gm.denoiser(proc)
    cal = calibrated(den, gm.sample(4000, gen(11)), generator=gen(12))
    a, b = reverie.sample(den, noise, "dpmpp_2m", 25), reverie.sample(cal, noise, "dpmpp_2m", 25)
    assert float((a - b).norm(dim=1).mean()) < 0.05
    assert max(float(eta.norm()) for eta in cal.offsets.values()) < 0.02
    off = calibrated(den, gm.sample(4000, gen(11)), generator=gen(12))
    off.offsets.update({t: eta + 0.05 for t, eta in cal.offsets.items()})
    c = reverie.sample(off, noise, "dpmpp_2m", 25)
    assert float((a - c).norm(dim=1).mean()) > 0.5


def test_calibration_bad_input(mix):
    gm, _, _ = mix
    den = gm.denoiser(reverie.VP.linear())
    with pytest.raises(ValueError, match="data"):
        calibrated(den, torch.zeros(5))
    cal = calibrated(den, gm.sample(10, gen(0)))
    with pytest.raises(ValueError, match="shape"):
        cal(torch.zeros(3, 4, dtype=torch.float64), 500.0)


# ---------------------------------------------------------------------------------------------
# The geometric perspective (Chen et al. 2023)
# ---------------------------------------------------------------------------------------------


def test_deviation_of_known_paths():
    """A straight path deviates by 0; the polyline (0,0) -> (1,1) -> (2,0) by 1 at its middle;
    straightness chord / length = 2 / (2 sqrt 2)."""
    line = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None, None] * torch.tensor([[3.0, 4.0]])
    assert float(geometry.deviation(line).abs().max()) < 1e-12
    assert float(geometry.straightness(line)) == pytest.approx(1.0)
    bent = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]], dtype=torch.float64)
    assert geometry.deviation(bent)[:, 0].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert float(geometry.straightness(bent)) == pytest.approx(1 / math.sqrt(2))


def test_trajectories_on_a_gaussian_in_closed_form():
    """Isotropic Gaussian N(m, s^2 I) under EDM: the exact sampling trajectory is a straight
    line (deviation 0) and the denoising output is closer to the final sample than the state by
    exactly the factor s / sqrt(s^2 + sigma^2) (the paper's 'denoising trajectory converges
    faster'); an anisotropic Gaussian's trajectory bends (deviation > 0.01). The recorded
    trajectories of Euler at 400 steps match the exact ones (1e-2) and record D(x_t) exactly."""
    proc, s = reverie.EDM(), 0.5
    iso = Gaussian([1.0, -1.0], s**2)
    noise = torch.randn(16, 2, generator=gen(0), dtype=torch.float64)
    tr = geometry.trajectory(iso.denoiser(proc), noise, "euler", 400)
    ts = tr.t.tolist()
    exact = torch.stack([iso.ode_map(tr.x[0], ts[0], t, proc) for t in ts])
    assert float((tr.x - exact).norm(dim=-1).max()) < 1e-2
    assert float(geometry.deviation(exact).max()) < 1e-9
    for k in (50, 200, 350):
        torch.testing.assert_close(tr.x0[k], iso.denoiser(proc)(tr.x[k], ts[k]))
        sigma = ts[k]
        d_gap = (iso.denoiser(proc)(exact[k], sigma) - exact[-1]).norm(dim=1)
        x_gap = (exact[k] - exact[-1]).norm(dim=1)
        torch.testing.assert_close(d_gap / x_gap, torch.full_like(d_gap, s / math.hypot(s, sigma)))
    aniso = Gaussian([1.0, -1.0], [[1.0, 0.0], [0.0, 0.01]])
    bent = torch.stack([aniso.ode_map(tr.x[0], ts[0], t, proc) for t in ts])
    assert float(geometry.deviation(bent).max()) > 0.01


def test_ode_jump_is_the_denoiser_at_the_jump_time(gaussian):
    """ODE-jump after k Euler steps = D(x_{t_k}) with x_{t_k} the Euler state (exact), close to
    D of the exact ODE state at 200 steps; jumping one step later gives another answer; the
    model calls are k + 1."""
    proc = reverie.EDM()
    den = _Counting(gaussian.denoiser(proc))
    noise = torch.randn(32, 2, generator=gen(0), dtype=torch.float64)
    tr = geometry.trajectory(gaussian.denoiser(proc), noise, "euler", 200)
    out = geometry.ode_jump(den, noise, 120, "euler", 200)
    assert den.calls == 121
    torch.testing.assert_close(out, tr.x0[120])
    t_k = float(tr.t[120])
    exact = gaussian.denoiser(proc)(gaussian.ode_map(tr.x[0], float(tr.t[0]), t_k, proc), t_k)
    assert float((out - exact).norm(dim=1).max()) < 0.02
    later = geometry.ode_jump(gaussian.denoiser(proc), noise, 121, "euler", 200)
    assert float((later - out).norm(dim=1).max()) > 1e-4
    with pytest.raises(ValueError, match="jump"):
        geometry.ode_jump(den, noise, 201, "euler", 200)


def test_mean_shift_is_the_empirical_optimal_denoiser():
    """The empirical data set's exact denoiser is one mean-shift step with bandwidth
    sigma / alpha: equal to a mixture of (nearly) Dirac components at the data points, on VP
    and EDM; with bandwidth sigma (VP, not divided by alpha) it is not."""
    data = torch.randn(30, 2, generator=gen(0), dtype=torch.float64)
    dirac = GaussianMixture(data, torch.full((30, 2), 1e-12, dtype=torch.float64),
                            torch.ones(30, dtype=torch.float64))
    x = torch.randn(8, 2, generator=gen(1), dtype=torch.float64)
    for proc, t in ((reverie.VP.linear(), 300.0), (reverie.EDM(), 0.7)):
        emp = geometry.EmpiricalDenoiser(data, proc)
        torch.testing.assert_close(emp(x, t), dirac.denoiser(proc)(x, t))
    proc = reverie.VP.linear()
    a, s = float(proc.alpha(300.0)), float(proc.sigma(300.0))
    wrong = geometry.mean_shift(x / a, data, s)
    assert float((wrong - dirac.denoiser(proc)(x, 300.0)).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------
# ReDi (Zhang et al. 2023)
# ---------------------------------------------------------------------------------------------


def test_redi_retrieving_its_own_trajectory_is_exact(gaussian):
    """A query whose noise is in the base (top = 1, a memoryless sampler): the retrieved value
    is its own state at the value step, so ReDi equals the full run; from a base of other
    noises it does not."""
    proc = reverie.VP.linear()
    den = gaussian.denoiser(proc)
    noise = torch.randn(64, 2, generator=gen(0), dtype=torch.float64)
    base = redi.build(den, noise, sampler="ddim", steps=20, key_step=5, value_step=12)
    full = reverie.sample(den, noise[:8], "ddim", 20)
    torch.testing.assert_close(redi.sample(base, den, noise[:8]).x0, full)
    other = redi.build(den, noise[8:], sampler="ddim", steps=20, key_step=5, value_step=12)
    assert float((redi.sample(other, den, noise[:8]).x0 - full).abs().max()) > 1e-3


def test_redi_skips_steps_at_the_full_runs_accuracy(mix):
    """Base of 2000 DPM-Solver++(2M) runs (20 steps; key at step 4, value at 12): ReDi samples
    of fresh noise use 13 model calls instead of 20 and their sliced W1 to the exact mixture is
    within 0.01 of the full sampler's (measured 0.047 vs 0.049), and each sample lies near the
    full run's from its noise (mean distance 0.078); retrieving at random (the values shuffled)
    lands elsewhere (3.2)."""
    gm, sw, noise = mix
    proc = reverie.VP.linear()
    den = gm.denoiser(proc)
    base = redi.build(den, torch.randn(2000, 2, generator=gen(9), dtype=torch.float64),
                      sampler="dpmpp_2m", steps=20, key_step=4, value_step=12)
    full = reverie.sample(den, noise, "dpmpp_2m", 20)
    out = redi.sample(base, den, noise)
    assert out.nfe == 1 + 4 + 8
    assert abs(sw(out.x0) - sw(full)) < 0.01, (sw(out.x0), sw(full))
    assert float((out.x0 - full).norm(dim=1).mean()) < 0.15
    shuffled = replace(base, values=base.values[torch.randperm(2000, generator=gen(5))])
    assert float((redi.sample(shuffled, den, noise).x0 - full).norm(dim=1).mean()) > 1.0


def test_redi_refuses_a_base_for_another_shape_process_or_model(gaussian, mixture):
    proc = reverie.VP.linear()
    den = gaussian.denoiser(proc)
    base = redi.build(den, torch.randn(16, 2, generator=gen(0), dtype=torch.float64),
                      sampler="ddim", steps=10, key_step=2, value_step=5)
    with pytest.raises(ValueError, match="shape"):
        redi.sample(base, den, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="process"):
        redi.sample(base, gaussian.denoiser(reverie.EDM()), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="another model"):
        redi.sample(base, mixture.denoiser(proc), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="key_step"):
        redi.build(den, torch.randn(4, 2, dtype=torch.float64), steps=10, key_step=6,
                   value_step=5)

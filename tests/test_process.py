"""Identities of the Gaussian processes: ranges, inverses, derivatives, diffusers' tables."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import all_processes

import reverie
from reverie.process import VP, Interpolant

PROCS = all_processes()
IDS = [repr(p) for p in PROCS]


def interior(proc, n=257):
    return torch.linspace(proc.t_min, proc.t_max, n, dtype=torch.float64)[:-1]


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_clean_end_is_exact(proc):
    assert float(proc.sigma(proc.t_clean)) == pytest.approx(0.0, abs=1e-12)
    assert float(proc.alpha(proc.t_clean)) == pytest.approx(1.0, abs=1e-12)
    assert proc.t_clean < proc.t_min < proc.t_max


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_log_snr_decreases_and_inverts(proc):
    t = interior(proc)
    lam = proc.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    back = proc.t_from_log_snr(lam)
    torch.testing.assert_close(back, t, rtol=1e-7, atol=1e-7 * max(1.0, proc.t_max))
    # sigma_ve and its inverse agree with log-SNR
    torch.testing.assert_close(proc.sigma_ve(t), torch.exp(-0.5 * lam), rtol=1e-10, atol=0)
    torch.testing.assert_close(
        proc.t_from_sigma_ve(proc.sigma_ve(t)), t, rtol=1e-7, atol=1e-7 * max(1.0, proc.t_max)
    )


@pytest.mark.parametrize(
    "proc",
    [p for p in PROCS if isinstance(p, (VP, reverie.VPLinear, reverie.VPCosine))],
    ids=lambda p: repr(p),
)
def test_variance_preserving(proc):
    t = interior(proc)
    torch.testing.assert_close(
        proc.alpha(t) ** 2 + proc.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_derivatives_match_finite_differences(proc):
    t = interior(proc, 33)[1:-1]
    if isinstance(proc, VP):  # piecewise in t: check between integers
        t = t.floor() + 0.5
    h = 1e-6 * max(1.0, proc.t_max)
    fd_a = (proc.alpha(t + h) - proc.alpha(t - h)) / (2 * h)
    fd_s = (proc.sigma(t + h) - proc.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(proc.d_alpha(t), fd_a, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(proc.d_sigma(t), fd_s, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_forward_sde_reproduces_the_marginal_variance(proc):
    """d sigma^2/dt = 2 f sigma^2 + g^2 and d alpha/dt = f alpha, with g^2 >= 0."""
    t = interior(proc, 17)[1:]
    if isinstance(proc, VP):
        t = t.floor() + 0.5
    f, g2 = proc.drift_diffusion(t)
    assert bool((g2 >= 0).all())
    a, s = proc.alpha(t), proc.sigma(t)
    torch.testing.assert_close(proc.d_alpha(t), f * a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(2 * s * proc.d_sigma(t), 2 * f * s**2 + g2, rtol=1e-9, atol=1e-12)


def test_vp_from_betas_matches_diffusers_table():
    from diffusers import DDPMScheduler

    for schedule, proc in [
        ("linear", VP.linear()),
        ("scaled_linear", VP.scaled_linear()),
        ("squaredcos_cap_v2", VP.squaredcos_cap_v2()),
    ]:
        kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
        sch = DDPMScheduler(beta_schedule=schedule, **kw)
        ac = sch.alphas_cumprod.to(torch.float64)
        k = torch.arange(1000, dtype=torch.float64)
        torch.testing.assert_close(proc.alpha(k) ** 2, ac, rtol=2e-6, atol=1e-9)


def test_vp_interpolates_log_sigma_between_integers():
    proc = VP.linear()
    lo, hi = proc.sigma_ve(10.0), proc.sigma_ve(11.0)
    mid = proc.sigma_ve(10.5)
    assert float(mid) == pytest.approx(math.sqrt(float(lo) * float(hi)), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-3, max_value=0.999))
def test_rectified_flow_identities(t):
    proc = reverie.RectifiedFlow()
    lam = float(proc.log_snr(t))
    assert lam == pytest.approx(2 * math.log((1 - t) / t), rel=1e-9, abs=1e-9)
    assert float(proc.t_from_log_snr(lam)) == pytest.approx(t, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=-20.0, max_value=20.0))
def test_vp_linear_inverse_log_snr(lam):
    proc = reverie.VPLinear()
    t = proc.t_from_log_snr(lam)
    if proc.t_clean < float(t) <= proc.t_max:
        assert float(proc.log_snr(t)) == pytest.approx(lam, abs=1e-7)


def test_general_interpolant_matches_builtin():
    """An Interpolant built from the rectified-flow functions behaves like RectifiedFlow,
    with the inverse log-SNR by bisection and derivatives by autograd."""
    rf = reverie.RectifiedFlow()
    ip = Interpolant(lambda t: 1 - t, lambda t: t, t_min=1e-3, t_max=1.0)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(ip.log_snr(t), rf.log_snr(t))
    torch.testing.assert_close(ip.t_from_log_snr(rf.log_snr(t)), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ip.d_alpha(t), rf.d_alpha(t))
    torch.testing.assert_close(ip.d_sigma(t), rf.d_sigma(t))


def test_bad_processes_raise():
    with pytest.raises(ValueError, match="strictly decreasing"):
        VP(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="betas"):
        VP.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="sigma_min"):
        reverie.VE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_fn"):
        Interpolant(lambda t: 1 - t, lambda t: t + 0.1, t_min=0.01, t_max=0.9)
    with pytest.raises(ValueError, match="decrease"):
        Interpolant(lambda t: 1 + 0 * t, lambda t: (1 - t) * t, t_min=0.01, t_max=0.99)


def test_add_noise_per_sample_times():
    proc = reverie.VPLinear()
    x0 = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.2, 0.5, 0.9], dtype=torch.float64)
    out = proc.add_noise(x0, eps, t)
    for k in range(4):
        ref = proc.alpha(t[k]) * x0[k] + proc.sigma(t[k]) * eps[k]
        torch.testing.assert_close(out[k], ref)

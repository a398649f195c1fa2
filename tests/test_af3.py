"""reverie.af3: AlphaFold 3's sampler (Alg. 18) and Protenix-Mini's two-step ODE setting,
checked against the closed-form law of its output on Gaussian data (the update is affine in
x there), with wrong-coefficient siblings that the checks reject."""

import math

import pytest
import torch

from reverie.af3 import AF3_DEFAULT, PROTENIX_MINI, af3_sample, af3_schedule
from reverie.process import VE, VPLinear
from reverie.reference.gaussian import Gaussian

M, S = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.7  # data N(M, S^2 I)
PROC = VE(sigma_min=1e-4, sigma_max=400.0)  # AF3 churn lifts 160 to 288
ODE = {k: v for k, v in PROTENIX_MINI.items() if k != "steps"}
DEN = Gaussian(M, S**2 * torch.eye(2, dtype=torch.float64)).denoiser(PROC)


def _law(schedule, gamma0, gamma_min, noise_scale_lambda, step_scale_eta, steps=None):
    """Exact mean and variance of the output: ``x - M`` is scaled by ``k = 1 + eta dt t_hat /
    (S^2 + t_hat^2)`` per step after the churn noise adds ``lambda^2 (t_hat^2 - c^2)``."""
    mean, var = -M, float(schedule[0]) ** 2  # x_0 - M ~ N(-M, c_0^2)
    for prev, nxt in zip(schedule[:-1].tolist(), schedule[1:].tolist()):
        t_hat = prev * ((gamma0 if nxt > gamma_min else 0.0) + 1)
        var += noise_scale_lambda**2 * (t_hat**2 - prev**2)
        k = 1 + step_scale_eta * (nxt - t_hat) * t_hat / (S**2 + t_hat**2)
        mean, var = k * mean, k**2 * var
    return M + mean, var


def test_protenix_mini_two_step_ode_is_the_exact_affine_map():
    sched = af3_schedule(2)
    assert sched.tolist() == pytest.approx([160.0, (160 ** (1 / 7) / 2 + 4e-4 ** (1 / 7) / 2) ** 7,
                                            4e-4])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = af3_sample(DEN, noise, sched, **ODE)
    mean, var = _law(sched, 0.0, 1 / 16, 1.0, 1.0)
    # deterministic: out = M + sqrt(var / c0^2) (c0 noise - M) + ... = mean + sqrt(var) noise
    assert torch.allclose(out, mean + math.sqrt(var) * noise, atol=1e-10)
    wrong = _law(sched, 0.0, 1 / 16, 1.0, 1.15)  # step scale 15% off
    assert not torch.allclose(out, wrong[0] + math.sqrt(wrong[1]) * noise, atol=1e-3)


def test_af3_default_stochastic_sampler_matches_its_exact_law():
    sched = af3_schedule(5)
    opts = {k: v for k, v in AF3_DEFAULT.items() if k != "steps"}
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(40000, 2, generator=g, dtype=torch.float64)
    out = af3_sample(DEN, noise, sched, generator=g, **opts)
    mean, var = _law(sched, **opts)
    sd = math.sqrt(var)
    assert torch.allclose(out.mean(0), mean, atol=4 * sd / 200)  # 200 = sqrt(40000)
    assert out.var(0).tolist() == pytest.approx([var, var], rel=0.03)
    # the check rejects a wrong step scale and a wrong noise scale (both 15% off)
    assert abs(_law(sched, **{**opts, "step_scale_eta": 1.5 * 1.15})[1] / var - 1) > 0.1
    assert abs(_law(sched, **{**opts, "noise_scale_lambda": 1.003 * 1.15})[1] / var - 1) > 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="decreasing"):
        af3_sample(DEN, torch.zeros(1, 2), torch.tensor([1.0, 2.0]), **ODE)
    with pytest.raises(ValueError, match="largest sigma"):
        af3_sample(Gaussian(M, 1.0).denoiser(VPLinear()), torch.zeros(1, 2), af3_schedule(2),
                   **ODE)
    with pytest.raises(ValueError, match="s_min"):
        af3_schedule(3, s_min=200.0)
    with pytest.raises(ValueError, match="step_scale_eta"):
        af3_sample(DEN, torch.zeros(1, 2), af3_schedule(2), gamma0=0.0, gamma_min=0.1,
                   noise_scale_lambda=1.0, step_scale_eta=0.0)

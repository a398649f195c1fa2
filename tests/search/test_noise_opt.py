"""DITTO-2 (``ditto2``) against the exact optimum: a Gaussian prior under a rectified flow with
the exact denoiser, where the probability-flow map ``x_T -> x_0`` is affine,
``x_0 = mu + A z`` (``A`` the prior's standard deviations, ``z`` the unit noise), so for the
quadratic reward ``-|x - y|^2 / 2`` and the noise penalty ``w |z|^2 / 2`` the optimal noise
is ``z* = A (y - mu) / (A^2 + w)``."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie import search
from reverie.reference import Gaussian

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
A = torch.tensor([0.5, 2.0], dtype=torch.float64)          # prior standard deviations
Y = torch.tensor([2.0, 3.0], dtype=torch.float64)          # reward peak, z* = (3, 2) at w = 0
PROCESS = reverie.RectifiedFlow()
PRIOR = Gaussian(MU, A**2)
STEPS, ITERS = 20, 300
BUDGET = STEPS + 2 * ITERS                                 # the decode + 300 surrogate iterations


def reward(x):
    return -0.5 * ((x - Y) ** 2).sum(-1)


def flow_map(scale=1.0):
    """The exact consistency function (the probability-flow map to the clean end); ``scale``
    multiplies its noise part (a surrogate with the noise scale off)."""
    def f(x, t):
        return MU + scale * (PRIOR.ode_map(x, float(t[0]), PROCESS.t_clean, PROCESS) - MU)
    return f


def _run(method, n=6, seed=0, **kw):
    return search.run(PRIOR.denoiser(PROCESS), reward, method=method, budget=BUDGET, n=n,
                      steps=STEPS, shape=(2,), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64, **kw)


def _reaches(res, noise_weight):
    """The check: every optimised noise within 5e-3 of ``z*``; at ``w = 0`` every decoded
    sample also within 0.1 of the reward's peak (reward > -5e-3; the optimum is 0)."""
    z_star = A * (Y - MU) / (A**2 + noise_weight)
    ok = bool(((res.info["noise"] - z_star).abs() < 5e-3).all())
    return ok and (noise_weight > 0 or bool((res.rewards > -5e-3).all()))


@pytest.mark.parametrize("noise_weight", [0.0, 1.0])
def test_ditto2_reaches_the_closed_form_optimal_noise(noise_weight):
    res = _run("ditto2", surrogate=flow_map(), noise_weight=noise_weight, lr=0.1)
    assert res.nfe == BUDGET and res.info["iterations"] == ITERS
    assert _reaches(res, noise_weight)


@pytest.mark.parametrize("noise_weight", [0.0, 1.0])
def test_a_surrogate_15_percent_off_misses_it(noise_weight):
    res = _run("ditto2", surrogate=flow_map(1.15), noise_weight=noise_weight, lr=0.1)
    assert not _reaches(res, noise_weight)


def test_best_of_n_at_equal_nfe_misses_it():
    res = _run("best_of_n")
    assert res.nfe <= BUDGET
    assert not bool((res.rewards > -5e-3).any())
    assert float(res.rewards.max()) < -0.1


def test_ditto2_checks_its_options():
    with pytest.raises(TypeError, match="surrogate must be a one-step model"):
        _run("ditto2", n=1, surrogate=3)
    with pytest.raises(ValueError, match="lr must be"):
        _run("ditto2", n=1, surrogate=flow_map(), lr=0.0)

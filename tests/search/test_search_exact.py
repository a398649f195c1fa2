"""Search methods against the exact tilted target of a Gaussian mixture (linear reward)."""

from __future__ import annotations

import math

import pytest
import torch

import reverie
from reverie import search
from reverie.metrics import mode_weight_error, mode_weights


def _run(problem, method, budget, n, seed=0, **kw):
    _, _, den, tilt = problem
    return search.run(den, tilt.reward, method=method, budget=budget, n=n,
                      generator=torch.Generator().manual_seed(seed), shape=(2,),
                      dtype=torch.float64, **kw)


def _tv(x, tilt):
    """Total variation between the mode weights of ``x`` and the tilted target's."""
    return 0.5 * float((mode_weights(x, tilt.target) - tilt.target.weights).abs().sum())


def _tv_noise(tilt, n):
    """About two standard deviations of the TV of ``n`` exact samples."""
    w = tilt.target.weights
    return float((w * (1 - w)).sqrt().sum()) / math.sqrt(n)


@pytest.mark.parametrize("method,options", [
    ("fk", {}), ("dts", {"selection": "uniform"}),
    ("dts", {"selection": "uniform", "backup": "sum"}),
])
def test_particle_samplers_approach_the_tilted_target(problem, method, options):
    """With 20 steps per trajectory, 1 particle is the untilted model and 32 particles land on
    the exact tilted mixture (mode weights and mean reward) within the sampling noise."""
    tilt = problem[3]
    n = 600
    far = _run(problem, method, 20, n, **options)
    near = _run(problem, method, 20 * 32, n, seed=1, **options)
    noise = _tv_noise(tilt, n)
    assert _tv(far.samples, tilt) > 0.4                       # the prior is far from the target
    assert _tv(near.samples, tilt) < noise + 0.03
    reward_sd = float(tilt.reward(tilt.sample(20000, torch.Generator().manual_seed(2))).std())
    tol = 4 * reward_sd / math.sqrt(n) + 0.05
    assert abs(float(near.rewards.mean()) - tilt.mean_reward()) < tol


def test_fk_potentials_steer_towards_reward(problem):
    """Every potential raises the reward above the model's; `difference` also matches the
    exact target (the others tilt intermediate steps more strongly, so at finite particle
    counts their final correction leaves them above it, see the benchmark)."""
    tilt = problem[3]
    base = float(_run(problem, "fk", 20, 300).rewards.mean())
    for potential in ("difference", "max", "sum", "immediate"):
        res = _run(problem, "fk", 160, 300, potential=potential)
        assert float(res.rewards.mean()) > base + 1.0, potential
        assert res.info["resamplings_mean"] > 0
    assert _tv(_run(problem, "fk", 320, 300, ess_threshold=1.0).samples, tilt) < 0.15


def test_dts_boltzmann_growth_improves_with_rollouts(problem):
    """The paper's Boltzmann tree growth moves towards the target as rollouts grow (at small
    budgets its value-driven allocation leaves a bias, which the benchmark reports)."""
    tilt = problem[3]
    tv1 = _tv(_run(problem, "dts", 20, 400).samples, tilt)
    tv16 = _tv(_run(problem, "dts", 320, 400, seed=1).samples, tilt)
    assert tv16 < tv1 / 2


def test_dts_value_driven_growth_is_biased_uniform_growth_is_not(problem):
    """Boltzmann (value-driven) tree growth biases the returned leaf at budgets short of the
    complete tree: with the mean backup a subtree left with few, low rollouts carries its whole
    mass (under-tilting), with the sum backup the well-explored subtrees contribute more leaves
    (over-tilting). Uniform growth keeps the tree's shape independent of the values and lands
    on the exact mean reward. (Documented in docs/search.md; the benchmark shows the
    distances.)"""
    tilt = problem[3]
    n, exact = 400, tilt.mean_reward()

    def mean_reward(**options):
        return float(_run(problem, "dts", 10 * 48, n, steps=10, **options).rewards.mean())

    reward_sd = float(tilt.reward(tilt.sample(20000, torch.Generator().manual_seed(2))).std())
    tol = 4 * reward_sd / math.sqrt(n) + 0.05
    assert abs(mean_reward(selection="uniform") - exact) < tol
    assert abs(mean_reward(selection="uniform", backup="sum") - exact) < tol
    assert mean_reward() < exact - 0.1
    assert mean_reward(backup="sum") > exact + 0.1


def test_dts_star_beats_best_of_n_at_equal_nfe(problem):
    """DTS* (max backup, greedy selection) refines its best path with cheap partial rollouts:
    at 16 trajectories' worth of NFE it beats best-of-16; the soft (mean) backup of the paper
    gains less."""
    _, _, den, tilt = problem
    n = 200
    bon = float(_run(problem, "best_of_n", 320, n, seed=3, steps=20).rewards.mean())
    best, _ = tilt.best_of_n_reward_moments(16)
    assert abs(bon - best) < 0.15
    star = _run(problem, "dts_star", 320, n, seed=3, steps=20)
    assert star.info["backup"] == "max"
    soft = _run(problem, "dts_star", 320, n, seed=3, steps=20, backup="mean")
    assert float(star.rewards.mean()) > best + 0.25
    assert float(star.rewards.mean()) > float(soft.rewards.mean())
    ucb = _run(problem, "dts_star", 320, n, seed=3, steps=20, exploration=0.5)
    assert float(ucb.rewards.mean()) > best + 0.2


@pytest.mark.parametrize("N", [1, 4, 16])
def test_best_of_n_follows_theory(problem, N):
    """Best-of-N's reward has CDF F^N (F the reward CDF under the model): its mean matches the
    closed form and it overshoots the tilted target's mean reward once N is large."""
    tilt = problem[3]
    n = 800
    res = _run(problem, "best_of_n", 20 * N, n, seed=N)
    mean, sd = tilt.best_of_n_reward_moments(N)
    assert abs(float(res.rewards.mean()) - mean) < 4 * sd / math.sqrt(n) + 0.03
    r = res.rewards.sort().values
    ks = float((tilt.best_of_n_reward_cdf(r, N) - (torch.arange(n) + 1.0) / n).abs().max())
    assert ks < 1.63 / math.sqrt(n) + 0.02
    if N == 16:
        assert float(res.rewards.mean()) > tilt.mean_reward() + 0.5


def test_flow_sde_keeps_the_marginals(problem):
    """The flow ODE turned into an SDE with g(t) = 3 t^2 (Kim et al. 2025) samples the model's
    distribution: Euler-Maruyama with that diffusion lands on the exact mixture."""
    mix, _, den, _ = problem
    n = 4000
    noise = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = reverie.sample(den, noise, sampler="euler_maruyama", steps=50,
                       generator=torch.Generator().manual_seed(1), diffusion=search.sde_diffusion())
    assert mode_weight_error(x, mix) < 0.03
    sd = mix.covariance().diagonal().sqrt()
    assert torch.all((x.mean(0) - mix.mean()).abs() < 4 * sd / math.sqrt(n) + 0.02)


@pytest.mark.parametrize("method", ["paths", "zero_order", "beam", "dts_star", "rbf", "ditto"])
def test_maximisers_raise_the_reward(problem, method):
    tilt = problem[3]
    n = 48
    base = float(_run(problem, "best_of_n", 8, n, steps=8).rewards.mean())
    res = _run(problem, method, 160, n, seed=3, steps=8)
    assert float(res.rewards.mean()) > base + 0.8
    assert float(res.rewards.mean()) > tilt.prior_mean_reward() + 0.8


def test_ditto_gains_over_its_starting_noise(problem):
    res = _run(problem, "ditto", 8 + 3 * 8 * 10, 16, steps=8)
    assert res.info["iterations"] == 10
    assert res.info["reward_gain_mean"] > 0.5

"""Search methods against the exact tilted target of a Gaussian mixture (linear reward)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import reverie
from reverie import search
from reverie.metrics import SlicedWasserstein, mode_weight_error, mode_weights


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
    budgets its value-driven allocation leaves a bias: `reverie bench search` reports it as
    "DTS mean-reward bias", a measurement, not a test that would fail once it is fixed)."""
    tilt = problem[3]
    tv1 = _tv(_run(problem, "dts", 20, 400).samples, tilt)
    tv16 = _tv(_run(problem, "dts", 320, 400, seed=1).samples, tilt)
    assert tv16 < tv1 / 2


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


# ---- every method against best-of-N (random search over initial noises) at equal NFE --------
#
# Best-of-N is the random-search baseline of Ma et al. (2025); each method runs at the same
# budget per returned sample (8-step trajectories; a method may spend less than the budget,
# best-of-N spends all of it). Maximisers must raise the mean reward by more than 2.5 standard
# errors of the difference (n = 512); the samplers of the tilted law must come closer to it
# (sliced W2 to exact tilted samples, n = 400) by a ratio. Budgets and ratios are where each
# method's claim holds here, measured (n = 256, seeds 3-5, 8 steps; mean reward, best-of-N in
# brackets):
#   beam, 8 trajectories: 2.39-2.40 (1.54-1.56); dts_star, 8: 1.71-1.78 (1.54-1.56);
#   paths, 32: 2.02-2.03 (1.91-1.92); zero_order, 32: 2.09-2.14 (1.91-1.92);
#   ditto, 64: 2.59-2.64 (2.03-2.04); rbf, 8: 1.72-1.75 (1.54-1.56);
#   dsearch, 8: 2.46-2.47 (1.55-1.57).
# Where they do NOT beat best-of-N: paths ties at 8-16 trajectories (1.48 vs 1.59, 1.82 vs
# 1.75); zero_order loses below 32 (0.35 vs 1.59 at 8, 1.27 vs 1.75 at 16); ditto loses below
# 64 (1.79 vs 1.91 at 32); rbf plateaus at ~1.75-1.8 and loses from 32 trajectories on (1.73 vs
# 1.91 at 32, 1.81 vs 2.05 at 64; see BENCHMARKS.md).
# Tilted samplers at 16 trajectories: fk 0.13 (best-of-N 0.94-0.99, ratio <= 0.15: the claim is
# <= 0.5); dts (the paper's Boltzmann growth) 0.44-0.63 (ratio 0.45-0.67: it beats best-of-N
# but not by half, its value-driven growth is biased; the benchmark reports it).

MAXIMISER_BUDGET = {"beam": 8, "dsearch": 8, "dts_star": 8, "rbf": 8, "paths": 32, "zero_order": 32,
                    "ditto": 64, "ditto2": 64}
TILTED_RATIO = {"fk": 0.5, "dts": 0.8}
SEARCH_STEPS = 8


def _z(a, b):
    """Standard errors by which the mean of ``a`` exceeds the mean of ``b``."""
    se = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel())
    return float(a.mean() - b.mean()) / se


def check_raises_reward_over(rewards, baseline_rewards):
    """The maximiser check: mean reward above the baseline's by > 2.5 standard errors."""
    return _z(rewards, baseline_rewards) > 2.5


@functools.cache
def _tilted_distance():
    from reverie.bench.search import problem as bench_problem

    tilt = bench_problem()[3]
    return SlicedWasserstein(tilt.sample(40000, torch.Generator().manual_seed(10)), 128,
                             torch.Generator().manual_seed(7))


def check_closer_to_tilted_than(samples, baseline_samples, ratio):
    """The sampler check: sliced W2 to the exact tilted law at most ``ratio`` times the
    baseline's."""
    dist = _tilted_distance()
    return dist(samples) < ratio * dist(baseline_samples)


def _searched(problem, method, k, n, seed):
    return _run(problem, method, k * SEARCH_STEPS, n, seed=seed, steps=SEARCH_STEPS)


def test_every_registered_method_is_compared_with_best_of_n():
    assert search.METHODS["best_of_n"].tilted is False
    others = set(search.METHODS) - {"best_of_n"}
    assert set(MAXIMISER_BUDGET) | set(TILTED_RATIO) == others
    assert all(search.METHODS[m].tilted for m in TILTED_RATIO)
    assert not any(search.METHODS[m].tilted for m in MAXIMISER_BUDGET)


@pytest.mark.parametrize("method", [m for m in search.METHODS if m != "best_of_n"])
def test_method_beats_best_of_n_at_equal_nfe(problem, method):
    if search.METHODS[method].tilted:
        n, k = 400, 16
        res = _searched(problem, method, k, n, seed=3)
        bon = _searched(problem, "best_of_n", k, n, seed=103)
        assert res.nfe <= bon.nfe == k * SEARCH_STEPS
        assert check_closer_to_tilted_than(res.samples, bon.samples, TILTED_RATIO[method])
    else:
        n, k = 512, MAXIMISER_BUDGET[method]
        res = _searched(problem, method, k, n, seed=3)
        bon = _searched(problem, "best_of_n", k, n, seed=103)
        assert res.nfe <= bon.nfe == k * SEARCH_STEPS
        assert check_raises_reward_over(res.rewards, bon.rewards), _z(res.rewards, bon.rewards)


@pytest.mark.parametrize("k", sorted(set(MAXIMISER_BUDGET.values()) | {16}))
def test_the_comparison_rejects_best_of_n_dressed_up_as_a_method(problem, k):
    """Best-of-N with another seed, passed off as the method, fails both checks at every budget
    used above; so does the untilted model (one trajectory) against best-of-N."""
    n = 512
    bon = _searched(problem, "best_of_n", k, n, seed=103)
    fake = _searched(problem, "best_of_n", k, n, seed=3)
    assert not check_raises_reward_over(fake.rewards, bon.rewards)
    assert not check_closer_to_tilted_than(fake.samples, bon.samples, min(TILTED_RATIO.values()))
    assert not check_closer_to_tilted_than(fake.samples, bon.samples, max(TILTED_RATIO.values()))
    model = _searched(problem, "best_of_n", 1, n, seed=3)
    assert not check_raises_reward_over(model.rewards, bon.rewards)


def test_ditto_gains_over_its_starting_noise(problem):
    res = _run(problem, "ditto", 8 + 3 * 8 * 10, 16, steps=8)
    assert res.info["iterations"] == 10
    assert res.info["reward_gain_mean"] > 0.5

"""The search entry point: names, budgets never exceeded, chunking, generators, bad input."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie import search
from reverie.denoisers import DenoiserBase

ALL = ("best_of_n", "fk", "paths", "zero_order", "beam", "dsearch", "dts", "dts_star", "rbf",
       "ditto", "ditto2")


class Counter(DenoiserBase):
    """Counts every row the network sees (forward passes, including recomputation)."""

    def __init__(self, inner):
        self.inner, self.process, self.rows = inner, inner.process, 0

    def __call__(self, x, t, **cond):
        self.rows += x.shape[0]
        return self.inner(x, t, **cond)


def _run(problem, method, budget, n=3, seed=0, **kw):
    _, _, den, tilt = problem
    kw.setdefault("steps", 8)
    return search.run(den, tilt.reward, method=method, budget=budget, n=n,
                      generator=torch.Generator().manual_seed(seed), shape=(2,),
                      dtype=torch.float64, **kw)


def test_names():
    assert tuple(search.METHODS) == ALL
    with pytest.raises(ValueError, match="best_of_n, fk, paths"):
        search.METHODS["nope"]
    assert search.METHODS["fk"].tilted and search.METHODS["dts"].tilted
    assert not search.METHODS["best_of_n"].tilted


@pytest.mark.parametrize("method", list(search.METHODS))
@pytest.mark.parametrize("extra", [0, 5, 23, 57])
def test_budget_never_exceeded(problem, method, extra):
    _, _, den, tilt = problem
    counter = Counter(den)
    minimum = {"paths": 26, "beam": 29, "dsearch": 25}.get(method, 8)  # with 8 steps, see below
    budget = minimum + extra
    n = 3
    res = search.run(counter, tilt.reward, method=method, budget=budget, n=n, steps=8,
                     generator=torch.Generator().manual_seed(extra), shape=(2,),
                     dtype=torch.float64)
    assert res.samples.shape == (n, 2) and res.rewards.shape == (n,)
    assert res.nfe <= budget and res.nfe_total <= n * budget
    assert counter.rows <= n * budget
    if method not in ("ditto", "ditto2"):  # DITTO also counts its backward passes
        assert counter.rows == res.nfe_total == res.info["network_rows"]
    assert torch.allclose(res.rewards, tilt.reward(res.samples), atol=1e-9)


@pytest.mark.parametrize("method", list(search.METHODS))
def test_budget_too_small(problem, method):
    minimum = {"paths": 26, "beam": 29, "dsearch": 25}.get(method, 8)
    with pytest.raises(ValueError, match=f"at least {minimum} NFE"):
        _run(problem, method, minimum - 1)
    _run(problem, method, minimum)


@pytest.mark.parametrize("method", ["best_of_n", "fk", "beam", "dts", "paths", "rbf"])
def test_one_generator_per_sample_and_chunking(problem, method):
    """With one generator per returned sample, a sample depends neither on the others nor on
    the chunk size."""
    _, _, den, tilt = problem

    def go(n, chunk):
        gens = reverie.seeded_generators(7, n)
        return search.run(den, tilt.reward, method=method, budget=48, n=n, generator=gens,
                          shape=(2,), dtype=torch.float64, steps=8, chunk=chunk).samples

    a, b, c = go(3, 4096), go(2, 4096), go(3, 5)
    assert torch.equal(a[:2], b)
    assert torch.allclose(a, c)


def _bad(x):
    return x.sum(1, keepdim=True)


def test_bad_input(problem):
    _, _, den, tilt = problem
    kw = dict(budget=16, n=2, shape=(2,), steps=8)
    with pytest.raises(ValueError, match="one value per sample"):
        search.run(den, _bad, method="fk", **kw)
    with pytest.raises(ValueError, match="NaN"):
        search.run(den, lambda x: x.sum(1) * float("nan"), method="best_of_n", **kw)
    with pytest.raises(TypeError, match="torch.Tensor"):
        search.run(den, lambda x: [0.0] * len(x), method="best_of_n", **kw)
    for bad_t in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            search.run(den, tilt.reward, method="fk", temperature=bad_t, **kw)
    with pytest.raises(ValueError, match="deterministic"):
        search.run(den, tilt.reward, method="fk", sampler="dpmpp_2m", **kw)
    with pytest.raises(ValueError, match="stochastic"):
        search.run(den, tilt.reward, method="ditto", sampler="ddpm", **kw)
    with pytest.raises(ValueError, match="no option"):
        search.run(den, tilt.reward, method="fk", particles=3, **kw)
    with pytest.raises(ValueError, match="unknown potential"):
        search.run(den, tilt.reward, method="fk", potential="best", **kw)
    with pytest.raises(ValueError, match="unknown backup 'max' for dts"):
        search.run(den, tilt.reward, method="dts", backup="max", **kw)
    with pytest.raises(ValueError, match="expected 'max' or 'mean'"):
        search.run(den, tilt.reward, method="dts_star", backup="soft", **kw)
    with pytest.raises(ValueError, match="exploration"):
        search.run(den, tilt.reward, method="dts_star", exploration=-1.0, **kw)
    with pytest.raises(ValueError, match="budget"):
        search.run(den, tilt.reward, method="fk", budget=0, n=2, shape=(2,))
    with pytest.raises(ValueError, match="shape"):
        search.run(den, lambda x: x.sum(1), method="fk", budget=16, n=2)
    with pytest.raises(ValueError, match="one per returned sample"):
        search.run(den, tilt.reward, method="fk", generator=reverie.seeded_generators(0, 3), **kw)
    with pytest.raises(TypeError, match="differentiable"):
        search.run(den, lambda x: tilt.reward(x).detach(), method="ditto", budget=40, n=2,
                   shape=(2,), steps=8)


def test_shape_from_a_linear_reward(problem):
    _, _, den, _ = problem
    from reverie.rewards import LinearReward

    res = search.run(den, LinearReward([1.0, 0.0]), method="fk", budget=16, steps=8)
    assert res.samples.shape == (1, 2)

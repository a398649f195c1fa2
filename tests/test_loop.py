"""The one sampler loop (``reverie.samplers.walk`` under ``run``): the per-step hook, and one
error type (``NonFiniteError``) for NaN / inf from every method that walks a grid."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import reverie
from reverie.compose import ULA, sample_with_corrector, superpose
from reverie.likelihood import ito_log_density
from reverie.reference import GaussianMixture
from reverie.samplers import NonFiniteError, run

MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], 0.2)
PROC = reverie.VPLinear()


def _start(n=16, seed=0):
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grid = reverie.grids.make_grid(PROC, 8, "logsnr")
    return noise * float(PROC.sigma(grid[0])), grid


def _nan_after(t_cut: float):
    exact = MIX.denoiser(PROC)

    def fn(x, t):
        out = exact(x, t)
        return out * float("nan") if float(t[0]) < t_cut else out

    return reverie.Denoiser(fn, PROC, prediction="x0")


def test_hook_sees_every_step_and_its_state_replaces_the_sample():
    x, grid = _start()
    den = MIX.denoiser(PROC)
    plain = run("ddpm", den, x, grid, generator=torch.Generator().manual_seed(1)).x0
    seen = []

    def observe(state, sch):
        seen.append(state.i)

    same = run("ddpm", den, x, grid, generator=torch.Generator().manual_seed(1), hook=observe).x0
    assert seen == list(range(1, 9)) and torch.equal(same, plain)

    def shift_last(state, sch):  # a "correction" at the clean end only
        return replace(state, x=state.x + 1.0) if state.i == sch.steps else None

    moved = run("ddpm", den, x, grid, generator=torch.Generator().manual_seed(1),
                hook=shift_last).x0
    assert torch.equal(moved, plain + 1.0)
    # a hook that is not used (returns None) leaves the result; one that is, changes it
    assert not torch.equal(moved, plain)


def test_nan_from_a_hook_names_the_step():
    x, grid = _start()

    def poison(state, sch):
        return replace(state, x=state.x * float("nan")) if state.i == 3 else None

    with pytest.raises(NonFiniteError, match=r"after step 3/8 .*hook"):
        run("ddim", MIX.denoiser(PROC), x, grid, hook=poison)


@pytest.mark.parametrize("method", ["superpose", "corrector", "ito"])
def test_every_loop_raises_the_one_error(method):
    den = _nan_after(0.5)
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    with pytest.raises(NonFiniteError, match=r"after step \d+/10 \(t = "):
        if method == "superpose":
            superpose([den, MIX.denoiser(PROC)], noise, "or", steps=10, generator=g)
        elif method == "corrector":
            sample_with_corrector(den, noise, ULA(), "ddpm", 10, generator=g)
        else:
            ito_log_density(den, noise, "ddpm", 10, generator=g)
    assert issubclass(NonFiniteError, FloatingPointError)
    assert not issubclass(NonFiniteError, ValueError)  # the CLI reports it as a bug, not input


def test_inverse_output_check_raises_the_one_error(monkeypatch):
    """solve() checks every method's samples; a method returning NaN raises NonFiniteError."""
    from reverie.inverse import METHODS, MatrixOperator, solve
    from reverie.inverse.methods import Cost

    def nan_method(problem, **_):
        return torch.full((problem.n, *problem.shape), float("nan"), dtype=problem.dtype), Cost(1)

    monkeypatch.setitem(METHODS._items, "dps", replace(METHODS["dps"], fn=nan_method))
    op = MatrixOperator(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    y = torch.tensor([1.0], dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="dps: the samples contain NaN"):
        solve(MIX.denoiser(PROC), op, y, 0.3, method="dps", steps=4, n=2)

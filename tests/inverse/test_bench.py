"""``reverie bench inverse`` on a tiny configuration: the pipeline runs and is consistent."""

import argparse

import pytest
import torch

import reverie
from reverie.bench import inverse as bench
from reverie.inverse import MatrixOperator


def test_benchmark_problem_matches_the_paper_setup():
    g = torch.Generator().manual_seed(0)
    prior = bench.mixture_prior(8, g)
    assert prior.n_components == 25 and prior.dim == 8
    assert sorted({float(v) for v in prior.means[:, 0]}) == [-16.0, -8.0, 0.0, 8.0, 16.0]
    a, sigma_y, y = bench.random_problem(prior, 2, g)
    s = torch.linalg.svdvals(a)
    assert bool(((s > 0) & (s < 1)).all()) and 0 <= sigma_y <= float(s.max())
    proc = reverie.VP.linear()
    grid = bench.benchmark_grid(proc, MatrixOperator(a), sigma_y, 20)
    assert grid.numel() == 21
    # the MCGdiff times sigma_ve(tau_i) = sigma_y / s_i are grid points
    sve = proc.sigma_ve(grid)
    for r in sigma_y / s:
        assert float((sve / r - 1).abs().min()) < 1e-6


def test_tiny_benchmark_run():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--dims", "8", "--dys", "1", "--replicates", "2", "--samples",
                              "200", "--steps", "10", "--methods", "mcg_diff,ddrm"])
    result = bench.run_mixture(args)
    row = result["rows"][0]
    assert row["nfe"] == {"mcg_diff": 10, "ddrm": 10}
    assert row["floor"][0] < row["mcg_diff"][0] < row["prior"][0]
    assert all(r["sw"] == r["sw"] for r in result["raw"])  # no NaN


def test_every_method_is_scored_on_the_same_projections():
    """The score of a method does not depend on which methods ran before it: one set of random
    directions per problem is shared by all (drawing fresh directions per method, as before,
    changes ddrm's score when mcg_diff runs first)."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)

    def scores(methods):
        args = parser.parse_args(["--dims", "8", "--dys", "1", "--replicates", "1", "--samples",
                                  "100", "--steps", "5", "--methods", methods])
        return {r["method"]: r["sw"] for r in bench.run_mixture(args)["raw"]}

    a, b = scores("mcg_diff,ddrm"), scores("ddrm,mcg_diff")
    assert a == b


def test_image_suite_problems_and_skips():
    """The image suite's seven problems build on 8x8 images, and every registered method is
    run or skipped with the reason (not linear / no SVD / needs a second prior)."""
    from reverie.inverse import METHODS, LinearOperator, compatible_methods

    shape = (1, 8, 8)
    x = torch.rand(2, *shape) * 2 - 1
    for task in bench.IMAGE_PROBLEMS:
        op, physics = bench.image_problem(task, shape, torch.Generator().manual_seed(0))
        assert op(x).shape[0] == 2 and isinstance(physics, str)
        linear = isinstance(op, LinearOperator)
        assert linear == (task not in ("phase", "nonlinear_blur"))
        for m in METHODS:
            why = bench.skip_reason(m, op)
            assert (why is None) == (m in compatible_methods(op))
            if m == "ddrm":
                assert why == (None if linear and op.svd is not None
                               else "not linear (needs A^T)" if not linear
                               else "no SVD in closed form")
    assert bench.image_problem("superres4", shape, None)[0].out_shape == (1, 2, 2)
    assert bench.skip_reason("structured_noise", op).startswith("needs a second")
    mean, lo, hi = bench._bootstrap(torch.arange(10.0, dtype=torch.float64),
                                    torch.Generator().manual_seed(0))
    assert lo < mean == 4.5 < hi and hi - lo < 4
    assert bench.image_problems(" phase,nonlinear_blur") == ["phase", "nonlinear_blur"]
    with pytest.raises(ValueError, match="--problems must name some of inpaint"):
        bench.image_problems("phase,deblur")

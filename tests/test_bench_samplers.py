"""``reverie bench samplers`` plumbing: both sides see the same problem, and the defaults that
equal a diffusers scheduler by construction tie with it exactly in the benchmark."""

from __future__ import annotations

import argparse

import pytest

from reverie.bench import samplers as bench


def _args(**kw) -> argparse.Namespace:
    base = dict(quick=False, n=300, nfe=[5], dim=4, mixtures=[7], fit_n=64, fit_nfe=[5],
                seed=0, parts="defaults,flows")
    return argparse.Namespace(**(base | kw))


@pytest.fixture(scope="module")
def result():
    return bench.run_bench(_args())


def test_identical_algorithms_tie_and_the_floor_is_below(result):
    """ddim (diffusers' leading grid) and ddpm (same noise draws) equal diffusers' DDIM and
    DDPM schedulers; on a flow heun equals FlowMatchHeun; every error is above the floor."""
    rows = {r["method"]: r for r in result["defaults"]}
    for name in ("ddim", "ddpm", "dpmpp_2m", "unipc", "dpmpp_3m"):
        assert rows[name]["reverie"] == pytest.approx(rows[name]["diffusers"], rel=0.03), name
    assert rows["ddim"]["reverie"] == pytest.approx(rows["ddim"]["diffusers"], rel=5e-3)
    flows = {r["method"]: r for r in result["flows"]}
    assert flows["heun"]["reverie"] == pytest.approx(flows["heun"]["diffusers"], rel=1e-4)
    assert all(r["reverie"] > 0.5 * r["floor"] for r in result["defaults"])


def test_the_tie_check_fails_on_another_grid():
    """The same comparison with reverie's ddim on the log-SNR grid (the old default) does not
    tie: the check above can fail."""
    args = _args()
    pb = bench._Problem(7, args)
    from reverie.grids import make_grid

    ours, _ = pb.reverie("ddim", make_grid(pb.proc, 5, "logsnr"), "B")
    cls, fixed = bench._peers()["ddim"]
    theirs, _ = pb.diffusers(lambda: cls(**fixed), "ddim", 5, "B")
    assert ours != pytest.approx(theirs, rel=0.03)


def test_unknown_part_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown part"):
        bench.run_bench(_args(parts="defaults,nope"))


def test_defaults_plot(result, tmp_path):
    out = tmp_path / "defaults.png"
    bench.plot_defaults(result, str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_grid_part_walks_the_named_grid():
    """``--parts grid``: each sampler's row is its run on ``make_grid(.., args.grid)``, not on
    its default grid (ipndm on a discrete VP walks ``trailing``, which the angle grid is not)."""
    from reverie.grids import make_grid

    args = _args(parts="grid", grid="angle", samplers="ipndm")
    rows = bench.run_bench(args)["grid"]
    assert [r["method"] for r in rows] == ["ipndm (angle)"]
    pb = bench._Problem(7, args)
    on_angle = pb.reverie("ipndm", make_grid(pb.proc, 5, "angle"), "B")[0]
    on_default = pb.reverie("ipndm", bench._default_grid(pb, "ipndm", 5), "B")[0]
    assert rows[0]["reverie"] == on_angle != on_default

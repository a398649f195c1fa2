"""``reverie bench guidance`` on tiny sizes: the helpers are right and both parts run."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from reverie.bench import guidance as bench
from reverie.guidance import METHODS


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_crossing_interpolates_at_the_first_crossing():
    pts = [{"scale": 1.0, "accuracy": 0.9, "frechet": 1.0},
           {"scale": 2.0, "accuracy": 1.0, "frechet": 2.0},
           {"scale": 3.0, "accuracy": 0.8, "frechet": 5.0}]
    assert bench.crossing(pts, "accuracy", 0.95) == pytest.approx(
        {"frechet": 1.5, "scale": 1.5, "exact": True})
    assert bench.crossing(pts, "accuracy", 0.85)["exact"] is False  # no point below the level
    assert bench.crossing(pts, "accuracy", 1.01) is None


def test_mode_weights_count_the_nearest_component():
    lm, _, _ = bench.problem()
    x = lm.mixture.means[1] + 0.01 * torch.randn(50, 2, dtype=torch.float64)
    assert bench.mode_weights(lm, x) == [0.0, 1.0, 0.0, 0.0]
    assert bench.mode_weights(lm, lm.mixture.means[[0, 0, 2, 3]]) == [0.5, 0.0, 0.25, 0.25]


def test_mixture_part_accounts_for_every_method():
    """Every registered method is measured or skipped with a reason; the exact classifier at
    scale 1 lands far closer to p(x | c) than the x0-based universal approximation."""
    args = _args(n=200, steps=20, scales="2", lambdas="0.1", sweep_steps="10",
                 gradient_scales="1")
    res = bench.run_mixture(args)
    seen = {r["method"] for r in res["gradient"] + res["cfg"]} | set(res["skipped"])
    assert seen == set(METHODS)
    grad = {r["method"]: r["sw_cond"] for r in res["gradient"] if r["scale"] == 1.0}
    assert grad["classifier"] < 0.5 * grad["universal"], grad
    assert {r["method"] for r in res["sweep"]} == {"cfg_pp", "cfg"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_digits_part_from_the_command_line(tmp_path, monkeypatch):
    import sklearn.neural_network

    from reverie.cli import main

    mlp = sklearn.neural_network.MLPClassifier  # the judge, trained briefly here
    monkeypatch.setattr(sklearn.neural_network, "MLPClassifier",
                        lambda **kw: mlp(**{**kw, "max_iter": 30}))

    out, plot = tmp_path / "g.json", tmp_path / "g.png"
    assert main(["bench", "guidance", "--parts", "digits", "--digits-n", "20", "--digits-steps",
                 "2", "--digits-scales", "1,2", "--digits-lambdas", "1", "--plot", str(plot),
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())["digits"]
    assert {"cfg", "apg", "cfg_zero_star", "cfg_pp"} <= set(res["curves"])
    assert "autoguidance" in res["curves"]  # fed the bundled digits-weak model
    assert "digits-coherence" in res["skipped"]["coherence_cfg"]
    assert plot.stat().st_size > 0
    with pytest.raises(ValueError, match="unknown part 'mix'"):
        bench.run(_args(parts="mix"))

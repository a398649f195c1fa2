"""reverie.distributed: 2 ranks (gloo on CPU, launched like torchrun) give the single-process
results bitwise; a failing rank stops the launcher with its error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reverie
import reverie.likelihood
from reverie import distributed as dist
from reverie._checks import UserError
from reverie.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

WORKER = Path(__file__).with_name("distributed_worker.py")
SRC = Path(reverie.__file__).parents[1]


def launch(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS``, 1 thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REVERIE_DIST_TIMEOUT": "30",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_shard_is_contiguous_and_covers_every_row():
    for n, world in [(101, 2), (5, 3), (1, 2), (3, 8)]:
        parts = [dist.shard(n, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))  # in order, once each
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert len(dist.shard(1, 1, 2)) == 0  # a rank past n takes nothing


def test_distributed_without_a_group_is_a_clear_error():
    model = reverie.load("two-moons")
    with pytest.raises(UserError, match="needs an initialised torch.distributed process group"):
        reverie.sample(model.denoiser, torch.randn(4, 2), "euler", distributed=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of 2 ranks got from distributed sample / generate (one launch)."""
    tmp = tmp_path_factory.mktemp("dist")
    res = launch([str(WORKER), "equal", str(tmp / "out")], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(tmp / f"out.{r}.pt") for r in range(2)]


def test_sample_on_two_ranks_equals_one_process(two_ranks):
    model = reverie.load("two-moons")
    # shards of >= 16 rows: two-moons' rows are then bitwise batch-invariant on this CPU
    for key, n, sampler in [("ddpm33", 33, "ddpm"), ("euler1", 1, "euler")]:  # 1 < 2 ranks
        one = worker.sample(model, n, 3, sampler, distributed=False)
        for got in two_ranks:  # every rank holds the whole result
            assert torch.equal(got[key], one), key
    # the check can fail: each rank seeding its shard from `seed` (the classic bug) differs
    naive = torch.cat([worker.sample(model, 17, 3, "ddpm", False),
                       worker.sample(model, 16, 3, "ddpm", False)])
    assert not torch.equal(two_ranks[0]["ddpm33"], naive)


def test_likelihood_on_two_ranks_equals_one_process(two_ranks):
    model = reverie.load("two-moons")
    for key, n in [("ll33", 33), ("ll1", 1)]:  # 1 row: rank 1 steps along with no rows
        one = worker.asdict(worker.likelihood(model, n, distributed=False))
        for got in two_ranks:  # the same values, steps and model calls
            assert got[key].keys() == one.keys()
            for field, value in one.items():
                same = torch.equal(got[key][field], value) if torch.is_tensor(value) else \
                    got[key][field] == value
                assert same, (key, field)
    # the check can fail: shards with their own step control (no shared norm) differ
    x = torch.randn(33, 2, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    naive = torch.cat([reverie.likelihood.log_likelihood(model.denoiser, part, rtol=1e-3,
                                                         atol=1e-3) for part in (x[:17], x[17:])])
    assert not torch.equal(two_ranks[0]["ll33"]["log_likelihood"], naive)


def test_ranks_with_different_weights_all_raise(two_ranks):
    for got in two_ranks:
        assert got["mismatch"].startswith("the ranks disagree on the number / shape of the "
                                          "samples or the model's weights")


def test_generate_on_two_ranks_equals_one_process(two_ranks):
    one = worker.tokens(distributed=False)
    assert one.shape[1] == 5 + 10  # the widest prompt sets the width: rank 1 re-pads its row
    for got in two_ranks:
        assert torch.equal(got["tokens"], one)
    one = worker.asdict(worker.tokens(False, 1, return_stats=True))
    one_tokens = one.pop("tokens")
    for got in two_ranks:  # a rank with no rows gets the other's tokens, texts and counts
        assert torch.equal(got["stats1"].pop("tokens"), one_tokens)
        assert got["stats1"] == one and one["texts"] is not None
    # the check can fail: the rows of another seed differ
    model = worker.load_model("tiny-json")
    other = worker.generate(model, worker.PROMPTS, max_new_tokens=10,
                            generator=worker.seeded_generators(8, 3))
    assert not torch.equal(two_ranks[0]["tokens"], other)


def test_torchrun_cli_writes_the_single_process_samples(tmp_path, capsys):
    args = ["sample", "--model", "two-moons", "--num-samples", "101", "--seed", "3", "--quiet"]
    res = launch(["-m", "reverie", *args, "--out", "x.npy"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote x.npy") == 1  # rank 0 alone writes and reports
    assert main([*args, "--out", str(tmp_path / "one.npy")]) == 0
    assert main([*args[:-2], "4", "--quiet", "--out", str(tmp_path / "seed4.npy")]) == 0
    x, one, seed4 = (np.load(tmp_path / f) for f in ("x.npy", "one.npy", "seed4.npy"))
    assert x.shape == (101, 2) and np.array_equal(x, one)
    assert not np.array_equal(x, seed4)  # the comparison can fail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npy", "seed4.npy", "x.npy"]


def test_a_failing_rank_stops_the_launcher_with_its_error(tmp_path):
    res = launch([str(WORKER), "fail"], tmp_path, timeout=60)
    assert res.returncode != 0
    assert "rank 1 fails on purpose" in res.stdout + res.stderr


def test_a_killed_rank_stops_the_launcher_within_the_timeout(tmp_path):
    # rank 1 dies by SIGKILL mid-run while rank 0 waits in a collective: torchrun's agent sees
    # the dead worker, stops rank 0 and exits non-zero naming the rank and the signal (the
    # subprocess timeout is the bound: a hang fails the test)
    res = launch([str(WORKER), "kill"], tmp_path, timeout=90)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    root = out.split("Root Cause")[-1]  # torchrun's report of the first failure
    assert "Root Cause" in out and "rank      : 1" in root and "(SIGKILL)" in root, out[-3000:]

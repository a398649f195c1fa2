"""Particle populations over 2 ranks (gloo): FK steering, TDS and MCGdiff resample one global
population, so the result is the one-process run's with the same total population and seed,
bitwise, and follows the exact target; search / solve / restore shard their rows."""

import math
import sys
from pathlib import Path

import pytest
import torch

from reverie._random import seeded_generators
from reverie.cli import main
from reverie.metrics import SlicedWasserstein, mode_weights

sys.path.insert(0, str(Path(__file__).parent))
import distributed_particles_worker as worker  # noqa: E402
from test_distributed import launch  # noqa: E402  (torchrun, 2 ranks, 1 thread each)

WORKER = Path(__file__).with_name("distributed_particles_worker.py")
RESTORE = ["restore", "--task", "inpaint", "--steps", "3", "--images", "2", "--samples", "1",
           "--particles", "2"]
SEARCH = ["search", "--model", "mixture", "--method", "fk", "--budget", "40", "--num-samples",
          "5", "--steps", "10", "--levels", "0", "--seed", "2", "--quiet"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of 2 ranks got (one launch), and the launch's folder and output."""
    tmp = tmp_path_factory.mktemp("particles")
    res = launch([str(WORKER), str(tmp / "out")], tmp, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(tmp / f"out.{r}.pt", weights_only=False) for r in range(2)], tmp, res


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_particle_methods_on_two_ranks_equal_one_process(two_ranks):
    got, _, _ = two_ranks
    one = {"fk": worker.fk(False),
           "fk_seeded": worker.fk(False, n=3, particles=5, generator=seeded_generators(7, 3)),
           "tds": worker.smc("tds", False), "mcg_diff": worker.smc("mcg_diff", False)}
    for r in got:  # every rank holds the whole result
        assert torch.equal(r["fk"].samples, one["fk"].samples)
        assert torch.equal(r["fk"].rewards, one["fk"].rewards)
        assert r["fk"].info == one["fk"].info  # resamplings, ESS, network rows of all ranks
        assert torch.equal(r["fk_seeded"].samples, one["fk_seeded"].samples)  # 3 + 2 a sample
        for method in ("tds", "mcg_diff"):
            assert torch.equal(r[method], one[method]), method
    # the check can fail: independent populations of half the size on each rank differ
    for method in ("tds", "mcg_diff"):
        assert not torch.equal(got[0][method], worker.smc(method, False, particles=1024))


def test_resampling_is_global_when_one_rank_holds_all_the_weight(two_ranks):
    """8 particles labelled 0..7, 4 a rank, the weight all on rank 0's: global resampling
    gives rank 1 copies of rank 0's particles; the per-rank variant (N independent
    populations) keeps rank 1's own, and the check sees it."""
    got, _, _ = two_ranks

    def global_ancestry(labels):  # every resampled particle descends from rank 0's
        return all(bool((r < 4).all()) for r in labels)

    assert global_ancestry([r["global"] for r in got])
    assert len(torch.cat([r["global"] for r in got]).unique()) > 1  # a resampling, not a copy
    assert not global_ancestry([r["local"] for r in got])


def test_split_populations_follow_the_exact_targets(two_ranks):
    """The 2-rank runs against the exact laws. FK (600 samples, 32 particles each split 16 +
    16): mode weights of the tilted mixture within 2 sd + 0.03, as tests/search checks one
    process; 1 particle (the untilted model) is rejected. TDS / MCGdiff (one population of
    2048 particles split 1024 + 1024, 40 steps): sliced Wasserstein distance to the exact
    posterior < 0.4 (measured over seeds 1-6 in one process: TDS 0.11-0.29, MCGdiff
    0.08-0.26; two-sample floor 0.03-0.06); clouds of 2 particles (0.87-1.13) and the prior
    (1.96) are rejected."""
    got = two_ranks[0][0]
    tilt = worker.TILT
    w = tilt.target.weights

    def tv(x):
        return 0.5 * float((mode_weights(x, tilt.target) - w).abs().sum())

    bound = float((w * (1 - w)).sqrt().sum()) / math.sqrt(600) + 0.03
    assert tv(got["fk"].samples) < bound
    reward_sd = float(tilt.reward(tilt.sample(20000, _g(2))).std())
    tol = 4 * reward_sd / math.sqrt(600) + 0.05
    assert abs(float(got["fk"].rewards.mean()) - tilt.mean_reward()) < tol
    assert tv(worker.fk(False, particles=1).samples) > bound  # the check can fail

    dist = SlicedWasserstein(worker.POSTERIOR.sample(50000, _g(5)), 128, _g(3))
    for method in ("tds", "mcg_diff"):
        assert dist(got[method]) < 0.4, method
        assert dist(worker.smc(method, False, n=1024, particles=2)) > 0.4, method
    assert dist(worker.PRIOR.sample(2048, _g(6))) > 0.4


def test_sharded_search_and_solve_equal_one_process(two_ranks):
    got, _, _ = two_ranks
    rows = worker.fk(False, n=3, particles=4, generator=seeded_generators(7, 3))
    bon, pig = worker.best_of_n(False), worker.pigdm(False)
    for r in got:
        for a, b in ((r["fk_rows"], rows), (r["best_of_n"], bon)):
            assert torch.equal(a.samples, b.samples) and torch.equal(a.rewards, b.rewards)
            assert (a.nfe, a.nfe_total, a.info["network_rows"]) == \
                (b.nfe, b.nfe_total, b.info["network_rows"])
        assert r["fk_rows"].info["resamplings_mean"] == \
            pytest.approx(rows.info["resamplings_mean"], rel=1e-12)
        assert torch.equal(r["pigdm"].samples, pig.samples) and r["pigdm"].nfe == pig.nfe
    # the check can fail: other seeds differ
    assert not torch.equal(got[0]["best_of_n"].samples, worker.search.run(
        worker.FLOW, worker.TILT.reward, method="best_of_n", budget=40, n=5,
        generator=seeded_generators(4, 5), shape=(2,), steps=10, dtype=torch.float64).samples)


def test_restore_cli_under_torchrun_writes_the_one_process_grid(two_ranks, tmp_path):
    """The worker ran ``reverie restore`` (2 images over 2 ranks) through the CLI's entry
    point inside its process group: rank 0 alone wrote, the grid of one process."""
    _, tmp, res = two_ranks
    assert res.stdout.count("wrote restore.png") == 1
    assert main([*RESTORE, "--out", str(tmp_path / "one.png")]) == 0
    assert main([*RESTORE, "--seed", "1", "--out", str(tmp_path / "seed1.png")]) == 0
    two, one, seed1 = (p.read_bytes() for p in
                       (tmp / "restore.png", tmp_path / "one.png", tmp_path / "seed1.png"))
    assert two == one and two != seed1  # the comparison can fail


def test_search_cli_under_torchrun_writes_the_one_process_samples(two_ranks, tmp_path):
    """The worker ran ``reverie search`` (FK: each sample's 4 particles split 2 + 2) through
    the CLI's entry point in its process group: rank 0 alone wrote, one process's samples."""
    _, tmp, res = two_ranks
    assert res.stdout.count("wrote search/grid.png") == 1  # rank 0 alone writes and reports
    assert sorted(p.name for p in (tmp / "search").iterdir()) == \
        ["grid.png", "result.json", "reward_vs_nfe.png", "samples.pt"]
    assert main([*SEARCH, "--out", str(tmp_path / "one")]) == 0
    assert main([*SEARCH[:-2], "3", "--quiet", "--out", str(tmp_path / "seed3")]) == 0
    two, one, seed3 = (torch.load(d / "samples.pt") for d in
                       (tmp / "search", tmp_path / "one", tmp_path / "seed3"))
    assert two.shape == (5, 2) and torch.equal(two, one)
    assert not torch.equal(two, seed3)  # the comparison can fail


def test_bad_distributed_calls_are_clear_errors(two_ranks):
    from reverie._checks import UserError

    for r in two_ranks[0]:  # 1 particle over 2 ranks: every rank raises, none hangs
        assert r["too_few"].startswith("a population of 1 particles cannot be split over 2")

    with pytest.raises(UserError, match="needs an initialised torch.distributed process group"):
        worker.fk(True, n=1, particles=2)
    with pytest.raises(UserError, match="needs an initialised torch.distributed process group"):
        worker.smc("tds", True, n=4, particles=4, steps=3)
    with pytest.raises(UserError, match="needs an initialised torch.distributed process group"):
        worker.pigdm(True, n=2)
    with pytest.raises(ValueError, match="has no particle population to split"):
        worker.search.run(worker.FLOW, worker.TILT.reward, method="best_of_n", budget=10,
                          shape=(2,), steps=10, distributed="particles")

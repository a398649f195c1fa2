"""Run by tests/test_distributed_particles.py under ``python -m torch.distributed.run`` (2
ranks, gloo): particle populations split over the ranks (FK steering, TDS, MCGdiff), the
rows of search / solve sharded, and the resampling of a population whose weight is all on
rank 0; each rank saves what it got to ``OUT.RANK.pt``; then ``reverie restore`` and
``reverie search`` run through the CLI's entry point under torchrun's environment, in the
same process group (rank 0 writes ``restore.png`` and ``search/``).
The test file calls the same functions with ``distributed=False`` for the one-process
reference."""

import sys

import torch

import reverie
from reverie import distributed as dist
from reverie import search
from reverie._random import seeded_generators
from reverie.cli import main
from reverie.inverse import MatrixOperator, solve
from reverie.inverse.methods import _resample_clouds
from reverie.reference import GaussianMixture, TiltedMixture, linear_gaussian_posterior

F64 = torch.float64

# search: the exact tilted mixture of tests/search (4 modes; the tilt moves the mass to +x, +y)
MIX = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], 0.16,
                      [0.4, 0.2, 0.2, 0.2])
TILT = TiltedMixture(MIX, [0.75, 0.5], temperature=1.0)
FLOW = MIX.denoiser(reverie.RectifiedFlow())

# inverse: tests/inverse's SMC problem, a two-mode posterior of a 4-mode prior
PRIOR = GaussianMixture(torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]],
                                     dtype=F64), 0.25, torch.tensor([0.1, 0.2, 0.3, 0.4]))
A, Y, SY = torch.tensor([[1.0, 0.3]], dtype=F64), torch.tensor([1.2], dtype=F64), 0.5
VP = reverie.VP.linear()
POSTERIOR = linear_gaussian_posterior(PRIOR, A, Y, SY**2)


def fk(distributed, n=600, particles=32, steps=20, **kw):
    """FK steering, ``particles`` per returned sample (budget = particles trajectories)."""
    gen = kw.pop("generator", torch.Generator().manual_seed(1))
    return search.run(FLOW, TILT.reward, method="fk", budget=particles * steps, n=n,
                      generator=gen, shape=(2,), steps=steps, dtype=F64,
                      distributed=distributed, **kw)


def best_of_n(distributed, n=5):
    """A method without particles: the returned samples are sharded (one generator each)."""
    return search.run(FLOW, TILT.reward, method="best_of_n", budget=40, n=n,
                      generator=seeded_generators(3, n), shape=(2,), steps=10, dtype=F64,
                      distributed=distributed)


def smc(method, distributed, n=2048, particles=2048, steps=40, seed=1):
    """TDS / MCGdiff: ``n`` samples from clouds of ``particles`` (default: one cloud)."""
    return solve(PRIOR.denoiser(VP), MatrixOperator(A), Y, SY, method=method, steps=steps,
                 n=n, particles=particles, generator=torch.Generator().manual_seed(seed),
                 distributed=distributed)


def pigdm(distributed, n=5):
    """A method without particles: the samples are sharded (one generator each)."""
    return solve(PRIOR.denoiser(VP), MatrixOperator(A), Y, SY, method="pigdm", steps=20, n=n,
                 generator=seeded_generators(5, n), distributed=distributed, return_info=True)


def too_few() -> str:
    """The error when a population of 1 particle is split over 2 ranks (no rank hangs)."""
    try:
        fk(True, n=1, particles=1)
    except ValueError as err:
        return str(err)
    return "no error"


def all_weight_on_rank_0(global_population: bool) -> torch.Tensor:
    """8 particles, 4 per rank, labelled by their global index; rank 1's have weight ~0.
    Returns the labels of this rank's particles after one (global / per-rank) resampling."""
    pop = dist.Population(8 if global_population else 4, split=global_population)
    labels = torch.arange(8, dtype=F64)[dist.shard(8)]
    logw = torch.full((4,), -50.0 if dist.rank() == 1 else 0.0, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    idx, _ = _resample_clouds(pop.gather(logw), pop.total, gen)
    return pop.take(idx, labels)[0]


if __name__ == "__main__":
    torch.set_num_threads(1)
    with dist.launched():
        out = {
            "fk": fk(True),  # 600 x 32 particles: 300 x 32 rows a rank
            "fk_seeded": fk("particles", n=3, particles=5,  # each 5 split 3 + 2
                            generator=seeded_generators(7, 3)),
            "fk_rows": fk("samples", n=3, particles=4, generator=seeded_generators(7, 3)),
            "best_of_n": best_of_n(True),
            "tds": smc("tds", True),
            "mcg_diff": smc("mcg_diff", True),
            "pigdm": pigdm(True),
            "global": all_weight_on_rank_0(True),
            "local": all_weight_on_rank_0(False),
            "too_few": too_few(),
        }
        torch.save(out, f"{sys.argv[1]}.{dist.rank()}.pt")
        from test_distributed_particles import RESTORE, SEARCH

        main([*RESTORE, "--out", "restore.png"])
        main([*SEARCH, "--out", "search"])

"""Run by tests/test_distributed.py under ``python -m torch.distributed.run`` (2 ranks, gloo):
``equal OUT``: sample, generate and log_likelihood with distributed=True, each rank saves
what it got;
``fail``: rank 1's model raises mid-run; ``kill``: rank 1 is killed (SIGKILL) mid-run, while
rank 0 waits for it in the gather."""

import os
import signal
import sys
from dataclasses import asdict

import torch

import reverie
from reverie import distributed as dist
from reverie._random import seeded_generators
from reverie.discrete import generate, load_model
from reverie.likelihood import log_likelihood

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]  # ragged: 3 rows over 2 ranks


def sample(model, n: int, seed: int, sampler: str, distributed: bool):
    """n two-moons samples, sample k from seed + k (noise) and seed + 1000 + k (its steps)."""
    noise = reverie.randn((n, 2), seeded_generators(seed, n))
    gens = seeded_generators(seed + 1000, n) if sampler == "ddpm" else None
    return reverie.sample(model.denoiser, noise, sampler, steps=8, generator=gens,
                          distributed=distributed)


def likelihood(model, n: int, distributed: bool):
    """log p(x) of n two-moons points (float64, loose tolerances: a few steps), with the info."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    return log_likelihood(model.denoiser, x, rtol=1e-3, atol=1e-3, return_info=True,
                          distributed=distributed)


def tokens(distributed: bool, rows: int = 3, **kw):
    model = load_model("tiny-json")
    return generate(model, PROMPTS[:rows], max_new_tokens=10,
                    generator=seeded_generators(7, rows), distributed=distributed, **kw)


def mismatch() -> str:
    """The error when rank 1 holds other weights (every rank raises it: none hangs)."""
    other = reverie.load("two-moons")
    if dist.rank() == 1:
        with torch.no_grad():
            next(other.net.parameters()).add_(1e-3)
    try:
        sample(other, 4, 0, "euler", True)
    except ValueError as err:
        return str(err)
    return "no error"


class Failing(reverie.DenoiserBase):
    """Two-moons' denoiser that raises on rank 1 at its third call."""

    def __init__(self, denoiser, kill: bool = False):
        self.denoiser, self.process, self.calls, self.kill = denoiser, denoiser.process, 0, kill

    def __call__(self, x, t, **cond):
        self.calls += 1
        if dist.rank() == 1 and self.calls == 3:
            if self.kill:  # no Python error, no message: the process is gone
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 fails on purpose")
        return self.denoiser(x, t, **cond)


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = reverie.load("two-moons")
    with dist.launched():
        if sys.argv[1] == "equal":
            out = {"ddpm33": sample(model, 33, 3, "ddpm", True),  # odd: 17 + 16 rows
                   "euler1": sample(model, 1, 3, "euler", True),  # n < world size
                   "tokens": tokens(True), "mismatch": mismatch(),
                   "ll33": asdict(likelihood(model, 33, True)),
                   "ll1": asdict(likelihood(model, 1, True)),
                   "stats1": asdict(tokens(True, 1, return_stats=True))}  # rank 1: no rows
            torch.save(out, f"{sys.argv[2]}.{dist.rank()}.pt")
        else:
            noise = reverie.randn((6, 2), seeded_generators(0, 6))
            failing = Failing(model.denoiser, kill=sys.argv[1] == "kill")
            reverie.sample(failing, noise, "euler", steps=8, distributed=True)

"""Distributed sampling: samples/s at world size 1 and 2 (CPU processes, gloo).

Two-moons, ``reverie.sample(..., distributed=True)`` with ``dpmpp_2m``: ``--n`` samples of
``--steps`` steps, so the network dominates the cost. Each world size is launched as
processes (torch.multiprocessing spawn, one torch thread each, a FileStore rendezvous); rank 0
times ``--repeats`` calls after a warm-up, between barriers (sharding, sampling and the gather
on every rank), and reports the median; it also times its shard alone (no collectives), which
shows whether the ranks really ran in parallel. World sizes alternate over ``--rounds`` launches
because a shared machine's load drifts; the table gives the median over rounds. The gathered
samples of every world size must be identical (checked).

``--particles K`` (0: skip) adds a particle method: FK steering (``reverie.search.run(...,
method="fk", distributed=True)``) of ``--fk-n`` samples with ``K`` particles each towards a
linear reward on two-moons at ``--temperature`` (0.3: a few resamplings), one population per
sample split over the ranks; it reports the time per call, whether the samples equal world
size 1's, and the bytes rank 0 received per call (log-weights every step, particles at each
resampling).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from reverie.bench.common import Timer, format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", "--num-samples", dest="n", type=int, default=4096,
                        help="samples per call")
    parser.add_argument("--steps", type=int, default=32, help="sampler steps")
    parser.add_argument("--worlds", default="1,2", help="world sizes (processes)")
    parser.add_argument("--rounds", type=int, default=3, help="launches per world size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per launch")
    parser.add_argument("--particles", type=int, default=256,
                        help="FK particles per sample (0: no particle row)")
    parser.add_argument("--fk-n", type=int, default=8, help="FK samples per call")
    parser.add_argument("--temperature", type=float, default=0.3,
                        help="FK temperature (0.3: a few resamplings per call)")


def _worker(rank: int, world: int, folder: str, n: int, steps: int, repeats: int,
            particles: int = 0, temperature: float = 1.0) -> None:
    """One rank: warm up, then time ``repeats`` distributed calls; rank 0 writes the result.
    ``particles > 0``: FK steering of ``n`` samples with ``particles`` each instead."""
    import reverie
    import reverie.distributed
    from reverie import search
    from reverie._random import seeded_generators
    from reverie.rewards import parse_reward

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        model = reverie.load("two-moons")
        noise = reverie.randn((n, 2), seeded_generators(0, n))
        reward = parse_reward("linear:0.75,0.5")
        resamplings: list[float] = []

        def call() -> torch.Tensor:
            if particles:
                res = search.run(model, reward, "fk", budget=particles * steps, n=n,
                                 generator=torch.Generator().manual_seed(0), steps=steps,
                                 temperature=temperature, distributed=True)
                resamplings.append(res.info["resamplings_mean"])
                return res.samples
            return reverie.sample(model.denoiser, noise, "dpmpp_2m", steps=steps,
                                  distributed=True)

        def own() -> None:  # this rank's shard alone: no collectives
            if particles:  # its particles of every population, without the exchanges
                mine = len(reverie.distributed.shard(particles))
                search.run(model, reward, "fk", budget=mine * steps, n=n, steps=steps,
                           temperature=temperature, generator=torch.Generator().manual_seed(0))
                return
            rows = reverie.distributed.shard(n)
            reverie.sample(model.denoiser, noise[rows.start : rows.stop], "dpmpp_2m", steps=steps)

        call()  # warm-up
        seconds, shard_seconds = [], []
        before = reverie.distributed.received_bytes()
        for _ in range(repeats):
            torch.distributed.barrier()
            with Timer() as tm:
                x = call()
            seconds.append(tm.seconds)
            torch.distributed.barrier()
            with Timer() as tm:
                own()
            shard_seconds.append(tm.seconds)
        if rank == 0:
            received = (reverie.distributed.received_bytes() - before) / repeats
            Path(folder, "result.json").write_text(json.dumps(
                {"seconds": statistics.median(seconds), "checksum": x.double().sum().item(),
                 "shard_seconds": statistics.median(shard_seconds), "first": x[:4].tolist(),
                 "bytes_per_call": received,
                 "resamplings": statistics.mean(resamplings) if resamplings else 0.0}))
    finally:
        torch.distributed.destroy_process_group()


def _launch(world: int, n: int, steps: int, repeats: int, particles: int = 0,
            temperature: float = 1.0) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_worker, args=(world, folder, n, steps, repeats, particles,
                                          temperature), nprocs=world, start_method="spawn")
        return json.loads(Path(folder, "result.json").read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    worlds = [int(w) for w in args.worlds.split(",")]
    load = os.getloadavg()[0]  # other processes on this machine, before the run
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in worlds}
    for r in range(args.rounds):
        for w in worlds if r % 2 == 0 else worlds[::-1]:
            runs[w].append(_launch(w, args.n, args.steps, args.repeats))
    ref = runs[worlds[0]][0]
    identical = all(x["checksum"] == ref["checksum"] and x["first"] == ref["first"]
                    for rs in runs.values() for x in rs)
    rate = {w: args.n / statistics.median(x["seconds"] for x in rs) for w, rs in runs.items()}
    shard = {w: statistics.median(x["shard_seconds"] for x in rs) for w, rs in runs.items()}
    rows = [[w, f"{args.n / rate[w]:.3f}", f"{shard[w]:.3f}", f"{rate[w]:.0f}",
             f"{rate[w] / rate[worlds[0]]:.2f}"] for w in worlds]
    print(f"machine: {machine()}; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"two-moons, dpmpp_2m, {args.steps} steps, {args.n} samples per call; "
          f"identical samples at every world size: {identical}")
    print(format_table(["processes", "s per call", "rank 0's shard alone, s", "samples/s",
                        f"x {worlds[0]}"], rows))
    fk = _particle_rows(args, worlds) if args.particles > 0 else None
    return {"machine": machine(), "load_average": [load, os.getloadavg()[0]], "n": args.n,
            "steps": args.steps, "identical": identical, "fk": fk,
            "samples_per_s": {str(w): rate[w] for w in worlds},
            "shard_seconds": {str(w): shard[w] for w in worlds},
            "seconds": {str(w): [x["seconds"] for x in rs] for w, rs in runs.items()},
            "shard_seconds_by_round": {str(w): [x["shard_seconds"] for x in rs]
                                       for w, rs in runs.items()}}


def _particle_rows(args: argparse.Namespace, worlds: list[int]) -> dict[str, Any]:
    """FK steering with each population split over the ranks: time, equality, bytes."""
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in worlds}
    for r in range(args.rounds):
        for w in worlds if r % 2 == 0 else worlds[::-1]:
            runs[w].append(_launch(w, args.fk_n, args.steps, args.repeats, args.particles,
                                   args.temperature))
    ref = runs[worlds[0]][0]
    identical = all(x["checksum"] == ref["checksum"] and x["first"] == ref["first"]
                    for rs in runs.values() for x in rs)
    secs = {w: statistics.median(x["seconds"] for x in rs) for w, rs in runs.items()}
    shard = {w: statistics.median(x["shard_seconds"] for x in rs) for w, rs in runs.items()}
    received = {w: rs[0]["bytes_per_call"] for w, rs in runs.items()}
    rows = [[w, f"{secs[w]:.3f}", f"{shard[w]:.3f}", f"{secs[worlds[0]] / secs[w]:.2f}",
             f"{received[w] / 1e6:.2f}"] for w in worlds]
    resamplings = ref["resamplings"]
    print(f"FK steering, {args.fk_n} samples x {args.particles} particles (one population "
          f"each, split over the ranks), {args.steps} steps, T = {args.temperature:g}, "
          f"{resamplings:.2f} resamplings per sample; identical samples at every world size: "
          f"{identical}")
    print(format_table(["processes", "s per call", "rank 0's particles alone, s",
                        f"speed-up vs {worlds[0]}", "MB received by rank 0 per call"], rows))
    return {"n": args.fk_n, "particles": args.particles, "identical": identical,
            "temperature": args.temperature, "resamplings_per_sample": resamplings,
            "seconds": {str(w): secs[w] for w in worlds},
            "shard_seconds": {str(w): shard[w] for w in worlds},
            "bytes_per_call": {str(w): received[w] for w in worlds}}

"""``reverie bench graphs``: GDSS on a synthetic graph family, judged by the degree /
clustering / spectrum MMD to held-out graphs of the family (docs/graphs.md).

Trains the tiny :class:`reverie.graphs.net.GraphScoreNet` for ``--train-steps`` on
``--family`` graphs, samples with the reverse-diffusion predictor (GDSS's PC solver without
the corrector, and with it at ``--snr``), and compares with an Erdos-Renyi baseline of the
family's edge density and with a second draw of the family itself (the floor).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.graphs import GDSS, erdos_renyi, family, graph_mmd, quantize, sample_gdss
from reverie.graphs.net import GraphScoreNet, train_gdss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="community", help="graph family (default community)")
    parser.add_argument("--train-graphs", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=64, help="generated and held-out graphs")
    parser.add_argument("--steps", type=int, default=200, help="sampler steps (default 200)")
    parser.add_argument("--snr", type=float, default=0.05, help="Langevin corrector snr")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    train = family(args.family, args.train_graphs, g)
    test = family(args.family, args.n, g)
    net = GraphScoreNet(features=1, hidden=64, layers=3)
    losses = train_gdss(net, train, steps=args.train_steps, generator=g)
    train_s = time.perf_counter() - t0
    net = net.double().eval()
    n = test.shape[-1]
    density = float(test.sum() / (args.n * n * (n - 1)))
    sets = {"same family (floor)": family(args.family, args.n, g),
            f"Erdos-Renyi p={density:.2f} (baseline)": torch.stack(
                [erdos_renyi(n, density, g) for _ in range(args.n)])}
    with torch.no_grad():
        for c, label in [(0, "GDSS predictor"), (1, f"GDSS PC (snr {args.snr})")]:
            _, a = sample_gdss(lambda x, a, t: net(x, a, t), GDSS(), args.n, n, 1,
                               steps=args.steps, corrector_steps=c, snr=args.snr, generator=g)
            sets[label] = quantize(a)
    rows, results = [], []
    for label, a in sets.items():
        m = graph_mmd(a, test)
        edges = float(a.sum() / (2 * len(a)))
        results.append({"method": label, **m, "edges": edges})
        rows.append([label, m["degree"], m["clustering"], m["spectrum"], edges])
    table = format_table(["samples", "degree MMD", "clustering MMD", "spectrum MMD",
                          "mean edges"], rows)
    print(table)
    print(f"\n{args.family}: held-out mean edges {float(test.sum() / (2 * args.n)):.1f}; "
          f"training {train_s:.0f} s (final loss {sum(losses[-100:]) / 100:.3f}); "
          f"{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"family": args.family, "train_steps": args.train_steps, "n": args.n,
            "steps": args.steps, "snr": args.snr, "seed": args.seed, "rows": results,
            "table": table}

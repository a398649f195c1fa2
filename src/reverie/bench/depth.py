"""``reverie bench depth``: GRIN in miniature -- metric depth maps from sparse points.

Trains :class:`reverie.depth.GRINNet` on rendered floor / wall / box scenes (a few minutes
on one CPU thread: 272 s on the shared machine; nothing is bundled), then on held-out scenes
(another seed) with 8, 16 and 32 sparse metric points compares the model's per-pixel mean
depth with nearest-neighbour and linear interpolation of the points: abs rel and RMSE in
metres against the exact rendered depth (docs/depth.md).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.depth import (
    GRINNet,
    depth_errors,
    grin_denoiser,
    interpolate,
    predict_depth,
    render_scenes,
    sparse_points,
    train_grin,
)
from reverie.process import VPLinear


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=1200, help="Adam steps (default 1200)")
    parser.add_argument("--size", type=int, default=12, help="depth map side (default 12)")
    parser.add_argument("--scenes", type=int, default=64, help="held-out scenes (default 64)")
    parser.add_argument("--points", default="8,16,32", help="sparse points per scene")
    parser.add_argument("--samples", type=int, default=4, help="samples per scene (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="dpmpp_2m steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    process = VPLinear()
    t0 = time.perf_counter()
    net, record = train_grin(process, steps=args.train_steps, batch=16, size=args.size,
                             net=GRINNet(hidden=32), seed=args.seed)
    print(f"trained {record['parameters']} parameters, {record['steps']} steps in "
          f"{record['seconds']:.0f} s, final loss {record['final_loss']:.4f}")
    torch.set_grad_enabled(False)
    den = grin_denoiser(net, process)
    truth = render_scenes(args.scenes, args.size, seed=args.seed + 10_000)  # held out
    rows, results = [], []
    for k in [int(v) for v in args.points.split(",") if v]:
        uv, d = sparse_points(truth, k, seed=args.seed + k)
        preds = {"nearest": interpolate(uv, d, args.size, "nearest"),
                 "linear": interpolate(uv, d, args.size, "linear")}
        ts = time.perf_counter()
        preds["GRIN (trained)"] = predict_depth(den, uv, d, args.size, samples=args.samples,
                                                steps=args.steps, seed=args.seed)[0]
        seconds = time.perf_counter() - ts
        for name, pred in preds.items():
            err = depth_errors(pred, truth)
            results.append({"points": k, "method": name, **err})
            rows.append([k, name, err["abs_rel"], err["rmse"]])
        print(f"{k} points: GRIN sampling {seconds:.1f} s")
    table = format_table(["points", "method", "abs rel", "RMSE (m)"], rows)
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"train": record, "size": args.size, "scenes": args.scenes, "samples": args.samples,
            "steps": args.steps, "seed": args.seed, "rows": results, "table": table}

"""``reverie bench depth``: GRIN in miniature -- metric depth maps from sparse points.

Trains :class:`reverie.depth.GRINNet` on rendered floor / wall / box scenes (a few minutes
on one CPU thread: 272 s on the shared machine; nothing is bundled), then on held-out scenes
(another seed) with 8, 16 and 32 sparse metric points compares the model's per-pixel mean
depth with nearest-neighbour and linear interpolation of the points: abs rel and RMSE in
metres against the exact rendered depth (docs/depth.md).

Part ``onestep`` (Garcia Martin et al. 2025, :mod:`reverie.depth.onestep`): trains the
image-conditional :class:`~reverie.depth.onestep.ConcatNet` on rendered photos and depth, then
on held-out scenes compares Marigold's multi-step ensembles, the one-step DDIM pipeline with
``leading`` (broken) and ``trailing`` (fixed) spacing, the deterministic one-step estimate at
``t_max`` and that estimate fine-tuned end to end with the task loss: errors and model calls.
``--parts grin`` or ``--parts onestep`` runs one part.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor

from reverie.bench.common import format_table, machine
from reverie.depth import (
    GRINNet,
    LogDepth,
    depth_errors,
    grin_denoiser,
    interpolate,
    predict_depth,
    render_scenes,
    sparse_points,
    train_grin,
)
from reverie.depth.onestep import (
    ConcatNet,
    affine_align,
    conditional_denoiser,
    ensemble,
    finetune_one_step,
    fixed_pipeline,
    one_step,
    photo_dataset,
    ssi_l1,
    train_conditional,
)
from reverie.process import VP, VPLinear


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=1200, help="Adam steps (default 1200)")
    parser.add_argument("--size", type=int, default=12, help="depth map side (default 12)")
    parser.add_argument("--scenes", type=int, default=64, help="held-out scenes (default 64)")
    parser.add_argument("--points", default="8,16,32", help="sparse points per scene")
    parser.add_argument("--samples", type=int, default=4, help="samples per scene (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="dpmpp_2m steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="grin,onestep", help="grin, onestep (default both)")
    parser.add_argument("--onestep-train-steps", type=int, default=3000,
                        help="diffusion training steps of the image-conditional model")
    parser.add_argument("--onestep-size", type=int, default=16, help="photo side (default 16)")
    parser.add_argument("--finetune-steps", type=int, default=300,
                        help="end-to-end fine-tuning steps (default 300)")
    parser.add_argument("--members", type=int, default=4, help="ensemble members (default 4)")
    parser.add_argument("--ensemble-steps", type=int, default=10,
                        help="DDIM steps per ensemble member (default 10)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"grin", "onestep"}
    if unknown or not parts:
        raise ValueError(f"--parts takes grin and/or onestep, got {args.parts!r}")
    out: dict[str, Any] = {"seed": args.seed}
    if "grin" in parts:
        out.update(run_grin(args))
    if "onestep" in parts:
        out["onestep"] = run_onestep(args)
    return out


def run_grin(args: argparse.Namespace) -> dict[str, Any]:
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


def _task_errors(x: Tensor, target: Tensor) -> dict[str, float]:
    """Metric errors of encoded maps ``x`` (decoded to metres), the affine-invariant ones
    (``x`` aligned per map to ``target`` by least squares in the encoded log-depth, as the
    SSI loss aligns) and the SSI L1 itself."""
    enc = LogDepth()
    truth, aligned = enc.decode(target.double()), affine_align(x.double(), target.double())
    return {**depth_errors(enc.decode(x.double()), truth),
            "abs_rel_aligned": depth_errors(enc.decode(aligned), truth)["abs_rel"],
            "ssi_l1": float(ssi_l1(x.double(), target.double()))}


def run_onestep(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(True)  # the grin part turns it off
    torch.manual_seed(args.seed)
    process, size = VP.scaled_linear(), args.onestep_size
    net, record = train_conditional(process, steps=args.onestep_train_steps, batch=32,
                                    size=size, net=ConcatNet(), seed=args.seed)
    print(f"image-conditional model: {record['parameters']} parameters, {record['steps']} "
          f"steps in {record['seconds']:.0f} s, final loss {record['final_loss']:.4f}")
    tuned = {}
    for loss in ("l1", "ssi"):
        tuned[loss], rec = finetune_one_step(net, process, steps=args.finetune_steps, size=size,
                                             loss=loss, seed=args.seed + 1)
        print(f"end-to-end fine-tuning ({loss}): {rec['steps']} steps in {rec['seconds']:.0f} s,"
              f" loss {rec['first_loss']:.4f} -> {rec['final_loss']:.4f}")
    images, target = photo_dataset(args.scenes, size, seed=args.seed + 10_000)  # held out
    train_mean = photo_dataset(4096, size, seed=args.seed)[1].mean(0)
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.members, args.scenes, size, size, generator=gen,
                        dtype=torch.float64)
    den, cond, m, k = conditional_denoiser(net, process), {"image": images}, args.members, \
        args.ensemble_steps
    methods = [
        ("mean training depth map (no image)", 0, lambda: train_mean.expand_as(target)),
        (f"ensemble {m} x {k} DDIM steps, leading (Marigold)", m * k,
         lambda: ensemble(den, noise, k, "leading", cond=cond)),
        (f"ensemble {m} x {k} DDIM steps, trailing", m * k,
         lambda: ensemble(den, noise, k, "trailing", cond=cond)),
        ("1 DDIM step, leading (the bug: noise at t_min)", 1,
         lambda: fixed_pipeline(den, noise[0], 1, "leading", cond=cond)),
        ("1 DDIM step, trailing (the fix), from noise", 1,
         lambda: fixed_pipeline(den, noise[0], 1, "trailing", cond=cond)),
        ("one step at t_max from zeros (deterministic)", 1,
         lambda: one_step(den, target.shape, image=images)),
        ("+ end-to-end fine-tuned, L1 loss", 1,
         lambda: one_step(conditional_denoiser(tuned["l1"], process), target.shape,
                          image=images)),
        ("+ end-to-end fine-tuned, SSI loss", 1,
         lambda: one_step(conditional_denoiser(tuned["ssi"], process), target.shape,
                          image=images)),
    ]
    rows, results = [], []
    with torch.no_grad():
        for name, calls, fn in methods:
            ts = time.perf_counter()
            x = fn()
            seconds = time.perf_counter() - ts
            err = _task_errors(x, target)
            results.append({"method": name, "calls": calls, **err, "seconds": seconds})
            rows.append([name, calls, err["abs_rel"], err["rmse"], err["abs_rel_aligned"],
                         err["ssi_l1"], seconds])
    table = format_table(["method", "calls", "abs rel", "RMSE (m)", "abs rel (aligned)",
                          "SSI L1", "seconds"], rows)
    print(table)
    return {"train": record, "finetune_steps": args.finetune_steps, "size": size,
            "scenes": args.scenes, "members": m, "ensemble_steps": k, "rows": results,
            "table": table}

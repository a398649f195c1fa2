"""``reverie bench sparsectrl``: SparseCtrl in miniature -- keyframe controls for a frozen video
model, against the exact law of the clip given the keyframes.

Trains the sparse condition encoder of :mod:`reverie.video` over the frozen exact prior of a
moving-pattern video (8 frames x 6 pixels), then for held-out clips and 1-3 noisy keyframes
compares, against the exact conditional law: the frozen model alone (unconditioned), the trained
encoder, the closed-form best encoder (its limit N(E[x0|y], S)), and posterior samplers with the
exact prior (DPS, PiGDM, DDRM from :mod:`reverie.inverse`). Reports the RMS error of the sample
mean and the Gaussian W2 distance divided by sqrt(tr cov) (docs/video.md).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.inverse import solve
from reverie.inverse.operators import MatrixOperator
from reverie.process import EDM
from reverie.samplers import sample
from reverie.timeseries.metrics import gaussian_errors
from reverie.video import (
    MovingVideo,
    best_encoder,
    controls,
    sparsectrl_denoiser,
    train_sparse_encoder,
)

_MASKS = {1: [3], 2: [0, 5], 3: [0, 3, 7]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=1500, help="Adam steps (default 1500)")
    parser.add_argument("--samples", type=int, default=2000, help="samples per control")
    parser.add_argument("--clips", type=int, default=3, help="held-out clips per mask")
    parser.add_argument("--steps", type=int, default=20, help="heun / posterior steps")
    parser.add_argument("--noise", type=float, default=0.05, help="keyframe noise std")
    parser.add_argument("--seed", type=int, default=0)


def _methods(video, process, enc, prior_den, mask, kf, law, args, gen) -> dict[str, Any]:
    """The samplers compared, as thunks returning ``[n, dim]`` samples for one control."""
    n = args.samples

    def heun(encoder, cond):
        noise = torch.randn(n, video.frames, video.pixels, generator=gen, dtype=torch.float64)
        den = sparsectrl_denoiser(video, encoder, process)
        return sample(den, noise, "heun", args.steps // 2, cond=cond).reshape(n, -1)

    def posterior(meth):
        return solve(prior_den, MatrixOperator(video.observation(mask)), kf.reshape(-1),
                     args.noise, meth, steps=args.steps, n=n, generator=gen,
                     shape=(video.dim,)).reshape(n, -1)

    none = {"cond": torch.zeros(n, video.frames, video.pixels, dtype=torch.float64),
            "mask": torch.zeros(n, video.frames, dtype=torch.bool)}
    ctrl = controls(video, mask, kf, n)
    draws = {"unconditioned": lambda: heun(enc, none),
             "SparseCtrl (trained)": lambda: heun(enc, ctrl),
             "best encoder (closed form)": lambda: heun(
                 best_encoder(video, mask, kf, args.noise), ctrl)}
    for meth in ("dps", "pigdm", "ddrm"):
        draws[f"{meth} (exact prior)"] = lambda meth=meth: posterior(meth)
    draws["exact"] = lambda: law.sample(n, gen)
    return draws


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    video, process, n = MovingVideo(), EDM(sigma_data=1.0), args.samples
    enc, record = train_sparse_encoder(video, process, steps=args.train_steps,
                                       noise_std=args.noise, seed=args.seed)
    print(f"trained {record['parameters']} parameters, {record['steps']} steps in "
          f"{record['seconds']:.0f} s, final loss {record['final_loss']:.4f}")
    gen = torch.Generator().manual_seed(args.seed + 10_000)  # held-out clips
    prior_den = video.prior.denoiser(process)
    acc: dict[tuple[int, str], list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}

    for k, frames in _MASKS.items():
        mask = torch.zeros(video.frames, dtype=torch.bool)
        mask[frames] = True
        for _ in range(args.clips):
            kf = video.sample(1, gen)[0][mask]
            kf = kf + args.noise * torch.randn(kf.shape, generator=gen, dtype=torch.float64)
            law = video.conditional(mask, kf, args.noise)
            draws = _methods(video, process, enc, prior_den, mask, kf, law, args, gen)
            for name, draw in draws.items():
                ts = time.perf_counter()
                x = draw()
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - ts
                acc.setdefault((k, name), []).append(
                    gaussian_errors(x, law.means[0], law.covariances[0]))
    rows, results = [], []
    for (k, name), errs in acc.items():
        mean_err = sum(e["mean_err"] for e in errs) / len(errs)
        w2 = sum(e["w2"] for e in errs) / len(errs)
        results.append({"keyframes": k, "method": name, "mean_err": mean_err, "w2": w2})
        rows.append([k, name, mean_err, w2])
    table = format_table(["keyframes", "method", "mean RMSE", "W2 / sqrt(tr cov)"], rows)
    print(table)
    print({name: round(s, 2) for name, s in seconds.items()}, "s in all")
    print(machine())
    return {"train": record, "samples": n, "clips": args.clips, "steps": args.steps,
            "noise": args.noise, "seed": args.seed, "rows": results, "table": table}

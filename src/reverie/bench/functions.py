"""``reverie bench functions``: Neural Diffusion Processes on Gaussian-process data.

Two tables, both against the exact GP law (docs/functions.md):

1. conditional sampling (NDP Alg. 2, RePaint-style, :func:`reverie.functions.condition`) by
   number of observed points: the mean / covariance errors of the samples at 12 target points
   against the exact GP posterior, with the exact GP denoiser and with the trained NDP
   (``src/reverie/models/ndp-gp``), and plain replacement (``resample = 1``) as the baseline;
2. resolution-free sampling (FDP's claim): unconditional samples on grids of 8 to 64 points
   (the network saw 8-16 random points) against the GP prior there.

``--plot`` draws conditional samples with the exact posterior band and the Grad-TTS tone
example (:mod:`reverie.gradtts`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.functions import condition, gaussian_errors, load_ndp
from reverie.samplers import sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=400, help="samples per row (default 400)")
    parser.add_argument("--draws", type=int, default=2,
                        help="observed functions per row, errors averaged (default 2)")
    parser.add_argument("--observed", default="2,4,8", help="observed points per row")
    parser.add_argument("--grids", default="8,16,32,64", help="grid sizes of table 2")
    parser.add_argument("--steps", type=int, default=50, help="conditional steps (default 50)")
    parser.add_argument("--resample", type=int, default=3,
                        help="RePaint resamplings per step (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="draw conditional samples and the tone example (e.g. "
                             "docs/functions.png)")


def _mean_errors(errs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(e[k] for e in errs) / len(errs) for k in ("mean", "cov")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    net, gp = load_ndp()
    exact = gp.denoiser(net.process)
    targets = torch.linspace(-0.95, 0.95, 12, dtype=torch.float64)
    rows, results, kept = [], [], {}
    for m in [int(v) for v in args.observed.split(",") if v]:
        for label, den, resample in [("exact", exact, args.resample), ("exact", exact, 1),
                                     ("NDP (trained)", net, args.resample)]:
            errs, ts = [], time.perf_counter()
            for d in range(args.draws):
                g = torch.Generator().manual_seed(args.seed + 1000 * m + d)
                x_obs = gp.locations(1, m, g)[0]
                y_obs = gp.sample(x_obs, 1, g)[0]
                mean, cov = gp.posterior(x_obs, y_obs, targets)
                s = condition(den, x_obs, y_obs, targets, n=args.n, steps=args.steps,
                              resample=resample, generator=g)
                errs.append(gaussian_errors(s, mean, cov))
                if d == 0 and m == 4 and resample == args.resample:
                    kept[label] = (x_obs, y_obs, s)
            err = _mean_errors(errs)
            res = {"table": "conditional", "observed": m, "denoiser": label,
                   "resample": resample, **err, "seconds": round(time.perf_counter() - ts, 1)}
            results.append(res)
            rows.append([m, label, resample, err["mean"], err["cov"], res["seconds"]])
    floor = _mean_errors([gaussian_errors(torch.distributions.MultivariateNormal(
        torch.zeros(12, dtype=torch.float64), gp.cov(targets)).sample((args.n,)),
        torch.zeros(12), gp.cov(targets)) for _ in range(5)])
    table1 = format_table(["observed", "denoiser", "resample", "mean error", "cov error",
                           "seconds"], rows)
    print(table1)
    print(f"\nMonte-Carlo floor at n = {args.n}: mean {floor['mean']:.3f}, cov "
          f"{floor['cov']:.3f}; {args.steps} ddpm steps")

    rows2 = []
    for size in [int(v) for v in args.grids.split(",") if v]:
        grid = torch.linspace(-1, 1, size, dtype=torch.float64)
        g = torch.Generator().manual_seed(args.seed + size)
        noise = torch.randn(args.n, size, generator=g, dtype=torch.float64)
        for label, den in [("exact", exact), ("NDP (trained)", net)]:
            ts = time.perf_counter()
            s = sample(den, noise, "dpmpp_2m", 20, cond={"locations": grid})
            err = gaussian_errors(s, torch.zeros(size), gp.cov(grid))
            results.append({"table": "resolution", "points": size, "denoiser": label, **err,
                            "seconds": round(time.perf_counter() - ts, 1)})
            rows2.append([size, label, err["mean"], err["cov"], results[-1]["seconds"]])
    table2 = format_table(["grid points", "denoiser", "mean error", "cov error", "seconds"],
                          rows2)
    print()
    print(table2)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    if args.plot:
        _plot(kept, gp, targets, args.plot)
        print(f"wrote {args.plot}")
    return {"n": args.n, "draws": args.draws, "steps": args.steps, "resample": args.resample,
            "seed": args.seed, "floor": floor, "gp": repr(gp), "rows": results,
            "table": table1 + "\n\n" + table2}


def _plot(kept: dict, gp: Any, targets: torch.Tensor, path: str) -> None:
    from reverie.gradtts import GradTTS, align_means, frame_residual
    from reverie.plot import _figure, save_figure

    fig = _figure(12, 3.4)
    dense = torch.linspace(-1, 1, 200, dtype=torch.float64)
    for k, (label, (x_obs, y_obs, s)) in enumerate(kept.items()):
        ax = fig.add_subplot(1, 3, k + 1)
        mean, cov = gp.posterior(x_obs, y_obs, dense)
        sd = torch.diagonal(cov).sqrt()
        ax.fill_between(dense, mean - 2 * sd, mean + 2 * sd, color="0.85",
                        label="exact posterior +-2 sd")
        ax.plot(dense, mean, color="0.4")
        for row in s[:6]:
            ax.plot(targets, row, ".-", lw=0.6, ms=3, alpha=0.8)
        ax.plot(x_obs, y_obs, "kx", ms=8, mew=2, label="observed")
        ax.set_title(f"{label} denoiser, RePaint conditioning", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    proc = GradTTS()
    pitches, durations = [4, 7, 5, 9, 6], [6, 4, 8, 5, 7]
    mu = align_means(pitches, durations)
    x = proc.sample(proc.exact_denoiser(frame_residual()), mu, "dpmpp_2m", 20,
                    generator=torch.Generator().manual_seed(0))
    ax = fig.add_subplot(1, 3, 3)
    ax.imshow(torch.cat([mu, torch.full((1, mu.shape[1]), float("nan")), x]).T.numpy(),
              origin="lower", aspect="auto", cmap="magma")
    ax.set_title("Grad-TTS tones: mu (aligner) | sample", fontsize=9)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel bin")
    fig.subplots_adjust(wspace=0.28, left=0.05, right=0.99, bottom=0.14)
    save_figure(fig, path)

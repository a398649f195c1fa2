"""``reverie bench timeseries``: TSDiff (Kollovieh et al. 2023) against the exact law.

On seasonal Gaussian-process series (:class:`reverie.timeseries.SeasonalGP`, 48 steps) the
law of a forecast window or of missing values given the observed ones is a closed-form
Gaussian. For two tasks (``forecast``: the last 12 steps from the 36 before; ``impute``: 12
random missing steps) and two denoisers (the exact one and the bundled ``seasonal`` model),
the table reports the distance of each method's samples of the unobserved entries to that
exact conditional:

* TSDiff observation self-guidance (``self_guidance``, MSE likelihood; its scale chosen
  from ``--scales`` on the selection problem (seed ``--seed``) and reported on the others;
  the quantile likelihood at the same scale);
* reverie's posterior samplers on the noiseless inpainting operator with their defaults
  (DPS, PiGDM, DDRM, MCGdiff);
* the unguided model (prior samples: what guidance must improve on);
* for forecasting, the base forecasters seasonal-naive and linear (point forecasts) and the
  seasonal-naive forecast refined by TSDiff's refinement (maximum likelihood, Langevin).

Columns: ``mean err`` (RMS error of the sample mean, data units), ``cov err`` (relative
Frobenius error of the sample covariance), ``W2`` (Gaussian 2-Wasserstein distance over
``sqrt(tr cov)``), ``CRPS/opt`` (expected CRPS when the truth is drawn from the exact law,
over the exact law's own CRPS: 1 is the floor), ``obs err`` (mean |x - y| on the observed
entries). The ``exact samples`` row is the sampling floor at this sample size.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor

TASKS = ("forecast", "impute")
INVERSE = ("dps", "pigdm", "ddrm", "mcg_diff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small run: 2 problems, 200 samples, exact denoiser only")
    parser.add_argument("--problems", type=int, default=4,
                        help="problems (series drawn from the law); the first selects the scale")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200,
                        help="steps of every sampler (self-guidance's default: 200)")
    parser.add_argument("--scales", type=str, default="1,2,4,8",
                        help="self-guidance scales to select from on the first problem")
    parser.add_argument("--refine-iterations", type=int, default=200,
                        help="iterations of the refinement step (ML and Langevin)")
    parser.add_argument("--model", type=str, default="seasonal",
                        help="the trained model ('none' for the exact denoiser only)")
    parser.add_argument("--plot", type=str, default=None,
                        help="write the forecast fan vs the exact quantiles (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)


def _problem(law, task: str, seed: int) -> tuple[Tensor, Tensor]:
    """``(series, mask)``: a series drawn from the law and its observed entries."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    truth = law.sample(1, gen)[0]
    if task == "forecast":
        from reverie.timeseries import forecast_mask

        return truth, forecast_mask(law.length, 12)
    mask = torch.ones(law.length, dtype=torch.bool)
    mask[torch.randperm(law.length, generator=gen)[:12]] = False
    return truth, mask


def _scores(x: Tensor, truth: Tensor, mask: Tensor, cond) -> dict[str, float]:
    from reverie.timeseries import crps_gaussian, gaussian_errors

    free = ~mask
    m, c = cond.means[0][free], cond.covariances[0][free][:, free]
    sd = torch.diagonal(c).sqrt()
    x = x.to(torch.float64)
    out = gaussian_errors(x[:, free], m, c)
    out["crps"] = crps_gaussian(x[:, free], m, sd) / float(sd.mean() / torch.pi**0.5)
    out["obs_err"] = float((x[:, mask] - truth[mask]).abs().mean())
    return out


def _point(f: Tensor, truth: Tensor, mask: Tensor, cond) -> dict[str, float]:
    """Scores of a point forecast ``[L]`` (a degenerate law: no covariance)."""
    from reverie.timeseries import crps_gaussian

    free = ~mask
    m, c = cond.means[0][free], cond.covariances[0][free][:, free]
    sd = torch.diagonal(c).sqrt()
    f = f.to(torch.float64)
    return {"mean_err": float(((f[free] - m) ** 2).mean().sqrt()), "cov_err": float("nan"),
            "w2": float("nan"), "mean_z": float("nan"),
            "crps": crps_gaussian(f[free][None].repeat(2, 1), m, sd)
            / float(sd.mean() / torch.pi**0.5),
            "obs_err": float((f[mask] - truth[mask]).abs().mean())}


def _methods(den, truth: Tensor, mask: Tensor, args, scale: float, task: str, law,
             gen_seed: int) -> dict[str, dict[str, float] | Tensor]:
    """Samples ``[n, L]`` (or a point forecast ``[L]``) of every method on one problem."""
    from reverie.inverse import Inpainting, solve
    from reverie.samplers import sample
    from reverie.timeseries import impute, refine, seasonal_naive
    from reverie.timeseries.tsdiff import linear_forecast

    n, steps = args.samples, args.steps
    out: dict[str, Any] = {}

    def g(k: int) -> torch.Generator:
        return torch.Generator().manual_seed(gen_seed * 100 + k)

    out[f"self_guidance mse (scale {scale:g})"] = impute(
        den, truth, mask, n, scale=scale, steps=steps, generator=g(1))
    out[f"self_guidance quantile (scale {scale:g})"] = impute(
        den, truth, mask, n, scale=scale, likelihood="quantile", steps=steps, generator=g(2))
    for name in INVERSE:
        out[f"inverse {name}"] = solve(den, Inpainting(mask), truth[mask].float(), 0.0,
                                       method=name, steps=steps, n=n, generator=g(3))
    out["unguided (prior)"] = sample(den, torch.randn(n, law.length, generator=g(4)),
                                     sampler="euler_ancestral", steps=steps, generator=g(5))
    if task == "forecast":
        ctx = truth[mask].float()
        h = int((~mask).sum())
        naive = torch.cat([ctx, seasonal_naive(ctx, h, 12)])
        out["seasonal naive"] = naive
        out["linear AR(12)"] = torch.cat([ctx, linear_forecast(ctx, h)])
        init = naive[None].repeat(n, 1)
        out["naive + refine ml"] = refine(den, init, truth.float(), mask, method="ml",
                                          scale=10.0, step_size=0.02,
                                          iterations=args.refine_iterations,
                                          generator=g(6))
        out["naive + refine langevin"] = refine(den, init, truth.float(), mask,
                                                method="langevin", scale=10.0,
                                                step_size=0.01, iterations=args.refine_iterations,
                                                generator=g(7))
    return out


def _select(den, law, task: str, args, scales: list[float]) -> tuple[float, dict[float, float]]:
    """The self-guidance scale with the smallest W2 on the selection problem."""
    from reverie.timeseries import impute

    truth, mask = _problem(law, task, args.seed)
    cond = law.conditional(truth, mask)
    w2 = {}
    for s in scales:
        x = impute(den, truth, mask, args.samples, scale=s, steps=args.steps,
                   generator=torch.Generator().manual_seed(args.seed))
        w2[s] = _scores(x, truth, mask, cond)["w2"]
    return min(w2, key=lambda s: w2[s]), w2


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.bench.common import format_table
    from reverie.process import EDM
    from reverie.timeseries import SeasonalGP

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    if args.quick:
        args.problems, args.samples, args.model = 2, 200, "none"
    if args.problems < 2:
        raise ValueError(f"--problems must be at least 2 (one selects, the others report), got "
                         f"{args.problems}")
    scales = [float(s) for s in args.scales.split(",")]
    law = SeasonalGP()
    dens: dict[str, Any] = {}
    if args.model != "none":
        from reverie.hub import load

        model = load(args.model)
        dens["model"] = model.denoiser
        proc = model.process
    else:
        proc = EDM(sigma_data=1.23)
    dens = {"exact": law.denoiser(proc), **dens}
    result: dict[str, Any] = {"samples": args.samples, "steps": args.steps,
                              "problems": args.problems, "scales": scales, "model": args.model,
                              "process": repr(proc), "rows": []}
    keys = ("mean_err", "cov_err", "w2", "crps", "obs_err")
    table = []
    for task in TASKS:
        for dname, den in dens.items():
            scale, sel = _select(den, law, task, args, scales)
            result.setdefault("selection", {})[f"{task}/{dname}"] = {"chosen": scale, "w2": sel}
            acc: dict[str, list[dict[str, float]]] = {}
            for p in range(1, args.problems):
                truth, mask = _problem(law, task, args.seed + p)
                cond = law.conditional(truth, mask)
                exact = cond.sample(args.samples, torch.Generator().manual_seed(p))
                acc.setdefault("exact samples", []).append(_scores(exact, truth, mask, cond))
                for name, x in _methods(den, truth, mask, args, scale, task, law, p).items():
                    s = _point(x, truth, mask, cond) if x.ndim == 1 else _scores(
                        x, truth, mask, cond)
                    acc.setdefault(name, []).append(s)
            for name, runs in acc.items():
                if name == "exact samples" and dname != next(iter(dens)):
                    continue
                if dname == "model" and name in ("seasonal naive", "linear AR(12)"):
                    continue
                mean = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
                if "quantile" in name:  # rows are quantile levels, not draws: no covariance
                    mean["cov_err"] = mean["w2"] = float("nan")
                row = {"task": task, "denoiser": "-" if name in (
                    "exact samples", "seasonal naive", "linear AR(12)") else dname,
                       "method": name, **mean}
                result["rows"].append(row)
                table.append([task, row["denoiser"], name, *(mean[k] for k in keys)])
    print(f"TSDiff on SeasonalGP (48 steps, period 12): {args.samples} samples, {args.steps} "
          f"steps, means over problems 2..{args.problems} (problem 1 selects the scale)")
    print(format_table(["task", "denoiser", "method", "mean err", "cov err", "W2", "CRPS/opt",
                        "obs err"], table))
    for k, v in result["selection"].items():
        print(f"selected scale {k}: {v['chosen']:g} (W2 on problem 1: "
              + ", ".join(f"{s:g}: {w:.3f}" for s, w in v["w2"].items()) + ")")
    if args.plot:
        den = dens.get("model", dens["exact"])
        _plot(den, law, args, result["selection"][
            f"forecast/{'model' if 'model' in dens else 'exact'}"]["chosen"])
        result["plot"] = args.plot
    result["seconds"] = time.perf_counter() - t0
    return result


def _plot(den, law, args, scale: float) -> None:
    """Forecast fan (5-95% and 25-75% of the self-guided samples) vs the exact quantiles."""
    from reverie.plot import _figure, save_figure
    from reverie.timeseries import impute

    truth, mask = _problem(law, "forecast", args.seed + 1)
    cond = law.conditional(truth, mask)
    x = impute(den, truth, mask, args.samples, scale=scale, steps=args.steps,
               generator=torch.Generator().manual_seed(1)).double()
    t = torch.arange(law.length)
    fig = _figure(8, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    free = ~mask
    tf = t[free].numpy()
    q = torch.quantile(x[:, free], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95],
                                                dtype=torch.float64), dim=0).numpy()
    ax.fill_between(tf, q[0], q[4], color="tab:blue", alpha=0.2, label="TSDiff 5-95%")
    ax.fill_between(tf, q[1], q[3], color="tab:blue", alpha=0.35, label="TSDiff 25-75%")
    ax.plot(tf, q[2], color="tab:blue", lw=1.5, label="TSDiff median")
    m, sd = cond.means[0][free], torch.diagonal(cond.covariances[0])[free].sqrt()
    for z, style in ((1.6449, ":"), (0.6745, "--")):
        ax.plot(tf, (m + z * sd).numpy(), "k" + style, lw=1)
        ax.plot(tf, (m - z * sd).numpy(), "k" + style, lw=1)
    ax.plot(tf, m.numpy(), "k-", lw=1, label="exact mean, 25/75% (--), 5/95% (:)")
    ax.plot(t[mask].numpy(), truth[mask].numpy(), "k.", ms=4, label="context")
    ax.plot(tf, truth[free].numpy(), "x", color="tab:red", ms=4, label="truth")
    ax.set_xlabel("time step")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_title(f"self-guided forecast ({args.model}, scale {scale:g}) vs the exact "
                 "conditional law", fontsize=9)
    save_figure(fig, args.plot)

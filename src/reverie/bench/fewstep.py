"""``reverie bench fewstep``: Protenix-Mini's two-step ODE setting of AlphaFold 3's EDM
sampler (:mod:`reverie.af3`) on exact Gaussian mixtures, against AF3's own stochastic setting
and reverie's default schedules, at 2 / 5 / 10 steps.

Each method draws ``--n`` samples from the exact denoiser of a random 8-D mixture
(:func:`reverie.bench.samplers.random_mixture`, held-out seeds 2000-2004, nothing chosen on
them); the score is the sliced 2-Wasserstein distance (128 directions) to exact samples,
beside the two-sample floor. The data scale ``sigma_data`` is the mixture's RMS standard
deviation. Rows (docs/fewstep.md):

* ``protenix-mini ODE``: :data:`reverie.af3.PROTENIX_MINI` (gamma0 0, lambda 1, eta 1) on
  AF3's schedule (160 -> 4e-4 sigma_data, rho 7);
* ``AF3 default``: :data:`reverie.af3.AF3_DEFAULT` (gamma0 0.8, lambda 1.003, eta 1.5), same
  schedule, fewer steps than its 200;
* ``euler / heun / dpmpp_2m (reverie default grid)``: reverie's samplers with their default
  grid on an EDM process (Karras grid, sigma 80 -> 0.002; Heun costs 2 steps - 1 NFE).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.af3 import AF3_DEFAULT, PROTENIX_MINI, af3_sample, af3_schedule
from reverie.bench.common import format_table, machine
from reverie.bench.samplers import random_mixture
from reverie.metrics import sliced_wasserstein
from reverie.process import EDM, VE
from reverie.samplers import sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4000, help="samples per method (default 4000)")
    parser.add_argument("--steps", default="2,5,10", help="step counts (default 2,5,10)")
    parser.add_argument("--mixtures", type=int, nargs="+", default=[2000, 2001, 2002, 2003, 2004])
    parser.add_argument("--seed", type=int, default=0)


def _af3(setting: dict) -> dict:
    return {k: v for k, v in setting.items() if k != "steps"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    steps_list = [int(v) for v in args.steps.split(",") if v]
    results, sums = [], {}
    for seed in args.mixtures:
        gm = random_mixture(seed, 8)
        sd = float(gm.covariance().diagonal().mean().sqrt())
        ve = VE(sigma_min=1e-5 * sd, sigma_max=400 * sd)  # AF3 churn lifts 160 sd to 288 sd
        edm = EDM(sigma_data=sd)
        g = torch.Generator().manual_seed(args.seed + seed)
        ref = gm.sample(args.n, g)
        proj = torch.Generator().manual_seed(7)
        floor = sliced_wasserstein(gm.sample(args.n, g), ref, 128, proj)
        noise = torch.randn(args.n, 8, generator=g, dtype=torch.float64)
        for steps in steps_list:
            sched = af3_schedule(steps, sigma_data=sd)
            outs = {
                "protenix-mini ODE": (af3_sample(gm.denoiser(ve), noise, sched, sigma_data=sd,
                                                 **_af3(PROTENIX_MINI)), steps),
                "AF3 default": (af3_sample(gm.denoiser(ve), noise, sched, sigma_data=sd,
                                           generator=g, **_af3(AF3_DEFAULT)), steps),
            }
            for name in ("euler", "heun", "dpmpp_2m"):
                outs[f"{name} (reverie default grid)"] = (
                    sample(gm.denoiser(edm), noise, name, steps),
                    2 * steps - 1 if name == "heun" else steps)
            for name, (x, nfe) in outs.items():
                sw = sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(7))
                results.append({"mixture": seed, "steps": steps, "nfe": nfe, "method": name,
                                "sw2": sw, "floor": floor})
                sums.setdefault((steps, name, nfe), []).append(sw / floor)
    summary = [{"steps": steps, "method": name, "nfe": nfe, "sw2_over_floor": sum(v) / len(v)}
               for (steps, name, nfe), v in sums.items()]
    table = format_table(["steps", "method", "NFE", "sliced W2 / floor (mean over mixtures)"],
                         [list(r.values()) for r in summary])
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"n": args.n, "mixtures": args.mixtures, "seed": args.seed, "summary": summary,
            "rows": results,
            "table": table}

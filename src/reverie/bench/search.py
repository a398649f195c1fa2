"""Inference-time search: distance to the exact tilted target and reward against NFE budget.

Part 1 (exact): a 2-D Gaussian mixture under a rectified flow with its exact denoiser and a
linear reward, so ``p(x) exp(r(x) / T)`` is an exact mixture. For every method and budget
(``particles`` x NFE of one 20-step trajectory) it reports the sliced Wasserstein distance of
the returned samples to exact samples of the tilted target, and their mean reward against the
exact one. Targets: at equal NFE, FK/SMC steering and DTS reach at most half of best-of-N's
distance from 8 particles up; DTS* reaches best-of-N's mean reward with at most a third of
its NFE. Rows also compare DSearch with the beam and its own constant-width beam, and Kim et
al.'s interpolant conversion (the flow run as a VP model) with the flow SDE at equal NFE.

Part 2 (digits, when the bundled digits model is available): the digits model steered by the
digit classifier's log-probability of one class; mean reward and class accuracy (by an
independent SVM) against NFE, and the peak memory of a 10,000-particle FK run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

import torch

from reverie.search import METHODS, sde_diffusion

_G = sde_diffusion()  # Kim et al.'s g(t) = 3 t^2
#: (row label, method, options) of the exact part.
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("best_of_n", "best_of_n", {}),
    ("fk", "fk", {}),
    ("fk potential=max", "fk", {"potential": "max"}),
    ("fk potential=sum", "fk", {"potential": "sum"}),
    ("fk potential=immediate", "fk", {"potential": "immediate"}),
    ("dts", "dts", {}),
    ("dts backup=sum", "dts", {"backup": "sum"}),
    ("dts selection=uniform", "dts", {"selection": "uniform"}),
    ("dts selection=uniform backup=sum", "dts", {"selection": "uniform", "backup": "sum"}),
    ("dts_star", "dts_star", {}),
    ("dts_star backup=mean", "dts_star", {"backup": "mean"}),
    ("paths", "paths", {}),
    ("zero_order", "zero_order", {}),
    ("beam", "beam", {}),
    ("dsearch", "dsearch", {}),
    ("dsearch lookahead=1", "dsearch", {"lookahead": 1}),
    ("dsearch constant width", "dsearch", {"oversample": 1, "expand": 1.0}),
    ("rbf", "rbf", {}),
    # Kim et al. (2025)'s interpolant conversion: the flow run as a VP model ("vp": True wraps
    # the denoiser in reverie.denoisers.Converted(., VPLinear())) with their g = 3 t^2 (the rbf
    # default), against the same search on the flow's SDE; and the reverse SDEs of each
    # process's own forward diffusion, which say how much of a difference is the noise level
    ("rbf vp-sde", "rbf", {"vp": True}),
    ("rbf vp-sde grid=uniform", "rbf", {"vp": True, "grid": "uniform"}),  # the paper's times
    ("rbf vp-sde diffusion=vp", "rbf", {"vp": True, "sampler_options": {"diffusion": None}}),
    ("rbf diffusion=flow", "rbf", {"sampler_options": {"diffusion": None}}),
    ("beam sde", "beam", {"sampler": "euler_maruyama", "sampler_options": {"diffusion": _G}}),
    ("beam vp-sde", "beam", {"vp": True, "sampler": "euler_maruyama",
                             "sampler_options": {"diffusion": _G}}),
    ("ditto", "ditto", {}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="samples per (method, budget)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per trajectory")
    parser.add_argument("--particles", default="1,2,4,8,16,32,64",
                        help="budgets, in trajectories per sample (budget = particles x NFE)")
    parser.add_argument("--star-particles", default="1,2,3,4,5,6,8,10,11,16,21,32,43,64",
                        help="the finer budget grid for DTS* (to find a third of best-of-N's NFE; "
                        "5, 10, 21 are the largest budgets within a third of 16, 32, 64)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated row labels to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the exact part makes many small calls)")
    parser.add_argument("--digits", choices=("auto", "yes", "no"), default="auto",
                        help="run the digits part (auto: when the bundled model is available)")
    parser.add_argument("--digits-n", type=int, default=32, help="digit samples per budget")
    parser.add_argument("--digits-particles", default="1,4,16",
                        help="digits budgets, in trajectories per sample")
    parser.add_argument("--memory-steps", type=int, default=5,
                        help="steps of the 10,000-particle FK memory check on the digits model")
    parser.add_argument("--digits-label", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small n and budgets (smoke test)")


def problem():
    """The exact problem: four modes in 2-D, reward 0.75 x + 0.5 y, temperature 1."""
    import reverie
    from reverie.reference import GaussianMixture, TiltedMixture

    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], 0.16,
                          [0.4, 0.2, 0.2, 0.2])
    process = reverie.RectifiedFlow()
    tilt = TiltedMixture(mix, [0.75, 0.5], temperature=1.0)
    return mix, process, mix.denoiser(process), tilt


def run(args: argparse.Namespace) -> dict:
    from reverie.bench.common import Timer, format_table, machine

    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.quick:
            args.n, args.particles, args.star_particles = 300, "1,2,8", "1,2,3,8"
            args.digits_n, args.digits_particles, args.memory_steps = 8, "1,4", 2
        result: dict[str, Any] = {"machine": machine()}
        with Timer() as t:
            result["exact"] = _exact(args)
        result["exact"]["seconds"] = t.seconds
        if args.digits != "no":
            result["digits"] = _digits(args, required=args.digits == "yes")
        print()
        print(format_table(["", ""], [["machine", result["machine"]]]))
        return result
    finally:
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------------------------------------
# Part 1: the exact tilted mixture
# ---------------------------------------------------------------------------------------------


def _exact(args: argparse.Namespace) -> dict:
    from reverie import VPLinear, search
    from reverie.bench.common import format_table
    from reverie.denoisers import Converted
    from reverie.metrics import SlicedWasserstein, mode_weights

    mix, process, den, tilt = problem()
    n, S = args.n, args.steps
    ks = [int(k) for k in args.particles.split(",")]
    star_ks = sorted(set(ks) | {int(k) for k in args.star_particles.split(",")})
    traj = S  # dpmpp_2m, dpmpp_2m_sde and euler_maruyama spend one NFE per step
    wanted = None if args.methods is None else set(args.methods.split(","))
    ref = tilt.sample(max(20 * n, 40000), torch.Generator().manual_seed(10_000 + args.seed))

    sw = SlicedWasserstein(ref, 256, torch.Generator().manual_seed(7))  # projected once

    def tv(x: torch.Tensor) -> float:
        return 0.5 * float((mode_weights(x, tilt.target) - tilt.target.weights).abs().sum())

    floors = [sw(tilt.sample(n, torch.Generator().manual_seed(20_000 + i))) for i in range(3)]
    floor = sum(floors) / len(floors)
    model_sw = sw(mix.sample(n, torch.Generator().manual_seed(30_000)))
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for label, method, opts in VARIANTS:
        if wanted is not None and label not in wanted:
            continue
        rows[label] = {}
        opts = dict(opts)
        model = Converted(den, VPLinear()) if opts.pop("vp", False) else den
        for k in (star_ks if method == "dts_star" else ks):
            budget = k * traj
            start = time.perf_counter()
            try:
                res = search.run(model, tilt.reward, method=method, budget=budget, n=n,
                                 generator=torch.Generator().manual_seed(args.seed * 1000 + k),
                                 shape=(2,), dtype=torch.float64, steps=S, **opts)
            except ValueError as err:  # budget below the method's smallest run
                if "needs a budget" not in str(err):
                    raise
                continue
            secs = time.perf_counter() - start
            rows[label][k] = {
                "budget": budget, "nfe": res.nfe, "sw": sw(res.samples), "tv": tv(res.samples),
                "reward": float(res.rewards.mean()),
                "reward_se": float(res.rewards.std()) / math.sqrt(n), "seconds": secs,
            }
            print(f"  {label:24s} particles={k:3d} NFE={res.nfe:5d} "
                  f"SW={rows[label][k]['sw']:.3f} reward={rows[label][k]['reward']:.3f} "
                  f"({secs:.1f}s)", flush=True)

    exact_reward = tilt.mean_reward()
    print(f"\nExact tilted target: mean reward {exact_reward:.4f}; untilted model "
          f"{tilt.prior_mean_reward():.4f} (SW of exact model samples to the target "
          f"{model_sw:.3f}); SW noise floor of {n} exact target samples: {floor:.3f}\n")
    header = ["method"] + [f"k={k} (NFE {k * traj})" for k in ks]
    print("Sliced Wasserstein distance to the exact tilted target (lower is better):\n")
    print(format_table(header, [[lab] + [_cell(r.get(k), "sw") for k in ks]
                                for lab, r in rows.items()]))
    print(f"\nMean reward (exact tilted target: {exact_reward:.3f}):\n")
    print(format_table(header, [[lab] + [_cell(r.get(k), "reward") for k in ks]
                                for lab, r in rows.items()]))
    bias = _dts_bias(rows, ks, exact_reward)
    print("\nDTS mean-reward bias (mean reward - exact tilted mean reward, ± 1.96 s.e.; the "
          "paper's value-driven Boltzmann growth under-tilts, backup=sum over-tilts, uniform "
          "growth is unbiased):\n")
    print(format_table(header, [[lab] + [("—" if k not in b else f"{b[k][0]:+.3f} ± {b[k][1]:.3f}")
                                          for k in ks] for lab, b in bias.items()]))
    checks = _targets(rows, ks, traj)
    print()
    for line in checks["lines"]:
        print(line)
    return {
        "n": n, "steps": S, "trajectory_nfe": traj, "floor_sw": floor, "model_sw": model_sw,
        "exact_mean_reward": exact_reward, "prior_mean_reward": tilt.prior_mean_reward(),
        "rows": {lab: {str(k): v for k, v in r.items()} for lab, r in rows.items()},
        "targets": checks,
        "dts_reward_bias": {lab: {str(k): v for k, v in b.items()} for lab, b in bias.items()},
    }


def _dts_bias(rows: dict, ks: list[int], exact_reward: float) -> dict:
    """Per DTS row and budget: (mean reward - exact tilted mean reward, 1.96 s.e.). Measures
    the bias of value-driven tree growth at budgets short of the complete tree (docs/search.md,
    "what the paper's algorithm does at finite budgets")."""
    return {
        lab: {k: (r[k]["reward"] - exact_reward, 1.96 * r[k].get("reward_se", math.nan))
              for k in ks if k in r}
        for lab, r in rows.items() if lab.split()[0] == "dts"
    }


def _cell(entry: dict | None, key: str) -> Any:
    return "—" if entry is None else float(entry[key])


def _targets(rows: dict, ks: list[int], traj: int) -> dict:
    """The issue's targets, evaluated on the measured rows."""
    lines, out = [], {}
    bon = rows.get("best_of_n", {})
    for lab in ["fk"] + [lab for lab in rows if lab.split()[0] == "dts"]:
        if lab not in rows:
            continue
        ratios = {k: rows[lab][k]["sw"] / bon[k]["sw"] for k in ks
                  if k >= 8 and k in rows[lab] and k in bon}
        ok = bool(ratios) and all(r <= 0.5 for r in ratios.values())
        out[lab] = {"sw_ratio_to_best_of_n": ratios, "met": ok}
        shown = ", ".join(f"k={k}: {r:.2f}" for k, r in ratios.items())
        lines.append(f"target SW({lab}) <= 0.5 SW(best_of_n) for k >= 8: "
                     f"{'MET' if ok else 'NOT MET'} ({shown})")
    for lab in [lab for lab in rows if lab.split()[0] == "dts_star"]:
        if not bon:
            break
        star = sorted(rows[lab].items())
        fractions = {}
        for k, b in sorted(bon.items()):
            if k < 2:
                continue
            need = [s["budget"] for _, s in star if s["reward"] >= b["reward"]]
            fractions[k] = (min(need) / b["budget"]) if need else math.inf
        ok = bool(fractions) and all(f <= 1 / 3 for f in fractions.values())
        met_from = [k for k in fractions if all(fractions[j] <= 1 / 3 for j in fractions if j >= k)]
        out[lab] = {"nfe_fraction_to_match_best_of_n": fractions, "met": ok,
                    "met_from_best_of": min(met_from) if met_from else None}
        shown = ", ".join(f"k={k}: {f:.2f}" for k, f in fractions.items())
        lines.append(f"target {lab} reaches best_of_n's mean reward with <= 1/3 of its NFE: "
                     f"{'MET' if ok else 'NOT MET'} (NFE fraction needed: {shown}; met from "
                     f"best-of-{min(met_from) if met_from else '-'} up)")
    # paper claims on the mean reward at equal NFE: Kim et al. (2025), the VP-SDE (interpolant
    # conversion) over the linear (flow) SDE; Li et al. (2025), DSearch over best-of-N, the
    # beam and its own constant-width beam
    for lab, base in (("rbf vp-sde", "rbf"), ("beam vp-sde", "beam sde"),
                      ("dsearch", "best_of_n"), ("dsearch", "beam"),
                      ("dsearch", "dsearch constant width")):
        if lab not in rows or base not in rows:
            continue
        z = {k: (rows[lab][k]["reward"] - rows[base][k]["reward"]) / math.hypot(
            rows[lab][k]["reward_se"], rows[base][k]["reward_se"])
             for k in ks if k in rows[lab] and k in rows[base]}
        ok = bool(z) and all(v > 2 for v in z.values())
        out[f"{lab} over {base}"] = {"z_reward": z, "met": ok}
        shown = ", ".join(f"k={k}: {v:+.1f}" for k, v in z.items())
        lines.append(f"claim: {lab} raises the mean reward of {base} at equal NFE by > 2 s.e.: "
                     f"{'MET' if ok else 'NOT MET'} (difference in standard errors: {shown})")
    return {"lines": lines, **out}


# ---------------------------------------------------------------------------------------------
# Part 2: the digits model steered by a digit classifier
# ---------------------------------------------------------------------------------------------


def _digits(args: argparse.Namespace, required: bool) -> dict:
    try:
        from reverie import hub  # noqa: F401
        from reverie.data import load_digits  # noqa: F401
    except ImportError as err:
        if required:
            raise ValueError(f"the digits part needs the bundled digits model: {err}") from None
        print("\n(digits part skipped: the bundled digits model is not available)")
        return {"skipped": "reverie.hub / reverie.data not available"}
    return _digits_run(args)


def _digits_run(args: argparse.Namespace) -> dict:
    from reverie import hub, search
    from reverie.bench.common import format_table
    from reverie.rewards import ClassifierReward, digit_classifier, digit_judge

    model = hub.load("digits")
    label = args.digits_label
    reward = ClassifierReward(digit_classifier(), label)
    judge = digit_judge()
    S = args.steps
    n = args.digits_n
    ks = [int(k) for k in args.digits_particles.split(",")]
    methods = list(METHODS)
    rows: dict[str, dict[int, dict[str, float]]] = {}
    print(f"\nDigits model steered by log p({label} | x) of the digit classifier "
          f"({n} samples per budget, {S} steps):")
    for method in methods:
        rows[method] = {}
        for k in ks:
            start = time.perf_counter()
            try:
                res = search.run(model, reward, method=method, budget=k * S, n=n,
                                 generator=torch.Generator().manual_seed(k), steps=S, chunk=1024)
            except ValueError as err:
                if "needs a budget" not in str(err):
                    raise
                continue
            acc = float((judge(res.samples) == label).double().mean())
            rows[method][k] = {"budget": k * S, "nfe": res.nfe, "reward": float(res.rewards.mean()),
                               "accuracy": acc, "seconds": time.perf_counter() - start}
            print(f"  {method:12s} NFE={res.nfe:5d} reward={rows[method][k]['reward']:.3f} "
                  f"accuracy={acc:.3f}", flush=True)
    # reference: the class-conditional model itself (label bound, no search, no guidance)
    x = model.sample(n, sampler="dpmpp_2m", steps=S, seed=0, labels=label)
    rows["(conditional model, label bound)"] = {1: {
        "budget": S, "nfe": S, "reward": float(reward(x).mean()),
        "accuracy": float((judge(x) == label).double().mean()), "seconds": 0.0}}
    header = ["method"] + [f"NFE {k * S}" for k in ks]
    print("\nMean reward log p(label | x) / class accuracy (independent SVM judge):\n")
    print(format_table(header, [
        [m] + [("—" if k not in r else f"{r[k]['reward']:.2f} / {r[k]['accuracy']:.2f}")
               for k in ks] for m, r in rows.items()]))
    memory = _memory_check(args.memory_steps)
    print(f"\n10,000-particle FK run on the digits model ({args.memory_steps} steps, "
          f"{memory['nfe']} NFE per sample): peak resident memory {memory['peak_rss_mb']:.0f} MB "
          f"(limit 4096 MB; {memory['rss_before_run_mb']:.0f} MB before the run, with torch, "
          f"the model and the classifier loaded), {memory['seconds']:.1f} s")
    return {"label": label, "n": n, "steps": S,
            "rows": {m: {str(k): v for k, v in r.items()} for m, r in rows.items()},
            "memory_10000_particles": memory}


_MEMORY_SCRIPT = """
import json, resource, time, torch
from reverie import hub, search
from reverie.rewards import ClassifierReward, digit_classifier
torch.set_num_threads({threads})
model = hub.load("digits")
reward = ClassifierReward(digit_classifier(), 7)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
res = search.run(model, reward, method="fk", budget=10000 * {steps}, n=1, steps={steps},
                 generator=torch.Generator().manual_seed(0), chunk=2048)
secs = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_rss_mb": peak, "rss_before_run_mb": before, "seconds": secs,
                  "particles": res.info["particles"], "nfe": res.nfe}}))
"""


def _memory_check(steps: int) -> dict:
    """Peak resident memory of a 10,000-particle FK run, in a fresh process."""
    script = _MEMORY_SCRIPT.format(threads=torch.get_num_threads(), steps=steps)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

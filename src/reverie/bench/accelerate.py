"""Acceleration (reverie.accelerate, docs/accelerate.md): training-free step reuse on the bundled
digits U-Net and few-step students distilled from the bundled two-moons model.

Table 1 (digits, class-conditional, labels 0..9, ``--steps`` steps): the plain sampler, DeepCache
(uniform and non-uniform schedules), A-SDM feature inheritance and ParaStep (degree P, batched
on one process), each timed in this process beside the plain run (CPU seconds of this
process, best of ``--repeats`` runs; speed-up = plain / method; the wall-clock ratio beside it,
noisy on a shared machine) and the speed-up predicted from per-call costs (the fastest of 9
alternating full and partial calls, robust to a shared machine's interruptions), with the full /
partial network
calls, the quality of ``reverie bench digits`` (Frechet distance in the judge's feature space
against the held-out test digits, classifier confidence, conditional accuracy) and the largest
change of a sample against the plain run with the same noise.

Table 2 (two-moons): the teacher's DDIM at 1-8 steps, a progressive student (``--pd-base`` to 1
step) and a consistency student (18 points), sliced-W2 to fresh data and to the teacher's own
50-step DPM-Solver++(2M) law, with training seconds.

Table 3 (two-moons): LD-Pruner (paper 2) at ratios 0.25 / 0.5 / 0.75, LD-ranked vs random
channel groups, before / after ``--prune-iters`` fine-tuning: parameters, CPU seconds of a
50-step run, sliced-W2 to the unpruned model's samples.

Table 4 (two-moons, class-conditional): plug-and-play distillation (paper 32) of CFG at
``--pnp-scale``: guides trained at the scale, at half of it and untrained against CFG itself.

Table 5 (a 2-D mixture of four Gaussians, exact law): inductive moment matching (IMM, paper
84) trained from scratch for ``--imm-iters`` iterations, sliced W2 to exact samples at 1, 2, 4,
8 steps against DDIM and DPM-Solver++(2M) with the mixture's *exact* denoiser at the same
network calls, and the noise floor of two exact sample sets.

Table 6 (two-moons): Imagine Flash's backward distillation (paper 65) at 1 and 2 steps,
``--flash-iters`` iterations, trained from noise alone, beside the teacher's DDIM.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from reverie.bench.common import format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=500, help="digits samples per row")
    parser.add_argument("--steps", type=int, default=20, help="steps of every digits row")
    parser.add_argument("--repeats", type=int, default=2, help="timing runs per row (best)")
    parser.add_argument("--pd-iters", type=int, default=300, help="progressive iters per stage")
    parser.add_argument("--pd-base", type=int, default=16, help="progressive base steps")
    parser.add_argument("--cd-iters", type=int, default=1500, help="consistency iterations")
    parser.add_argument("--prune-iters", type=int, default=300, help="LD-Pruner fine-tune iters")
    parser.add_argument("--pnp-iters", type=int, default=500, help="plug-and-play guide iters")
    parser.add_argument("--pnp-scale", type=float, default=3.0, help="CFG scale to distil")
    parser.add_argument("--imm-iters", type=int, default=3000, help="IMM training iterations")
    parser.add_argument("--flash-iters", type=int, default=600,
                        help="Imagine Flash backward-distillation iterations")
    parser.add_argument("--skip", default="",
                        help="comma list of parts to skip: reuse,distill,prune,pnp,imm,flash")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="n=200, 1 timing run, 100/300 distillation iterations")


def _timed(fn, repeats: int) -> tuple[Any, float, float]:
    """``(output, best CPU seconds, best wall seconds)`` of this process over ``repeats`` runs
    (on a shared machine the CPU time is the stable measure; one thread, so CPU <= wall)."""
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - t)
    return out, cpu, wall


def _call_costs(den, net, blocks_mode, x: torch.Tensor, t: float, reps: int = 9) -> tuple[float,
                                                                                     float]:
    """``(full, partial)`` seconds of one denoiser call: alternate full and partial calls of a
    :class:`BlockCache` and keep the fastest of ``reps`` each (the minimum filters out the
    interruptions of a shared machine); ``blocks_mode=None`` times a plain call of ``x``."""
    from reverie.accelerate import BlockCache

    def clock(fn) -> float:
        c = time.process_time()
        fn()
        return time.process_time() - c

    if blocks_mode is None:
        best = min(clock(lambda: den(x, t)) for _ in range(reps))
        return best, best
    full, part = float("inf"), float("inf")
    with BlockCache(net, blocks_mode[0], lambda i: i % 2 == 0, blocks_mode[1]), torch.no_grad():
        for _ in range(reps):
            full = min(full, clock(lambda: den(x, t)))
            part = min(part, clock(lambda: den(x, t)))
    return full, part


def _reuse(args: argparse.Namespace, n: int, repeats: int) -> tuple[str, list[dict]]:
    from reverie.accelerate import deepcache, deepcache_blocks, feature_inheritance, parastep
    from reverie.bench.digits import Judge, frechet_distance
    from reverie.hub import load
    from reverie.samplers import sample

    model = load("digits")
    judge = Judge(args.seed)
    labels = torch.arange(n) % 10
    den = model.conditional(labels)
    noise = model.noise(n, seed=args.seed)
    steps = args.steps

    def plain(sampler):
        return lambda: sample(den, noise, sampler=sampler, steps=steps)

    def cached(sampler, make):
        def go():
            with make() as cache:
                x = sample(den, noise, sampler=sampler, steps=steps)
            return x, f"{cache.full_calls}/{cache.partial_calls}"
        return go

    def para(p):
        def go():
            out = parastep(model.denoiser, noise, steps, degree=p, cond={"class_labels": labels})
            return out.x0, f"NFE {out.nfe}, depth {out.rounds}"
        return go

    net = model.net
    x_mid = noise * float(model.process.sigma(torch.tensor(1.0)))  # a mid-noise input
    c_plain = _call_costs(den, net, None, x_mid, 1.0)[0]
    costs = {b: _call_costs(den, net, deepcache_blocks(net, b), x_mid, 1.0)[1] for b in (0, 1)}
    costs["fi"] = _call_costs(den, net, (["mid_block", "up_blocks.0"], "output"), x_mid, 1.0)[1]
    big = {p: _call_costs(model.conditional(labels.repeat(p)), net, None, x_mid.repeat(p, 1, 1, 1),
                          1.0)[0] for p in (2, 4)}

    def by_calls(key):  # speed-up predicted from the measured per-call costs
        return lambda full, part: steps * c_plain / (full * c_plain + part * costs[key])

    configs: list[tuple[str, str, str, Any, Any]] = [
        ("dpmpp_2m", "plain", "-", plain("dpmpp_2m"), lambda f, p: 1.0)]
    for k in (2, 3, 5):
        configs.append(("dpmpp_2m", "deepcache", f"uniform N={k}",
                        cached("dpmpp_2m", lambda k=k: deepcache(net, steps, k)), by_calls(0)))
    for k in (3, 5):
        configs.append(("dpmpp_2m", "deepcache", f"non-uniform N={k}", cached(
            "dpmpp_2m", lambda k=k: deepcache(net, steps, k, schedule="nonuniform")),
            by_calls(0)))
    configs.append(("dpmpp_2m", "deepcache", "uniform N=3, branch 1",
                    cached("dpmpp_2m", lambda: deepcache(net, steps, 3, branch=1)), by_calls(1)))
    for when in ("all", "late"):
        configs.append(("dpmpp_2m", "feature_inheritance", f"interval 2, {when}", cached(
            "dpmpp_2m", lambda w=when: feature_inheritance(net, steps, when=w)), by_calls("fi")))
    configs.append(("ddim", "plain", "-", plain("ddim"), lambda f, p: 1.0))
    for p in (2, 4):  # one call of P*n rows per round, after the first call of n rows
        configs.append(("ddim", "parastep", f"P={p} (batched)", para(p),
                        lambda f, r, p=p: steps * c_plain / (c_plain + (r - 1) * big[p])))

    rows, base = [], {}
    for sampler, method, setting, fn, model_cost in configs:
        out, secs, wall = _timed(fn, repeats)
        x, calls = out if isinstance(out, tuple) else (out, f"{steps}/0")
        nums = [int(v) for v in calls.replace("NFE ", "").replace(", depth ", "/").split("/")]
        if method == "plain":
            base[sampler] = (x, secs, wall)
        x_ref, s_ref, w_ref = base[sampler]
        p = judge.proba(x)
        row = {"sampler": sampler, "method": method, "setting": setting, "calls": calls,
               "cpu_seconds": secs, "speedup": s_ref / secs, "wall_seconds": wall,
               "wall_speedup": w_ref / wall, "cost_speedup": model_cost(*nums),
               "frechet": frechet_distance(judge.features(x), judge.test_features),
               "confidence": float(p.max(1).mean()),
               "cond_accuracy": float((p.argmax(1) == labels.numpy()).mean()),
               "max_change": float((x - x_ref).abs().max())}
        rows.append(row)
        print(f"  {sampler} {method} {setting}: per-call costs {row['cost_speedup']:.2f}x; "
              f"{secs:.2f} CPU s ({row['speedup']:.2f}x; wall "
              f"{wall:.1f} s, {row['wall_speedup']:.2f}x), "
              f"FD {row['frechet']:.3f}, acc {row['cond_accuracy']:.3f}", flush=True)
    for r in rows:
        plain_fd = next(q["frechet"] for q in rows
                        if q["sampler"] == r["sampler"] and q["method"] == "plain")
        r["frechet_ratio"] = r["frechet"] / plain_fd
    headers = ["sampler", "method", "setting", "full/partial calls", "speed-up (call costs)",
               "CPU s", "speed-up (CPU)", "speed-up (wall)",
               "Frechet", "FD / plain", "confidence", "cond. acc.", "max |x - plain|"]
    table = format_table(headers, [[r["sampler"], r["method"], r["setting"], r["calls"],
                                    r["cost_speedup"], r["cpu_seconds"], r["speedup"],
                                    r["wall_speedup"], r["frechet"],
                                    r["frechet_ratio"], r["confidence"], r["cond_accuracy"],
                                    r["max_change"]] for r in rows])
    return table, rows


def _distill(args: argparse.Namespace, quick: bool) -> tuple[str, list[dict]]:
    from reverie.accelerate.distill import consistency_distill, progressive_distill
    from reverie.data import two_moons
    from reverie.hub import load
    from reverie.metrics import sliced_wasserstein
    from reverie.samplers import sample

    model = load("two-moons")
    data, _ = two_moons(20000, generator=torch.Generator().manual_seed(args.seed))
    fresh, _ = two_moons(4000, generator=torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(args.seed + 2))
    law = sample(model.denoiser, noise, sampler="dpmpp_2m", steps=50)

    def sw(x, y):
        return sliced_wasserstein(x, y, 256, torch.Generator().manual_seed(args.seed + 3))

    rows: list[dict] = []

    def add(name, steps, x, seconds=0.0):
        rows.append({"model": name, "steps": steps, "sw_data": sw(x, fresh),
                     "sw_teacher50": sw(x, law), "train_seconds": seconds})

    add("teacher dpmpp_2m", 50, law)
    for k in (1, 2, 4, 8, 16):
        add("teacher ddim (karras)", k, sample(model.denoiser, noise, sampler="ddim", steps=k,
                                               grid="karras"))
    pd_iters, cd_iters = (100, 300) if quick else (args.pd_iters, args.cd_iters)
    t = time.perf_counter()
    pd = progressive_distill(model.denoiser, data, steps=1, base_steps=args.pd_base,
                             iters=pd_iters, batch=256, seed=args.seed)
    secs = time.perf_counter() - t
    add(f"progressive ({args.pd_base}->1, {pd_iters} it/stage)", 1, pd.sample(noise), secs)
    t = time.perf_counter()
    cd = consistency_distill(model.denoiser, data, points=18, iters=cd_iters, batch=256,
                             seed=args.seed)
    secs = time.perf_counter() - t
    for k in (1, 2, 4):
        add(f"consistency (N=18, {cd_iters} it)", k,
            cd.sample(noise, k, torch.Generator().manual_seed(args.seed + 4)), secs)
    table = format_table(["model", "steps", "SW2 to data", "SW2 to teacher 50-step",
                          "train seconds"],
                         [[r["model"], r["steps"], r["sw_data"], r["sw_teacher50"],
                           r["train_seconds"]] for r in rows])
    return table, rows


def _prune(args: argparse.Namespace, quick: bool) -> tuple[str, list[dict]]:
    """LD-Pruner (paper 2) on the two-moons MLP: LD-ranked vs random channel groups at several
    ratios, before and after the distillation fine-tuning; sliced W2 to the unpruned model's
    50-step law from the same noise, parameters and CPU seconds of a 50-step run."""
    from reverie.accelerate.prune import ld_prune
    from reverie.hub import load
    from reverie.metrics import sliced_wasserstein
    from reverie.samplers import sample

    model = load("two-moons")
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(args.seed + 2))

    def run50(den):
        return _timed(lambda: sample(den, noise, sampler="dpmpp_2m", steps=50), 1)[:2]

    law, base_cpu = run50(model.denoiser)
    iters = 100 if quick else args.prune_iters
    rows: list[dict] = []
    for ratio in (0.25, 0.5, 0.75):
        for how in ("ld", "random"):
            for it in (0, iters):
                r = ld_prune(model.denoiser, ratio, iters=it, random=how == "random",
                             seed=args.seed)
                x, cpu = run50(r.denoiser)
                rows.append({"ratio": ratio, "units": how, "finetune_iters": it,
                             "params": r.params[1], "params_unpruned": r.params[0],
                             "cpu_50": cpu, "cpu_50_unpruned": base_cpu,
                             "sw_unpruned": sliced_wasserstein(
                                 x, law, 256, torch.Generator().manual_seed(args.seed + 3))})
    table = format_table(["ratio", "units", "fine-tune iters", "params", "CPU s / 50 steps",
                          "SW2 to unpruned"],
                         [[r["ratio"], r["units"], r["finetune_iters"],
                           f"{r['params']} / {r['params_unpruned']}",
                           f"{r['cpu_50']:.3f} / {r['cpu_50_unpruned']:.3f}", r["sw_unpruned"]]
                          for r in rows])
    return table, rows


def _pnp(args: argparse.Namespace, quick: bool) -> tuple[str, list[dict]]:
    """Plug-and-play distillation (paper 32) on the class-conditional two-moons model: CFG at
    ``--pnp-scale`` (two calls per step) against one-call guided models (a guide trained at the
    scale, at half the scale, untrained); sliced W2 to CFG's samples from the same noise."""
    from reverie.accelerate.pnp import pnp_distill
    from reverie.data import two_moons
    from reverie.guidance import guide
    from reverie.hub import load
    from reverie.metrics import sliced_wasserstein
    from reverie.samplers import sample

    model = load("two-moons")
    base, null, w = model.denoiser, model.denoiser.fn.null_label, args.pnp_scale
    data, labels = two_moons(20000, generator=torch.Generator().manual_seed(args.seed))
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(args.seed + 2))
    cond = {"class_labels": (torch.arange(4000) >= 2000).long()}
    cfg = guide(base, "cfg", w, uncond={"class_labels": torch.full((4000,), null)})
    ref, cfg_cpu = _timed(lambda: sample(cfg, noise, sampler="dpmpp_2m", steps=20,
                                         cond=cond), 1)[:2]
    iters = 200 if quick else args.pnp_iters
    rows: list[dict] = [{"model": f"CFG w={w:g}", "calls_per_step": 2, "cpu_20": cfg_cpu,
                         "sw_cfg": 0.0, "train_seconds": 0.0}]
    for name, scale, it in ((f"guide trained at w={w:g}", w, iters),
                            (f"guide trained at w={w / 2:g}", w / 2, iters),
                            ("untrained guide (conditional model)", w, 0)):
        r = pnp_distill(base, data, labels, scale=scale, null_label=null, iters=it,
                        seed=args.seed)
        x, cpu = _timed(lambda den=r.denoiser: sample(den, noise, sampler="dpmpp_2m",
                                                      steps=20, cond=cond), 1)[:2]
        rows.append({"model": name, "calls_per_step": 1, "cpu_20": cpu,
                     "sw_cfg": sliced_wasserstein(x, ref, 256,
                                                  torch.Generator().manual_seed(args.seed + 3)),
                     "train_seconds": r.history[0]["seconds"]})
    table = format_table(["model", "base calls / step", "CPU s / 20 steps", "SW2 to CFG",
                          "train seconds"],
                         [[r["model"], r["calls_per_step"], r["cpu_20"], r["sw_cfg"],
                           r["train_seconds"]] for r in rows])
    return table, rows


def _imm(args: argparse.Namespace, quick: bool) -> tuple[str, list[dict]]:
    """IMM (paper 84) on a four-component 2-D mixture: a pushforward trained from data alone
    against the exact denoiser's ODE samplers at equal network calls."""
    from reverie.accelerate.imm import IMMNet, imm_train
    from reverie.metrics import sliced_wasserstein
    from reverie.process import RectifiedFlow
    from reverie.reference.gaussian import GaussianMixture
    from reverie.samplers import sample

    proc = RectifiedFlow()
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5], [0.0, -2.5]], 0.09)
    data = mix.sample(20000, torch.Generator().manual_seed(args.seed)).float()
    ref = mix.sample(4000, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(args.seed + 2))

    def sw(x):
        return sliced_wasserstein(x.double(), ref, 256,
                                  torch.Generator().manual_seed(args.seed + 3))

    iters = 300 if quick else args.imm_iters
    torch.manual_seed(args.seed)
    model = imm_train(data, net=IMMNet(2, 128, 3), iters=iters, groups=32, particles=8,
                      lr=1e-3, k=8, sigma_data=1.5, seed=args.seed)
    secs = model.history[0]["seconds"]
    rows = [{"model": "noise floor (two exact sample sets)", "steps": "-",
             "sw": sw(mix.sample(4000, torch.Generator().manual_seed(args.seed + 5))),
             "train_seconds": 0.0}]
    for k in (1, 2, 4, 8):
        rows.append({"model": f"IMM ({iters} it, 32 groups x 8 particles)", "steps": k,
                     "sw": sw(model.sample(noise, k)), "train_seconds": secs})
        for name in ("ddim", "dpmpp_2m"):
            rows.append({"model": f"exact denoiser, {name}", "steps": k,
                         "sw": sw(sample(mix.denoiser(proc), noise.double(), name, k)),
                         "train_seconds": 0.0})
    table = format_table(["model", "network calls", "SW2 to the exact law", "train seconds"],
                         [[r["model"], r["steps"], r["sw"], r["train_seconds"]] for r in rows])
    return table, rows


def _flash(args: argparse.Namespace, quick: bool) -> tuple[str, list[dict]]:
    """Imagine Flash (paper 65) on two-moons: students trained from noise alone at 1 and 2
    steps against the teacher's DDIM; sliced W2 to the teacher's 50-step law."""
    from reverie.accelerate.flash import backward_distill
    from reverie.hub import load
    from reverie.metrics import sliced_wasserstein
    from reverie.samplers import sample

    model = load("two-moons")
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(args.seed + 2))
    law = sample(model.denoiser, noise, sampler="dpmpp_2m", steps=50)

    def sw(x):
        return sliced_wasserstein(x, law, 256, torch.Generator().manual_seed(args.seed + 3))

    iters = 100 if quick else args.flash_iters
    rows = [{"model": "teacher ddim (karras)", "steps": k, "sw": sw(
        sample(model.denoiser, noise, "ddim", k, grid="karras")), "train_seconds": 0.0}
        for k in (1, 2, 4)]
    for k in (1, 2):
        st = backward_distill(model.denoiser, steps=k, iters=iters, batch=128, lr=1e-3,
                              shape=(2,), seed=args.seed)
        rows.append({"model": f"Imagine Flash ({iters} it, from noise)", "steps": k,
                     "sw": sw(st.sample(noise)), "train_seconds": st.history[0]["seconds"]})
    table = format_table(["model", "steps", "SW2 to teacher 50-step", "train seconds"],
                         [[r["model"], r["steps"], r["sw"], r["train_seconds"]] for r in rows])
    return table, rows


#: the trained parts after ``reuse``: name -> (function(args, quick) -> (table, rows), heading)
_PARTS = {
    "distill": (_distill, "distilled students of the two-moons model (4000 samples; sliced W2, "
                          "256 directions):"),
    "prune": (_prune, "LD-Pruner on the two-moons MLP (24 channel groups; 4000 samples, 50 "
                      "DPM-Solver++(2M) steps; sliced W2 to the unpruned model's samples):"),
    "pnp": (_pnp, "plug-and-play distillation of CFG on two-moons (4000 samples, classes 0/1, "
                  "20 DPM-Solver++(2M) steps; sliced W2 to CFG's samples from the same noise):"),
    "imm": (_imm, "inductive moment matching on a 2-D mixture of four Gaussians (4000 samples, "
                  "sliced W2 to exact samples, 256 directions; RectifiedFlow process):"),
    "flash": (_flash, "Imagine Flash backward distillation of the two-moons model (4000 "
                      "samples, sliced W2 to the teacher's 50-step DPM-Solver++(2M) law):"),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    n = 200 if args.quick else args.n
    repeats = 1 if args.quick else args.repeats
    skip = {s for s in args.skip.split(",") if s}
    names = ["reuse", *_PARTS]
    unknown = skip - set(names)
    if unknown:
        raise ValueError(f"unknown --skip part(s) {', '.join(sorted(unknown))}; expected "
                         f"{', '.join(names)}")
    result: dict[str, Any] = {"n": n, "steps": args.steps, "seed": args.seed}
    if "reuse" not in skip:
        table, rows = _reuse(args, n, repeats)
        print(f"\ntraining-free step reuse on digits ({args.steps} steps, n = {n}, labels 0..9; "
              f"speed-ups against the plain row of the same sampler, this process):\n")
        print(table)
        result.update(reuse_rows=rows, reuse_table=table)
    for name, (part, heading) in _PARTS.items():
        if name not in skip:
            table, rows = part(args, args.quick)
            print(f"\n{heading}\n")
            print(table)
            result.update({f"{name}_rows": rows, f"{name}_table": table})
    print(f"\n{machine()}")
    result["numpy"] = np.__version__
    return result

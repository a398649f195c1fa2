"""``reverie bench forward-models``: diffusion with forward models (Tewari et al. 2023) on a
linear toy with an exact answer (docs/inverse.md).

A 2-D three-component Gaussian-mixture signal is never observed: the training data are pairs
of noiseless projections ``o_c = a_c . x`` (context) and ``o_t = a_t . x`` (target). A
:class:`reverie.inverse.forward_models.SignalGenerator` is trained through the target
projection (and the context re-projection), then sampled for a few context values; the
signals are compared with the exact posterior ``p(x | o_c)`` (a mixture on the line
``a_c . x = o_c``, :func:`reverie.reference.linear_gaussian_posterior`) by sliced W2, next to
exact draws of the same size (the floor: the mean of five), the posterior mean (a point
estimate) and the prior; sliced W1 (the MCGdiff benchmark's convention: sliced W2 of a bimodal
law is dominated by the sampling noise of the mode weights) and the total variation of the
mode weights. The variants retrain with the paper's uniform DDPM times and without the context
term, and a fourth model sees a random target direction per pair (within 0.6 rad of the
direction orthogonal to ``a_c``; the paper's random target camera), sampled from two views.
A last table feeds the contexts of held-out signals, one per sample: the signals should
then follow the prior, which no training example shows.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
from torch import Tensor

from reverie.bench.common import format_table, machine
from reverie.inverse.forward_models import SignalGenerator, dfm_sample, train_dfm
from reverie.metrics import SlicedWasserstein, mode_weight_error
from reverie.process import VPLinear
from reverie.reference import GaussianMixture, linear_gaussian_posterior

F64 = torch.float64
PRIOR = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), 0.4**2,
                        [0.4, 0.35, 0.25])
A_C = torch.tensor([[0.2, 1.0]])  # context view
A_T = torch.tensor([[1.0, 0.3]])  # target view
VARIANTS = {"default": {}, "uniform times (paper)": {"time_sampling": "uniform"},
            "no context term": {"context_weight": 0.0}, "random views": {}}
NORMAL = math.atan2(float(A_C[0, 1]), float(A_C[0, 0])) + math.pi / 2  # orthogonal to a_c
SPREAD, SHOWN = 1.2, (-0.4, 0.4)  # training views: NORMAL +- SPREAD / 2; sampled from: SHOWN


def _view(angle: float) -> Tensor:
    return torch.tensor([math.cos(angle), math.sin(angle)])


def _project(s: Tensor, v: Tensor) -> Tensor:
    return (s * v.to(s.dtype)).sum(1, keepdim=True)  # the target view v . x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=3000, help="Adam steps per model")
    parser.add_argument("--pairs", type=int, default=20000, help="training observation pairs")
    parser.add_argument("--contexts", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                        help="context observations o_c to sample at")
    parser.add_argument("--n", type=int, default=2000, help="samples per context")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (dpmpp_2m)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="600 steps, default variant only")
    parser.add_argument("--seed", type=int, default=0)


def _scores(s: Tensor | list[Tensor], dist: SlicedWasserstein, post: GaussianMixture,
            yc: float | Tensor) -> dict[str, float]:
    draws = s if isinstance(s, list) else [s]
    out = {"sliced_w1": [dist(d) for d in draws],
           "mode_tv": [mode_weight_error(d, post) for d in draws],
           "off_line": [float((d @ A_C.double().T - yc).abs().mean()) for d in draws]}
    return {k: sum(v) / len(v) for k, v in out.items()}  # the mean over the draws


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    if args.quick:
        args.train_steps, args.variants = 600, ["default"]
    proc, g = VPLinear(), torch.Generator().manual_seed(args.seed)
    x = PRIOR.sample(args.pairs, g).float()  # only its projections are used
    oc, ot = x @ A_C.T, x @ A_T.T
    fwd, ctx_fwd = (lambda s: s @ A_T.T.to(s.dtype)), (lambda s: s @ A_C.T.to(s.dtype))
    models, train_s = {}, {}
    for name in (v for v in args.variants if v != "random views"):
        torch.manual_seed(args.seed)
        gen = SignalGenerator(1, 1, 2, hidden=64, depth=2, t_max=proc.t_max)
        fit = train_dfm(gen, proc, fwd, oc, ot, context_forward=ctx_fwd,
                        steps=args.train_steps, seed=args.seed, **VARIANTS[name])
        models[name], train_s[name] = (fit.ema, fwd, None), fit.seconds
    if "random views" in args.variants:  # a target direction per pair, given to the generator
        gv = torch.Generator().manual_seed(args.seed + 3)
        u = torch.rand(args.pairs, generator=gv, dtype=F64)
        views = torch.stack([_view(NORMAL + SPREAD * (float(a) - 0.5)) for a in u])
        torch.manual_seed(args.seed)
        gen = SignalGenerator(1, 1, 2, hidden=64, depth=2, t_max=proc.t_max, view_dim=2)
        fit = train_dfm(gen, proc, _project, oc, _project(x, views), views=views,
                        context_forward=ctx_fwd, steps=args.train_steps, seed=args.seed)
        train_s["random views"] = fit.seconds
        for d in SHOWN:
            models[f"random views, sampled from view {d:+.1f} rad"] = (fit.ema, _project,
                                                                       _view(NORMAL + d))
    rows, results = [], []
    for yc in args.contexts:
        post = linear_gaussian_posterior(PRIOR, A_C.double(), torch.tensor([yc], dtype=F64), 0.0)
        ref = post.sample(4 * args.n, torch.Generator().manual_seed(args.seed + 1))
        dist = SlicedWasserstein(ref, generator=torch.Generator().manual_seed(args.seed + 2), p=1)
        floor = [post.sample(args.n, g) for _ in range(5)]
        sets = {"exact draws (floor, mean of 5)": floor,
                "posterior mean (point estimate)": post.mean().expand(args.n, 2),
                "prior": PRIOR.sample(args.n, g)}
        seconds = {}
        for name, (gen, f, view) in models.items():
            t0 = time.perf_counter()
            sets[f"DFM, {name}"] = dfm_sample(gen, proc, f, torch.tensor([yc]), 1, n=args.n,
                                              steps=args.steps, view=view,
                                              generator=g if view is None else gv)
            seconds[f"DFM, {name}"] = time.perf_counter() - t0
        for label, s in sets.items():
            row = {"context": yc, "samples": label, **_scores(s, dist, post, yc),
                   "seconds": seconds.get(label, float("nan"))}
            results.append(row)
            rows.append([yc, label, row["sliced_w1"], row["mode_tv"], row["off_line"],
                         row["seconds"]])
    # contexts of held-out signals, one per sample: the signals should follow the prior
    held = PRIOR.sample(args.n, g)
    oc_held = held @ A_C.double().T
    dist = SlicedWasserstein(PRIOR.sample(4 * args.n, g), generator=g, p=1)
    sets = {"exact draws (floor, mean of 5)": [PRIOR.sample(args.n, g) for _ in range(5)],
            "contexts lifted by the pseudo-inverse": oc_held @ torch.linalg.pinv(A_C.double()).T}
    for name, (gen, f, view) in models.items():
        if view is None:  # (the random-view model is shown per context only)
            sets[f"DFM, {name}"] = dfm_sample(gen, proc, f, oc_held.float(), 1, n=args.n,
                                              steps=args.steps, generator=g)
    prior_rows = []
    for label, s in sets.items():
        row = {"context": "held-out", "samples": label, **_scores(s, dist, PRIOR, oc_held)}
        if label.startswith("exact"):
            row["off_line"] = float("nan")  # independent draws: not paired with the contexts
        results.append(row)
        prior_rows.append([label, row["sliced_w1"], row["mode_tv"], row["off_line"]])
    table = format_table(["o_c", "samples", "sliced W1 to p(x | o_c)", "mode-weight TV",
                          "mean |a_c.x - o_c|", "sampling s"], rows)
    table += "\n\nContexts of held-out signals, one per sample (the law to match is the prior):\n\n"
    table += format_table(["samples", "sliced W1 to the prior", "mode-weight TV",
                           "mean |a_c.x - o_c|"], prior_rows)
    print(table)
    print("\ntraining: " + ", ".join(f"{k} {v:.0f} s" for k, v in train_s.items())
          + f" ({args.train_steps} steps each); {machine()}")
    return {"train_steps": args.train_steps, "pairs": args.pairs, "n": args.n,
            "steps": args.steps, "seed": args.seed, "train_seconds": train_s, "rows": results,
            "table": table}

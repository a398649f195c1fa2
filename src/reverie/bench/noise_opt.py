"""``reverie bench noise-opt``: DITTO-2 (``ditto2``, a one-step surrogate) against DITTO
(``ditto``, backprop through the sampler) and best-of-N, reward vs NFE, on the search
benchmark's exact 2-D mixture (four modes, rectified flow, reward ``0.75 x + 0.5 y``:
:func:`reverie.bench.search.problem`).

The surrogate is a one-step student distilled offline (its training is not counted in the
NFE, as in the paper): a small MLP ``f(z) ~ x_0`` regressed onto the exact denoiser's
64-step DPM-Solver++(2M) flow map from ``--train`` noises (direct distillation, Luhman &
Luhman 2021; the paper distils a consistency model). Every method uses 8-step ``dpmpp_2m``
trajectories (the decode); the table gives the mean reward of ``--n`` returned samples per
budget and, in brackets, the share of them on a mode (within 3 standard deviations of one of
the four means). Defaults untouched (``lr=0.2``, ``noise_weight=0``), plus ``ditto2`` with
``noise_weight=1`` (the noise's log-density added, which keeps the noise typical).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from reverie import search
from reverie.bench.common import format_table, machine
from reverie.samplers import sample

METHODS = (("best-of-N", "best_of_n", {}), ("DITTO", "ditto", {}),
           ("DITTO-2 (1-step student)", "ditto2", {}),
           ("DITTO-2, noise_weight=1", "ditto2", {"noise_weight": 1.0}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=256, help="returned samples per row")
    parser.add_argument("--budgets", default="16,32,64,128,256,512", help="NFE per sample")
    parser.add_argument("--train", type=int, default=8192, help="noises the student fits")
    parser.add_argument("--iters", type=int, default=1500, help="student training steps")
    parser.add_argument("--seed", type=int, default=0)


def one_step_student(den, train: int, iters: int, seed: int) -> nn.Module:
    """An MLP ``z -> x_0`` fitted to the teacher's 64-step ODE map (2-D inputs)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(train, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        target = sample(den, z, "dpmpp_2m", 64).float()
    net = nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                        nn.Linear(128, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    torch.manual_seed(seed)
    for _ in range(iters):
        idx = torch.randint(0, train, (512,), generator=g)
        loss = ((net(z[idx].float()) - target[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.bench.search import problem

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        mix, _, den, tilt = problem()
        net = one_step_student(den, args.train, args.iters, args.seed)

        def surrogate(x, t):  # sigma(t_0) = 1 under the rectified flow: x is the unit noise
            return net(x.float()).to(x.dtype)

        budgets = [int(b) for b in args.budgets.split(",") if b]
        rows = []
        for budget in budgets:
            row: dict[str, Any] = {"budget": budget}
            for name, method, opts in METHODS:
                if budget < (8 if method == "best_of_n" else 8 + (24 if method == "ditto" else 2)):
                    row[name] = None  # no iteration fits: the method is its start
                    continue
                if method == "ditto2":
                    opts = {**opts, "surrogate": surrogate}
                res = search.run(den, tilt.reward, method=method, budget=budget, n=args.n,
                                 steps=8, shape=(2,), dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(args.seed + 1),
                                 **opts)
                # on a mode: within 3 standard deviations (0.4) of one of the four means
                on = (torch.cdist(res.samples, mix.means).min(-1).values < 1.2).double().mean()
                row[name] = [float(res.rewards.mean()), float(on)]
            rows.append(row)
        table = format_table(["NFE / sample", *(m[0] for m in METHODS)],
                             [[r["budget"], *(("-" if r[m[0]] is None else
                                               f"{r[m[0]][0]:.2f} ({100 * r[m[0]][1]:.0f}%)")
                                              for m in METHODS)] for r in rows])
        print(table)
        print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
        return {"n": args.n, "seed": args.seed, "train": args.train, "iters": args.iters,
                "rows": rows, "table": table}
    finally:
        torch.set_num_threads(old)

"""``reverie bench policy``: RTI-DP (Duan, Yin & Kragic 2025) in miniature (:mod:`reverie.policy`).

An exact Gaussian-process diffusion policy (``H = 8`` actions, mean ``sin(freq (o + j) +
phase)`` at control step ``o``, one action executed per step) is rolled out over
``--controls`` control steps with the exact conditional denoiser and ``dpmpp_2m_sde``. Each
row reports the Gaussian W2 of each step's chunk law (``--n`` samples) to the exact conditional
law, averaged over control steps 2.. and over ``--seeds``, and the NFE per control step.
The default strength 0.5 was chosen on the test's trajectory (freq 0.15, seed 0); the table
is on another (default freq 0.25, phase 1, seeds 1-3). ``bad first plan``: RTI started from a
plan of all 3s; its per-step W2 ratio (geometric mean over steps 1-3, before the floor) is set
beside the closed-form contraction factor. ``clean chunk as x_t``: the released code's warm
start (``renoise=False``). Second table: RTI-DP's discrete-action scaling, a gripper
(:class:`reverie.policy.GripperPolicy`, commands +-scale) that must close at control step 3
(probability 0.02, then 0.98): the fraction of rollouts closed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.policy import GaussianPolicy, GripperPolicy, rollout
from reverie.process import RectifiedFlow, VPLinear
from reverie.samplers import SAMPLERS, resolve_grid
from reverie.timeseries.metrics import gaussian_w2

H = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="rollouts (default 2000)")
    parser.add_argument("--controls", type=int, default=10, help="control steps (default 10)")
    parser.add_argument("--freq", type=float, default=0.25)
    parser.add_argument("--phase", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])


def _w2(policy: GaussianPolicy, chunks: list) -> list[float]:
    out = []
    for o, x in enumerate(chunks):
        law = policy.law(o)
        out.append(gaussian_w2(x.mean(0), torch.cov(x.T), law.means[0], law.covariance()))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    j = torch.arange(H, dtype=torch.float64)
    policy = GaussianPolicy(lambda o: torch.sin(args.freq * (o + j) + args.phase), H)
    obs = list(range(args.controls))
    bad = torch.full((args.n, H), 3.0, dtype=torch.float64)
    methods = {
        "scratch, 5 steps": {"steps": 5, "strength": None},
        "scratch, 20 steps": {"steps": 20, "strength": None},
        "RTI 10 x 0.5, shift + hold": {"steps": 10},
        "RTI 10 x 0.5, shift + linear": {"steps": 10, "pad": "linear"},
        "RTI 10 x 0.5, no shift": {"steps": 10, "shift": 0},
        "RTI 10 x 0.5, shifted backwards": {"steps": 10, "shift": -1},
        "RTI 20 x 0.25, shift + hold": {"steps": 20, "strength": 0.25},
        "RTI 10 x 0.5, bad first plan": {"steps": 10, "first": bad},
        "RTI 10 x 0.5, clean chunk as x_t (renoise=False)": {"steps": 10, "renoise": False},
    }
    rows = []
    for proc in (VPLinear(), RectifiedFlow()):
        for name, kw in methods.items():
            ws, nfe = [], None
            for seed in args.seeds:
                r = rollout(policy, obs, proc, n=args.n,
                            generator=torch.Generator().manual_seed(seed), **kw)
                ws.append(_w2(policy, r["chunks"]))
                nfe = r["nfe"][-1]
            w = [sum(c) / len(c) for c in zip(*ws)]
            steps, strength = kw["steps"], kw.get("strength", 0.5)
            if strength is None:
                rho = ratio = "—"
            else:
                t = float(resolve_grid(SAMPLERS["dpmpp_2m_sde"], proc, steps, None)
                          [steps - int(steps * strength)])
                rho = policy.contraction(proc, t)
                ratio = (w[2] / w[0]) ** 0.5 if "bad" in name else "—"
            rows.append({"process": type(proc).__name__, "method": name, "nfe": nfe,
                         "w2_mean": sum(w[1:]) / len(w[1:]), "w2_last": w[-1],
                         "ratio": ratio, "factor": rho})
    grip = []  # discrete actions: the gripper must close at control step 3
    for proc in (VPLinear(), RectifiedFlow()):
        for scale in (1.0, 0.3, 0.1):
            for strength in (0.25, 0.5):
                pol = GripperPolicy(lambda o: 0.02 if o < 3 else 0.98, H, scale=scale)
                fr = []
                for seed in args.seeds:
                    r = rollout(pol, obs, proc, n=args.n, steps=20, strength=strength,
                                generator=torch.Generator().manual_seed(seed))
                    fr.append([float(pol.closed(x).double().mean()) for x in r["chunks"]])
                f = [sum(c) / len(c) for c in zip(*fr)]
                grip.append({"process": type(proc).__name__, "scale": scale,
                             "strength": strength, "step3": f[3], "step4": f[4],
                             "last": f[-1]})
    grip_table = format_table(["process", "gripper scale", "strength (of 20 steps)",
                               "closed at step 3 (exact 0.98)", "step 4", "last step"],
                              [list(r.values()) for r in grip])
    table = format_table(["process", "method", "NFE / control step", "W2 (mean, steps 2..)",
                          "W2 (last step)", "W2 ratio per step (steps 1-3)",
                          "closed-form factor"], [list(r.values()) for r in rows])
    print(table)
    print()
    print(grip_table)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"n": args.n, "controls": args.controls, "freq": args.freq, "phase": args.phase,
            "seeds": args.seeds, "rows": rows, "table": table, "gripper": grip,
            "gripper_table": grip_table}

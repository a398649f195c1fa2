"""Progressive distillation (``--method progressive``, default) or Imagine Flash's backward
distillation (``--method flash``: from noise alone, ``--iters`` iterations in all) of the bundled
digits model (unconditional, null class) into a ``--steps``-step student on the ``--base``-step
karras grid, then its Frechet distance and classifier confidence (``reverie bench digits``'
judge) at the student's steps against the teacher at 20 steps.

    OMP_NUM_THREADS=1 python scripts/distill_digits.py --iters 800 --batch 64
    OMP_NUM_THREADS=1 python scripts/distill_digits.py --method flash --iters 1500 --batch 64
    OMP_NUM_THREADS=1 python scripts/distill_digits.py --method scalewise --iters 600 --batch 128

``--method scalewise``: SwD's scale-wise student (4x4 then 8x8, on the 2-step student's times)
trained by MMD against 2000 teacher samples (20 DPM-Solver++(2M) steps), compared at 2 calls.

Writes benchmarks/results/accelerate_digits_distill.json (progressive) or
accelerate_digits_{flash,scalewise}.json and the student's weights (``--save``).
"""

from __future__ import annotations

import argparse
import time

import torch

from reverie.accelerate.distill import progressive_distill
from reverie.accelerate.flash import backward_distill
from reverie.accelerate.scalewise import scalewise_distill
from reverie.bench.common import machine, save_result
from reverie.bench.digits import Judge, frechet_distance
from reverie.data import load_digits
from reverie.hub import load


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("progressive", "flash", "scalewise"),
                    default="progressive")
    ap.add_argument("--shift", type=float, default=1.0, help="flash: re-noising shift")
    ap.add_argument("--teacher-steps", type=int, default=10, help="flash: teacher steps from tau")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--iters", type=int, default=800, help="Adam iterations per stage")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n", type=int, default=1000, help="samples for the Frechet distance")
    ap.add_argument("--save", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load("digits")
    data, _ = load_digits("train")
    t0 = time.perf_counter()
    if args.method == "flash":
        student = backward_distill(model.denoiser, steps=args.steps, iters=args.iters,
                                   batch=args.batch, lr=args.lr, shift=args.shift,
                                   teacher_steps=args.teacher_steps, base_steps=args.base,
                                   shape=tuple(data.shape[1:]))
    elif args.method == "scalewise":
        from reverie.grids import make_grid
        from reverie.samplers import sample

        g = make_grid(model.denoiser.process, args.base, "karras")[:: args.base // 2]
        targets = sample(model.denoiser, model.noise(2000, seed=7), "dpmpp_2m", 20)
        schedule = [((4, 4), float(g[0])), ((8, 8), float(g[1]))]
        student = scalewise_distill(model.denoiser, targets, schedule,
                                    iters=args.iters, batch=args.batch, lr=args.lr)
    else:
        student = progressive_distill(model.denoiser, data, steps=args.steps,
                                      base_steps=args.base, iters=args.iters, batch=args.batch,
                                      lr=args.lr)
    train_s = time.perf_counter() - t0
    print(f"trained in {train_s:.0f} s: {student.history}", flush=True)
    if args.save:
        torch.save(student.denoiser.fn.state_dict(), args.save)
    judge = Judge(0)
    noise = model.noise(args.n, seed=100)  # evaluation noise, not used in training

    def score(x: torch.Tensor) -> dict:
        return {"frechet": frechet_distance(judge.features(x), judge.test_features),
                "confidence": float(judge.proba(x).max(1).mean())}

    from reverie.samplers import sample

    rows = []
    for name, steps in [("teacher dpmpp_2m", 20), ("teacher ddim", 20), ("teacher ddim", 2)]:
        x = sample(model.denoiser, noise, sampler=name.split()[1], steps=steps)
        rows.append({"model": name, "steps": steps, **score(x)})
    s = 0 if args.method == "scalewise" else args.steps
    if args.method == "scalewise":  # its noise is at the first (4x4) size
        small = torch.randn(args.n, 1, 4, 4, generator=torch.Generator().manual_seed(100))
        rows.append({"model": "scalewise student", "steps": 2, **score(student.sample(small))})
    while s >= 1:
        rows.append({"model": f"{args.method} student", "steps": s,
                     **score(student.sample(noise, s))})
        s //= 2
    for r in rows:
        print(r, flush=True)
    ref = rows[0]["frechet"]
    target = next(r for r in rows if r["model"] == f"{args.method} student" and r["steps"] == 2)
    result = {"args": vars(args), "train_seconds": train_s, "history": student.history,
              "rows": rows, "ratio_2step_to_teacher20": target["frechet"] / ref,
              "machine": machine()}
    print(f"2-step student / teacher 20-step Frechet: {result['ratio_2step_to_teacher20']:.3f}")
    save_result("accelerate_digits_distill" if args.method == "progressive"
                else f"accelerate_digits_{args.method}", result)


if __name__ == "__main__":
    main()

"""Quality of the digits model per sampler and NFE: classifier confidence, class balance,
conditional accuracy under CFG, and a Frechet distance against held-out digits.

A scikit-learn MLP classifier (one hidden layer of 64 ReLUs, ``random_state=0``) is trained
here on the real training digits (:func:`reverie.data.load_digits`, ``split="train"``). It
labels generated samples, and its hidden layer is the fixed feature space of the Frechet
distance (Heusel et al. 2017's FID, with this small network in place of Inception):

    FD = |mu_g - mu_r|^2 + tr(C_g + C_r - 2 (C_r^1/2 C_g C_r^1/2)^1/2)

against the held-out test digits. The floor is the same distance from ``n`` real *training*
digits to the test digits (mean of 5 random draws): what a perfect model would score with
``n`` samples. Each configuration uses the same seeded noise (sample k from seed + k), so
samplers are compared on the same starting points. NFE counts denoiser calls; with CFG each
call evaluates the network twice (one batched call).

Modes: ``uncond`` (null class), ``cond`` (labels 0..9 balanced, no guidance) and ``cfg=S``
(the same labels, guidance scale S).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from reverie.bench.common import format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="digits", help="model name or folder (default digits)")
    parser.add_argument("--samplers", default="ddim,dpmpp_2m,unipc,heun",
                        help="comma-separated samplers")
    parser.add_argument("--nfe", default="5,10,20", help="comma-separated NFE budgets")
    parser.add_argument("--n", type=int, default=1000, help="samples per configuration")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance scale of the cfg mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="dpmpp_2m at 10 and 20 NFE with 300 samples")


def _pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) / 2).reshape(x.shape[0], -1).double().numpy()


class Judge:
    """The classifier + feature map, trained on the real training digits."""

    def __init__(self, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        from reverie.data import load_digits

        x_tr, y_tr = load_digits("train")
        x_te, y_te = load_digits("test")
        self.clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=2000,
                                 random_state=seed).fit(_pixels(x_tr), y_tr.numpy())
        self.train_x, self.test_x, self.test_y = x_tr, x_te, y_te.numpy()
        self.test_acc = float(self.clf.score(_pixels(x_te), self.test_y))
        self.test_features = self.features(x_te)

    def features(self, x: torch.Tensor) -> np.ndarray:
        """Hidden-layer activations ``relu(x W1 + b1)`` of the classifier."""
        h = _pixels(x) @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(h, 0.0)

    def proba(self, x: torch.Tensor) -> np.ndarray:
        return self.clf.predict_proba(_pixels(x))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a [n, d]``, ``b [m, d]``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def sqrt_psd(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    s = sqrt_psd(cb)
    cross = np.linalg.eigvalsh(s @ ca @ s)
    tr_sqrt = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def _steps_for(sampler, nfe: int) -> int:
    steps = 1
    while sampler.nfe(steps + 1) <= nfe:
        steps += 1
    return steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.hub import load
    from reverie.samplers import SAMPLERS

    samplers = ["dpmpp_2m"] if args.quick else [s for s in args.samplers.split(",") if s]
    nfes = [10, 20] if args.quick else [int(v) for v in args.nfe.split(",") if v]
    n = 300 if args.quick else args.n
    for s in samplers:
        SAMPLERS[s]  # unknown names raise, listing the valid ones
    model = load(args.model)
    if model.num_classes != 10 or not model.has_null_class:
        raise ValueError(f"{args.model!r} is not a 10-class digits model with a null class")

    t0 = time.perf_counter()
    judge = Judge(args.seed)
    rng = np.random.RandomState(args.seed)
    m = min(n, judge.train_x.shape[0])
    floors = []
    for _ in range(5):
        idx = rng.choice(judge.train_x.shape[0], m, replace=False)
        floors.append(frechet_distance(judge.features(judge.train_x[idx]), judge.test_features))
    floor = float(np.mean(floors))
    real_conf = float(judge.proba(judge.test_x).max(1).mean())
    print(f"classifier: test accuracy {judge.test_acc:.4f}, mean confidence on real test "
          f"digits {real_conf:.4f}; Frechet floor (real train vs test, n={m}) {floor:.3f} "
          f"(std over draws {np.std(floors):.3f}); {time.perf_counter() - t0:.0f} s")

    labels = torch.arange(n) % 10
    modes: list[tuple[str, torch.Tensor | None, float]] = [
        ("uncond", None, 1.0), ("cond", labels, 1.0), (f"cfg={args.cfg:g}", labels, args.cfg)]
    rows, results = [], []
    for name in samplers:
        info = SAMPLERS[name]
        for target in nfes:
            steps = _steps_for(info, target)
            nfe = info.nfe(steps)
            for mode, lab, scale in modes:
                t1 = time.perf_counter()
                x = model.sample(n, sampler=name, steps=steps, seed=args.seed, labels=lab,
                                 cfg_scale=scale)
                secs = time.perf_counter() - t1
                p = judge.proba(x)
                pred = p.argmax(1)
                hist = np.bincount(pred, minlength=10) / n
                res = {
                    "sampler": name, "steps": steps, "nfe": nfe, "mode": mode,
                    "confidence": float(p.max(1).mean()),
                    "balance_tv": float(0.5 * np.abs(hist - 0.1).sum()),
                    "cond_accuracy": None if lab is None else float((pred == lab.numpy()).mean()),
                    "frechet": frechet_distance(judge.features(x), judge.test_features),
                    "seconds": secs,
                }
                res["frechet_over_floor"] = res["frechet"] / floor
                results.append(res)
                acc = "-" if res["cond_accuracy"] is None else f"{res['cond_accuracy']:.3f}"
                rows.append([name, nfe, mode, res["confidence"], res["balance_tv"], acc,
                             res["frechet"], res["frechet_over_floor"], secs])
                print(f"  {name} nfe={nfe} {mode}: conf {res['confidence']:.3f} acc {acc} "
                      f"FD {res['frechet']:.3f} ({res['frechet_over_floor']:.2f}x floor)",
                      flush=True)
    headers = ["sampler", "NFE", "mode", "confidence", "balance TV", "cond. acc.", "Frechet",
               "FD / floor", "seconds"]
    table = format_table(headers, rows)
    print()
    print(table)
    print(f"\nreal test digits: classifier accuracy {judge.test_acc:.4f}, confidence "
          f"{real_conf:.4f}; Frechet floor {floor:.3f}; n = {n} samples per row; "
          f"{machine()}")
    return {
        "model": args.model, "n": n, "cfg": args.cfg, "seed": args.seed,
        "classifier_test_accuracy": judge.test_acc, "real_confidence": real_conf,
        "frechet_floor": floor, "frechet_floor_draws": floors, "rows": results,
        "table": table,
    }

"""BayesDiff on the bundled digits model: pixel-wise uncertainty and sample filtering.

Kou et al., "BayesDiff" (ICLR 2024): a diagonal Laplace posterior over the UNet's last layer
(``conv_out``, a Conv2d) fitted on training digits, the uncertainty iteration along a
deterministic DDIM sampler, and the filtering of generated samples by their summed pixel
variance. Measured: the Frechet distance of `reverie bench digits` (its classifier features,
against the held-out test digits) of all samples, of the kept ``keep`` fraction and of random
``keep`` fractions (the baseline filtering must beat). Writes a figure of samples and their
uncertainty maps.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/bench_bayesdiff_digits.py \
        --n 500 --steps 15 --mc 4 --fit 300 --figure docs/bayesdiff-digits.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from reverie.bench.digits import Judge, frechet_distance
from reverie.data import load_digits
from reverie.grids import make_grid
from reverie.hub import load
from reverie.inverse import bayesdiff, filter_samples, last_layer_laplace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="generated samples")
    ap.add_argument("--steps", type=int, default=15, help="DDIM steps (karras grid)")
    ap.add_argument("--mc", type=int, default=4, help="draws of x_t per step")
    ap.add_argument("--fit", type=int, default=300, help="training digits for the Laplace fit")
    ap.add_argument("--keep", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=None, help="PNG of samples and uncertainty maps")
    ap.add_argument("--out", default=None, help="JSON of the results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load("digits")
    proc = model.process

    def eps_net(x, t):  # the unconditional (null-class) eps prediction
        return model.denoiser.eps(x, t)

    t0 = time.perf_counter()
    x_tr, _ = load_digits("train")
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(args.seed))
    lap = last_layer_laplace(eps_net, model.net.conv_out, proc, x_tr[idx[: args.fit]],
                             generator=torch.Generator().manual_seed(args.seed + 1))
    t_fit = time.perf_counter() - t0
    grid = make_grid(proc, args.steps, "karras")
    x = model.noise(args.n, seed=args.seed) * float(proc.sigma(grid[0]))
    res = bayesdiff(lap, x, grid.float(), eta=0.0, mc=args.mc,
                    generator=torch.Generator().manual_seed(args.seed + 2))
    t_run = time.perf_counter() - t0 - t_fit

    judge = Judge(args.seed)
    feats = judge.features(res.sample)
    kept = filter_samples(res, args.keep).numpy()
    m = len(kept)
    rng = np.random.RandomState(args.seed)
    rand = [frechet_distance(feats[rng.choice(args.n, m, replace=False)], judge.test_features)
            for _ in range(20)]
    drop = np.setdiff1d(np.arange(args.n), kept)
    out = {
        "n": args.n, "steps": args.steps, "mc": args.mc, "fit": args.fit, "keep": args.keep,
        "fd_all": frechet_distance(feats, judge.test_features),
        "fd_kept": frechet_distance(feats[kept], judge.test_features),
        "fd_random_mean": float(np.mean(rand)), "fd_random_std": float(np.std(rand)),
        "fd_random_min": float(np.min(rand)),
        "fd_dropped": frechet_distance(feats[drop], judge.test_features),
        "confidence_kept": float(judge.proba(res.sample[kept]).max(1).mean()),
        "confidence_dropped": float(judge.proba(res.sample[drop]).max(1).mean()),
        "seconds_fit": t_fit, "seconds_sampling": t_run,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    if args.figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        score = res.variance.reshape(args.n, -1).sum(1)
        order = score.argsort()
        pick = torch.cat([order[:4], order[-4:]])  # 4 most certain, 4 most uncertain
        fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
        vmax = float(res.variance[pick].max())
        for j, k in enumerate(pick.tolist()):
            axes[0, j].imshow(res.sample[k, 0].clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
            axes[0, j].set_title(f"{'kept' if j < 4 else 'dropped'}\nsum var {score[k]:.3g}",
                                 fontsize=8)
            axes[1, j].imshow(res.variance[k, 0], cmap="magma", vmin=0, vmax=vmax)
            for ax in axes[:, j]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_ylabel("sample")
        axes[1, 0].set_ylabel("pixel variance")
        fig.suptitle("BayesDiff on digits: 4 most certain (left) and 4 most uncertain (right) "
                     f"of {args.n} samples")
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)


if __name__ == "__main__":
    main()

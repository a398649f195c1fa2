"""Pixel-wise information maps of the bundled class-conditional digits model (Kong et al.,
"Interpretable Diffusion via Information Decomposition", ICLR 2024, sec. 3.2).

For held-out digits ``x`` with their labels ``y`` it draws ``x`` and the map
``i(x; y)_j``: the per-pixel terms of ``log p(x | y) - log p(x)`` from the conditional and
unconditional (null class) denoising errors (:func:`reverie.likelihood.pixel_information`);
each map sums to the digit's pointwise information, written above it.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/information_maps.py
"""

from __future__ import annotations

import argparse

import torch

from reverie.data import load_digits
from reverie.hub import load
from reverie.likelihood import pixel_information


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=3, help="digits per class")
    parser.add_argument("--points", type=int, default=32, help="log-SNR grid points")
    parser.add_argument("--noise", type=int, default=32, help="noise draws per grid point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/information-digits.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load("digits")
    x, y = load_digits("test")  # held out from the model's training digits
    idx = torch.cat([torch.nonzero(y == c)[: args.per_class, 0] for c in range(10)])
    x, y = x[idx], y[idx]
    null = {"class_labels": torch.full_like(y, model.num_classes)}
    maps = pixel_information(model.denoiser, x, {"class_labels": y}, null, points=args.points,
                             noise=args.noise, generator=torch.Generator().manual_seed(args.seed))
    total = maps.flatten(1).sum(1)
    print(f"pointwise information log p(x|y) - log p(x), nats: mean {total.mean():.2f}, "
          f"min {total.min():.2f}, max {total.max():.2f} (true models: at most log 10 = 2.30)")
    lim = float(maps.abs().flatten().quantile(0.99))  # colour scale: a few outliers clip
    k = args.per_class
    fig, axes = plt.subplots(2 * k, 10, figsize=(10, 2.1 * k))
    for i in range(len(idx)):
        c, r = divmod(i, k)
        axes[2 * r, c].imshow(x[i, 0], cmap="gray_r", vmin=-1, vmax=1)
        axes[2 * r, c].set_title(f"{int(y[i])}: {float(total[i]):.1f}", fontsize=8)
        im = axes[2 * r + 1, c].imshow(maps[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="nats per pixel")
    fig.suptitle("digits: x (title: label y, log p(x|y) - log p(x)) and its pixel-wise "
                 "information map", fontsize=9)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

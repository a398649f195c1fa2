"""Retrain the bundled ``two-moons`` model (seeded; see docs/models.md).

    python scripts/train_two_moons.py [--out src/reverie/models/two-moons] [--threads 1]

Recipe (reverie.train.recipes.RECIPES["two-moons"]): residual MLP (hidden 128, depth 3, 3 class
embeddings), EDM objective with sigma_data = std of 20000 two-moons points, label dropout 0.1,
Adam lr 1e-3, batch 512, 4000 steps, EMA 0.999. About 7 minutes (432 s) on the shared
2-core machine, busy with other jobs, with 1 thread.
"""

from __future__ import annotations

import argparse

import torch

from reverie.train import train_bundled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="src/reverie/models/two-moons")
    p.add_argument("--checkpoint", default="two-moons.ckpt.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = train_bundled("two-moons", args.out, seed=args.seed, checkpoint=args.checkpoint,
                           resume=args.resume)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()

"""Retrain the bundled ``digits`` model (seeded; see docs/models.md).

    python scripts/train_digits.py [--out src/reverie/models/digits] [--threads 1]

Recipe (reverie.train.recipes.RECIPES["digits"]): diffusers UNet2DModel (32/64/64 channels,
attention at 4x4 and 2x2, 11 class embeddings), EDM objective with sigma_data = 0.75,
label dropout 0.1, Adam lr 7e-4, batch 64, 3000 steps, EMA 0.999, gradient clip 1.
About 37 minutes (2235 s) on the shared 2-core machine, busy with other jobs, 1 thread.
With --checkpoint the run can be stopped and resumed (same weights as an uninterrupted run).
"""

from __future__ import annotations

import argparse

import torch

from reverie.train import train_bundled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="src/reverie/models/digits")
    p.add_argument("--checkpoint", default="digits.ckpt.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = train_bundled("digits", args.out, seed=args.seed, checkpoint=args.checkpoint,
                           resume=args.resume)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()

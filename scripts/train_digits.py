"""Retrain the bundled ``digits`` model, or one of its variants (seeded; see docs/models.md).

    python scripts/train_digits.py [--variant digits|weak|noisy|coherence] [--weak]
                                   [--out FOLDER] [--steps N] [--threads 1]

Recipe (reverie.train.recipes.RECIPES["digits"]): diffusers UNet2DModel (32/64/64 channels,
attention at 4x4 and 2x2, 11 class embeddings), EDM objective with sigma_data = 0.75,
label dropout 0.1, Adam lr 7e-4, batch 64, 3000 steps, EMA 0.999, gradient clip 1.
About 37 minutes (2235 s) on the shared 2-core machine, busy with other jobs, 1 thread.
With --checkpoint the run can be stopped and resumed (same weights as an uninterrupted run).

Variants (same recipe otherwise; reverie.train.recipes.DIGITS_VARIANTS), each written to
src/reverie/models/digits-<variant> by default:

* ``--weak`` (= ``--variant weak``): the weak model for autoguidance (Karras et al. 2024):
  16/32/32 channels (about 1/4 of the parameters) and 750 steps (1/4).
* ``--variant noisy``: the digits UNet on noisy labels (``noisy_digit_labels``: coherence
  c ~ U(0, 1) per digit, label resampled at random with probability 1 - c), no coherence.
* ``--variant coherence``: the same noisy labels plus the coherence score as an extra
  condition (reverie.nets.CoherenceUNet; Dufour et al. 2024).

The bundled weak model took 669 s (11 min, 750 steps); the bundled noisy and coherence models
are 1000 steps (their recipes' default; a third of the digits recipe, all the shared machine
allowed), about 1650 s each with other jobs running.
"""

from __future__ import annotations

import argparse

import torch

from reverie.train import train_bundled

VARIANTS = ("digits", "weak", "noisy", "coherence")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=VARIANTS, default="digits")
    p.add_argument("--weak", action="store_true", help="same as --variant weak")
    p.add_argument("--out", default=None, help="default: src/reverie/models/<recipe name>")
    p.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    p.add_argument("--checkpoint", default=None, help="default: <recipe name>.ckpt.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    variant = "weak" if args.weak else args.variant
    name = "digits" if variant == "digits" else f"digits-{variant}"
    torch.set_num_threads(args.threads)
    folder = train_bundled(name, args.out or f"src/reverie/models/{name}", steps=args.steps,
                           seed=args.seed, checkpoint=args.checkpoint or f"{name}.ckpt.pt",
                           resume=args.resume)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()

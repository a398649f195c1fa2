"""Train a VAE on the 8x8 digits by the ELBO and a latent DiT on its latents, save them as a
diffusers ``DiTPipeline`` folder and compare with the pixel-space bundled ``digits`` model
(seeded, CPU; the recipe is :mod:`reverie.train.latent`, the comparison ``reverie bench
backbones --parts vae``):

    python scripts/train_digits_vae.py [--out /tmp/digits-vae] [--threads 1]

The folder loads with ``reverie.load(OUT)`` (a :class:`reverie.pipelines.DiT`: class labels
0-9, ``encode_image`` / ``decode`` through the trained VAE). Printed: the VAE's negative ELBO on
the held-out digits (nats per image, bits/dim of the discrete bins) and the Frechet distance of
class-balanced samples of both models to the held-out digits. Not a bundled model (the
folder is about 6 MB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from reverie.bench.backbones import vae_report
from reverie.bench.common import machine
from reverie.train.latent import train_latent_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/digits-vae", help="DiTPipeline folder to write")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--dit-steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=1000, help="samples per model")
    parser.add_argument("--variance", choices=("scalar", "per-dim"), default="scalar",
                        help="the VAE decoder's learned variance: one, or one per pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = train_latent_digits(vae_steps=args.vae_steps, dit_steps=args.dit_steps,
                              obs_logvar=args.variance, seed=args.seed, progress=True)
    report = vae_report(run, n=args.n, seed=args.seed, folder=args.out)
    print(report["table"])
    print(f"\nsaved {args.out}; {run.info}; {machine()}")
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

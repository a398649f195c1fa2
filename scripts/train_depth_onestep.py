"""Train the image-conditional depth model of reverie.depth.onestep and fine-tune its one-step
estimate end to end (Garcia Martin et al. 2025 in miniature; docs/depth.md).

    python scripts/train_depth_onestep.py [--out FOLDER] [--steps 3000] [--finetune-steps 300]
                                          [--loss l1|ssi] [--size 16] [--threads 1]

Marigold-style diffusion training of ``ConcatNet`` (54 k parameters; photo, coordinates and
noisy log-depth as channels; ``v`` prediction on Stable Diffusion's discrete VP) on 4096
rendered scenes, then end-to-end fine-tuning of the one-step estimate (zeros at ``t_max``)
with the task loss. Writes ``diffusion.pt`` and ``e2e-ft-<loss>.pt`` (state dicts) to
``--out`` and prints the held-out errors of the one-step estimate before and after. Nothing
is bundled: the models are small and this takes a few minutes on one thread
(``reverie bench depth --parts onestep`` trains the same model and measures more).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reverie.depth.onestep import (
    ConcatNet,
    conditional_denoiser,
    finetune_one_step,
    one_step,
    photo_dataset,
    ssi_l1,
    train_conditional,
)
from reverie.process import VP


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="depth-onestep", help="folder for the state dicts")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--loss", choices=("l1", "ssi"), default="l1")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    process = VP.scaled_linear()
    net, record = train_conditional(process, steps=args.steps, size=args.size, net=ConcatNet(),
                                    seed=args.seed)
    print(f"diffusion training: {record}")
    tuned, ft = finetune_one_step(net, process, steps=args.finetune_steps, size=args.size,
                                  loss=args.loss, seed=args.seed + 1)
    print(f"end-to-end fine-tuning: {ft}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "diffusion.pt")
    torch.save(tuned.state_dict(), out / f"e2e-ft-{args.loss}.pt")
    images, target = photo_dataset(64, args.size, seed=args.seed + 10_000)  # held out
    with torch.no_grad():
        for name, model in (("diffusion model", net), ("fine-tuned", tuned)):
            x = one_step(conditional_denoiser(model, process), target.shape, image=images)
            print(f"one-step estimate, {name}: L1 {float((x - target).abs().mean()):.4f}, "
                  f"SSI L1 {float(ssi_l1(x, target.double())):.4f} (encoded log-depth)")
    print(f"wrote {out}/diffusion.pt and {out}/e2e-ft-{args.loss}.pt")


if __name__ == "__main__":
    main()

"""``reverie train``: train a diffusion model (a bundled recipe or your own data tensor)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a diffusion model: a bundled recipe (digits, two-moons) or a data file",
        description="Train a Gaussian diffusion model with reverie.train (EDM preconditioning "
        "and loss, EMA, gradient clipping, checkpoint/resume) and write a model "
        "folder that `reverie sample --model FOLDER` and reverie.load read.",
    )
    p.add_argument(
        "data",
        help="a bundled recipe (digits, two-moons) or a .pt/.npy file holding a "
        "tensor [N, D] (vectors: MLP) or [N, C, H, W] (images: UNet2DModel), or "
        "a .pt dict {'x': tensor, 'labels': LongTensor[N]}",
    )
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default: recipe's, or 2000)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default: recipe's, or 256)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default: recipe's, or 1e-3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and data order")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file written during training (default OUT.ckpt.pt)",
    )
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _read_data(path: Path):
    import numpy as np
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    labels = None
    if path.suffix == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if "x" not in obj:
                raise ValueError(f"{path} holds a dict without an 'x' entry")
            x, labels = obj["x"], obj.get("labels")
        else:
            x = obj
    else:
        raise ValueError(f"data must be a .pt or .npy file, got {path}")
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 4) or x.shape[0] < 2:
        raise ValueError("data must be a tensor [N, D] or [N, C, H, W] with N >= 2")
    return x.float(), (None if labels is None else torch.as_tensor(labels).long())


def run(args: argparse.Namespace) -> int:
    import torch

    from reverie.train import RECIPES, train, train_bundled

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt.pt")
    if args.data in RECIPES:
        folder = train_bundled(
            args.data,
            out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            checkpoint=ckpt,
            resume=args.resume,
            progress=not args.quiet,
        )
        print(f"wrote {folder}")
        return 0

    from reverie.hub import save_diffusers, save_native
    from reverie.nets import MLP, unet_for_images

    x, labels = _read_data(Path(args.data))
    num_classes = int(labels.max()) + 1 if labels is not None else None
    sigma_data = round(float(x.std()), 3)
    torch.manual_seed(args.seed)
    if x.ndim == 2:
        net = MLP(
            dim=x.shape[1],
            hidden=256,
            depth=4,
            num_class_embeds=(num_classes + 1) if num_classes else 0,
        )
    else:
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be square, got {tuple(x.shape[2:])}")
        net = unet_for_images(x.shape[1], x.shape[2], num_classes=num_classes)
    res = train(
        net,
        x,
        prediction="edm",
        sigma_data=sigma_data,
        labels=labels,
        num_classes=num_classes,
        steps=args.steps or 2000,
        batch_size=args.batch_size or 256,
        lr=args.lr or 1e-3,
        seed=args.seed,
        checkpoint=ckpt,
        resume=args.resume,
        progress=not args.quiet,
    )
    meta = {
        "training": {
            "data": str(args.data),
            "steps": res.steps,
            "seed": args.seed,
            "final_loss": res.losses[-1],
        }
    }
    if x.ndim == 2:
        folder = save_native(
            out,
            res.ema,
            net_class="MLP",
            net_config=net.config,
            process=res.process,
            prediction="x0",
            precondition="edm",
            sigma_data=sigma_data,
            time_input="c_noise",
            name=out.name,
            sample_shape=(x.shape[1],),
            num_classes=num_classes,
            null_class=num_classes is not None,
            extra=meta,
        )
    else:
        sched = {
            "_class_name": "EDMEulerScheduler",
            "sigma_min": res.process.t_min,
            "sigma_max": res.process.t_max,
            "sigma_data": sigma_data,
            "prediction_type": "epsilon",
        }
        folder = save_diffusers(
            out,
            res.ema,
            sched,
            name=out.name,
            num_classes=num_classes,
            null_class=num_classes is not None,
            extra=meta,
        )
    print(f"wrote {folder} (final loss {res.losses[-1]:.4f}, {res.seconds:.0f} s)")
    return 0

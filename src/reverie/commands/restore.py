"""``reverie restore``: solve an image inverse problem with a bundled model and save a grid
(ground truth | measurement | posterior samples, one row per test image)."""

from __future__ import annotations

import argparse

TASKS = ("inpaint", "superres", "blur")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="posterior sampling for inpainting / super-resolution / deblurring of test images",
        description="Corrupt test images (inpaint: keep the left half and a quarter of the "
        "right half; superres: 2x2 block averages; blur: Gaussian kernel of std 1), add "
        "Gaussian noise and draw posterior samples with a diffusion prior. The grid shows, per "
        "row: the ground truth, the measurement, then the samples.",
    )
    p.add_argument("--model", default="digits", help="bundled model name or folder")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--method", default="mcg_diff", help="a method of reverie.inverse.METHODS")
    p.add_argument("--steps", type=int, default=50, help="steps (model calls per sample)")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per image")
    p.add_argument("--images", type=int, default=4, help="number of test images")
    p.add_argument("--noise", type=float, default=0.05, help="measurement noise std")
    p.add_argument(
        "--particles",
        type=int,
        default=8,
        help="SMC methods: particles per cloud; each shown sample comes from its own cloud",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf, ...)")
    p.set_defaults(func=_run, distributed_ok=True)  # images sharded under torchrun


def _show(task: str, op, y):
    """The measurement as an image: unobserved pixels grey, low resolution upsampled."""
    import torch

    if task == "inpaint":
        return op.fill(y, 0.0)
    if task == "superres":
        return op.AT(y) * op.factor**2  # nearest-neighbour upsampling
    return y if isinstance(y, torch.Tensor) else torch.as_tensor(y)


def _run(args: argparse.Namespace) -> int:
    import torch

    from reverie._progress import progress_iter
    from reverie.inverse import METHODS, solve

    method = METHODS[args.method].name  # unknown names list the valid ones
    for name in ("steps", "samples", "images", "particles"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.noise < 0:
        raise ValueError(f"--noise must be >= 0, got {args.noise}")
    from reverie.bench.inverse import digits_task

    try:
        from reverie.data import load_digits
        from reverie.hub import load
        from reverie.plot import image_grid
    except ImportError as err:  # the bundled-model support is a separate part of reverie
        raise ValueError(f"restore needs reverie's bundled models and plots: {err}") from err

    model = load(args.model)
    if args.model != "digits" and tuple(model.sample_shape) != (1, 8, 8):
        raise ValueError(
            f"restore uses the digits test images; model {args.model!r} makes "
            f"samples of shape {list(model.sample_shape)}"
        )
    images, _ = load_digits("test")
    if args.images > images.shape[0]:
        raise ValueError(f"--images must be at most {images.shape[0]}, got {args.images}")
    x_true = images[: args.images].to(torch.float32)
    g = torch.Generator().manual_seed(args.seed)
    op = digits_task(args.task, tuple(x_true.shape[1:]), g)
    clean = op.A(x_true)
    y = clean + args.noise * torch.randn(clean.shape, generator=g)
    from reverie import distributed as dist

    rows = []
    # under torchrun each rank restores its share of the images (image i keeps its seed)
    mine = dist.shard(args.images) if dist.is_initialized() else range(args.images)
    for i in progress_iter(mine, dist.is_main(), f"restore ({method})", unit="image"):
        gen = torch.Generator().manual_seed(args.seed + i)
        kw = dict(method=method, steps=args.steps, generator=gen)
        if METHODS[method].particles:  # one sample from each of `samples` independent clouds
            p = args.particles
            x = solve(model.denoiser, op, y[i], args.noise, n=args.samples * p, particles=p, **kw)
            x = x[::p]
        else:
            x = solve(model.denoiser, op, y[i], args.noise, n=args.samples, **kw)
        rows += [x_true[i : i + 1], _show(args.task, op, y[i : i + 1]), x.to(torch.float32)]
    grid = torch.cat(rows) if rows else None
    if dist.is_initialized():
        grid = dist.gather_rows(grid)
    if not dist.is_main():  # rank 0 writes the whole grid
        return 0
    title = (
        f"{args.task}, {method}, {args.steps} steps, noise {args.noise}: "
        "truth | measurement | samples"
    )
    image_grid(grid, args.out, ncol=2 + args.samples, title=title)
    print(f"wrote {args.out}")
    return 0

"""``reverie sample``: draw samples from a model with any sampler and write a picture and/or
the raw samples."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from reverie.commands._options import add_option_argument, parse_options

TENSOR_SUFFIXES = (".pt", ".npy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a model (bundled name, folder or hub id) with any sampler",
        description="Draw samples with any reverie sampler and write an image grid (images), a "
        "scatter plot (2-D models) and/or the raw samples (.pt / .npy).",
    )
    p.add_argument(
        "--model",
        default="digits",
        help="bundled model name (see `reverie models`), model folder or hub id (default: digits)",
    )
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler name (see `reverie samplers`)")
    p.add_argument("--steps", type=int, default=None,
                   help="number of steps (default 10; 20 for text-to-image pipelines)")
    p.add_argument(
        "--grid",
        default=None,
        help="time grid: uniform, trailing, leading, logsnr or karras, or 'fit' to fit one to "
        "the model with reverie.optimize_grid (default: the sampler's default for the model)",
    )
    p.add_argument("--fit-n", type=int, default=256,
                   help="noises used by --grid fit (half fit, half validate; default 256)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (default 64)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed; sample k depends only on seed + k (default 0)"
    )
    p.add_argument(
        "--label",
        default=None,
        help="class label for every sample, a comma list, or 'all' to cycle through "
        "the classes (default: unconditional)",
    )
    p.add_argument(
        "--cfg",
        "--guidance-scale",
        dest="cfg",
        type=float,
        default=None,
        help="guidance scale (1 = none; needs --label or --prompt; default 1, the pipeline's "
        "default for text-to-image pipelines, e.g. 7.5 for Stable Diffusion)",
    )
    p.add_argument(
        "--guidance",
        default="cfg",
        help="guidance method of reverie.guidance.METHODS: cfg, cfg_rescale, apg, "
        "cfg_zero_star, cfg_pp (ddim only), tcfg, mambo_g, fdg (images), coherence_cfg (--model "
        "digits-coherence); on pipelines also pag, "
        "seg, slg (e.g. --option \"layers=['mid']\"), syngen (ddim / dpmpp_2m), sgt (e.g. "
        "--option \"pairs=[('red', 'circle')]\"); its options as --option KEY=VALUE "
        "(write guidance.KEY=... where the sampler has the same option; default cfg)",
    )
    p.add_argument("--prompt", default=None,
                   help="text-to-image pipelines (e.g. a Stable Diffusion folder): the prompt")
    p.add_argument("--negative-prompt", default=None,
                   help="text-to-image pipelines: the negative prompt (default: empty)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="text-to-image pipelines: image size, e.g. 512x512 (default: the model's)")
    add_option_argument(p, "sampler or guidance option, e.g. eta=0.5, s_churn=10, legacy=false "
                           "or momentum=-0.5 (prefix sampler. or guidance. where both have it)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64", "float16", "bfloat16"),
        default="float32",
        help="float32 / float64: the solver state's dtype (the network stays as saved); "
        "float16 / bfloat16: the network's weights, under a float32 solver state "
        "(default float32)",
    )
    p.add_argument("--device", default=None,
                   help="device to run on, e.g. cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument(
        "--trajectories",
        action="store_true",
        help="2-D models: plot the sampling paths instead of the end points",
    )
    p.add_argument(
        "--out",
        action="append",
        default=None,
        metavar="PATH",
        help="output file(s): .png/.pdf/.svg/.jpg (picture), .pt or .npy (samples); "
        "repeatable (default samples.png)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="FILE",
        help="SDEdit / warm start: start from these samples (.npy/.pt: one sample or --n of "
        "them, in model space; .png/.jpg: an image resized to the model's size, grey read as "
        "the pictures reverie writes, dark = high) noised to --strength",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="with --init: the fraction of the grid's steps to run, in (0, 1]; 1 = sampling "
        "from noise (diffusers' img2img strength)",
    )
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for the small bundled models on a "
                        "busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, distributed_ok=True)  # runs sharded under torchrun


def _load_init(spec: str, shape: tuple[int, ...], n: int):
    """``--init FILE``: ``[n, *shape]`` samples in model space from ``.npy``/``.pt`` (one
    sample, repeated, or ``n``) or from an image (``.png``/``.jpg``; pixel values mapped to
    [-1, 1], grey inverted as reverie's image grids draw it)."""
    import numpy as np
    import torch

    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--init: no file {spec!r}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)
    elif suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"--init {spec!r} is an image; this model's samples have shape "
                             f"{shape} (use .npy or .pt)")
        img = Image.open(path).convert("L" if shape[0] == 1 else "RGB")
        img = img.resize((shape[2], shape[1]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).reshape(shape[1], shape[2], -1).permute(2, 0, 1)
        x = (1 - 2 * x) if shape[0] == 1 else (2 * x - 1)  # grey: dark ink = high, as drawn
    else:
        raise ValueError(f"--init must be a .npy, .pt, .png or .jpg file, got {spec!r}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"--init {spec!r} must hold one tensor, got {type(x).__name__}")
    x = x.float()
    if tuple(x.shape) == tuple(shape):
        x = x.expand(n, *shape)
    if tuple(x.shape) != (n, *shape):
        raise ValueError(f"--init holds shape {tuple(x.shape)}; expected {tuple(shape)} or "
                         f"({n}, {', '.join(map(str, shape))}) for --n {n}")
    return x.contiguous()


def _check_outputs(outs: list[str]) -> list[Path]:
    from reverie.plot import FIGURE_SUFFIXES

    paths = []
    for o in outs:
        path = Path(o).expanduser()
        suffix = path.suffix.lower()
        if suffix not in FIGURE_SUFFIXES + TENSOR_SUFFIXES:
            raise ValueError(
                f"cannot write {o}: expected a picture ({', '.join(FIGURE_SUFFIXES)}) or samples "
                f"({', '.join(TENSOR_SUFFIXES)})"
            )
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise ValueError(f"cannot write {o}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise ValueError(f"cannot write {o}: the folder {parent} is not writable")
        if path.is_dir():
            raise ValueError(f"cannot write {o}: it is a folder")
        paths.append(path)
    return paths


def _labels(spec: str | None, model, n: int):
    import torch

    if spec is None:
        return None
    if model.num_classes is None:
        raise ValueError(f"model {model.name!r} is not class-conditional; drop --label")
    if spec == "all":
        return torch.arange(n) % model.num_classes
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--label expects an integer, a comma list or 'all', got {spec!r}"
        ) from None
    if len(values) == 1:
        return model.check_labels(values[0])
    if len(values) != n:
        raise ValueError(f"--label lists {len(values)} labels for --n {n} samples")
    return model.check_labels(torch.tensor(values))


def _write_tensor(x, path: Path) -> None:
    from reverie._io import save_array

    save_array(x, path)


def _fit_grid(model, info, args, labels, dtype, options):
    """``--grid fit``: a grid fitted to this model (and labels / guidance) and sampler."""
    import torch

    from reverie.grid_fit import optimize_grid

    n = args.fit_n + args.fit_n % 2  # two equal halves
    if labels is not None and isinstance(labels, torch.Tensor) and labels.ndim > 0:
        labels = labels.repeat(n // (2 * len(labels)) + 1)[: n // 2]  # the labels' mix
    den = model.denoiser if labels is None else model.conditional(
        labels, args.cfg, guidance=args.guidance, guidance_options=args.guidance_options)
    grid, report = optimize_grid(
        den, info, args.steps, shape=model.sample_shape, n=n,
        generator=torch.Generator().manual_seed(args.seed + 2_000_003), dtype=dtype,
        return_report=True, progress=not args.quiet, **options,
    )
    print(f"fitted grid ({report.source}; validation loss {report.val_loss:.4g} vs default "
          f"{report.default_val_loss:.4g}; {report.nfe} model calls): "
          f"{[round(float(t), 4) for t in grid]}")
    return grid


def _route_options(args: argparse.Namespace, info, options: dict) -> dict:
    """Split ``--option`` between the sampler and the ``--guidance`` method; the guidance
    method's part lands in ``args.guidance_options``; returns the sampler's."""
    from reverie.commands._options import split_options
    from reverie.guidance import COMMON_OPTIONS, METHODS

    method = METHODS[args.guidance]  # unknown names list the valid ones
    args.guidance = method.name
    if method.family not in ("cfg", "perturbed", "semantic") or method.weak_model:
        raise ValueError(f"--guidance {method.name} needs a classifier, a loss or a second "
                         "model, which the command line cannot give; use reverie.guidance.guide "
                         "in Python (the command line takes cfg, cfg_rescale, apg, "
                         "cfg_zero_star, cfg_pp, tcfg, mambo_g and fdg, and pag, seg, slg, "
                         "syngen and sgt on pipelines)")
    known = {**COMMON_OPTIONS, **method.options}
    if method.family == "perturbed":  # a pipeline builds `perturb` from these
        known = {**known, "layers": None, "fqn": None, "blur_sigma": None}
    if method.family == "semantic":  # a pipeline builds `binding` / `concepts` from these
        known = {**known, "pairs": None, "res": None}
    parts = split_options(options, {"sampler": info.options, "guidance": known})
    args.guidance_options = parts["guidance"]
    return parts["sampler"]


def _is_text_to_image(model) -> bool:
    from reverie.pipelines import LatentPipeline

    return isinstance(model, LatentPipeline)


def _dtypes(name: str):
    """``--dtype`` -> (solver state dtype, network dtype or None to keep the saved one)."""
    import torch

    if name in ("float16", "bfloat16"):
        return torch.float32, getattr(torch, name)
    return getattr(torch, name), None


def _size(spec: str | None) -> tuple[int | None, int | None]:
    if spec is None:
        return None, None
    try:
        h, w = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size expects HEIGHTxWIDTH, e.g. 512x512, got {spec!r}") from None
    return h, w


def _text_to_image(model, args, info, outs, options) -> int:
    """``reverie sample --model SD_FOLDER --prompt ...``: text to image with any sampler."""
    import torch

    from reverie import plot

    if args.prompt is None:
        raise ValueError(f"{args.model!r} is a text-to-image pipeline: pass --prompt")
    if args.label is not None or args.trajectories or args.grid == "fit":
        raise ValueError("--label, --trajectories and --grid fit are not available for "
                         "text-to-image pipelines")
    height, width = _size(args.size)
    cfg = model.default_guidance if args.cfg is None else args.cfg
    t0 = time.perf_counter()
    images = model.sample(
        args.prompt, args.negative_prompt, sampler=info.name, steps=args.steps, grid=args.grid,
        guidance_scale=cfg, guidance=args.guidance, guidance_options=args.guidance_options,
        height=height, width=width, n=args.n,
        generator=torch.Generator().manual_seed(args.seed), output_type="pt",
        dtype=_dtypes(args.dtype)[0], progress=not args.quiet, **options,
    ).detach().cpu()
    seconds = time.perf_counter() - t0
    what = f"{args.prompt!r}, {info.name}, {args.steps} steps, {args.guidance} {cfg:g}"
    for path in outs:
        if path.suffix.lower() in TENSOR_SUFFIXES:
            _write_tensor(images, path)
        else:
            plot.image_grid(images, path, value_range=(0.0, 1.0), title=what, scale=1.5)
        print(f"wrote {path}")
    print(f"{args.n} images of {what} in {seconds:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from reverie import distributed as dist
    from reverie import plot
    from reverie.hub import load
    from reverie.samplers import SAMPLERS, resolve_grid
    from reverie.samplers import run as run_sampler

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.fit_n < 4:
        raise ValueError(f"--fit-n must be >= 4, got {args.fit_n}")
    info = SAMPLERS[args.sampler]  # unknown names list the valid ones
    outs = _check_outputs(args.out or ["samples.png"])
    options = _route_options(args, info, parse_options(args.option))
    state_dtype, net_dtype = _dtypes(args.dtype)
    model = load(args.model, dtype=net_dtype, device=args.device)
    sharded = dist.is_initialized()  # under torchrun: this rank draws its share of the samples
    if sharded and (_is_text_to_image(model) or args.trajectories or args.init is not None):
        raise ValueError("text-to-image pipelines, --trajectories and --init do not run under "
                         "torchrun yet; run them in one process")
    if (args.init is None) != (args.strength is None):
        raise ValueError("--init and --strength go together (SDEdit: start from --init noised to "
                         "--strength in (0, 1])")
    if args.init is not None:
        if _is_text_to_image(model) or args.trajectories:
            raise ValueError("--init/--strength work with reverie's own models, not with "
                             "text-to-image pipelines or --trajectories")
        options = {**options, "strength": args.strength,
                   "init": _load_init(args.init, tuple(model.sample_shape), args.n)}
    if _is_text_to_image(model):
        args.steps = 20 if args.steps is None else args.steps
        return _text_to_image(model, args, info, outs, options)
    args.steps = 10 if args.steps is None else args.steps
    from reverie.guidance import METHODS

    if METHODS[args.guidance].family == "perturbed":
        raise ValueError(f"--guidance {args.guidance} perturbs the attention layers of a "
                         f"diffusers pipeline; {args.model!r} is not one")
    if METHODS[args.guidance].family == "semantic":
        raise ValueError(f"--guidance {args.guidance} reads a text-to-image pipeline's prompt "
                         f"(and cross-attention); {args.model!r} is not one")
    if args.prompt is not None or args.negative_prompt is not None or args.size is not None:
        raise ValueError(f"--prompt, --negative-prompt and --size are for text-to-image "
                         f"pipelines; {args.model!r} is not one")
    args.cfg = 1.0 if args.cfg is None else args.cfg
    labels = _labels(args.label, model, args.n)
    guided = args.cfg != 1.0 or args.guidance != "cfg" or args.guidance_options
    if guided and labels is None:
        raise ValueError("--cfg / --guidance need --label (guidance pushes samples towards a "
                         "class)")
    dtype = state_dtype
    is_2d = model.sample_shape == (2,)
    path_points = []

    t0 = time.perf_counter()
    if args.grid == "fit":
        args.grid = _fit_grid(model, info, args, labels, dtype, options)
    if args.trajectories:
        if not is_2d:
            raise ValueError("--trajectories is for 2-D models (e.g. --model two-moons)")
        from reverie._random import randn, seeded_generators

        den = model.denoiser if labels is None else model.conditional(
            labels, args.cfg, guidance=args.guidance, guidance_options=args.guidance_options)
        grid = resolve_grid(info, model.process, args.steps, args.grid)
        noise = randn((args.n, 2), seeded_generators(args.seed, args.n), dtype=dtype)
        x = noise * float(model.process.sigma(grid[0]))
        # plotted in variance-preserving coordinates x / sqrt(alpha^2 + sigma^2): unit noise at
        # the start, the data at the end, for any process
        a0, s0 = float(model.process.alpha(grid[0])), float(model.process.sigma(grid[0]))
        path_points.append(x / (a0**2 + s0**2) ** 0.5)
        out = run_sampler(
            info,
            den,
            x,
            grid,
            generator=seeded_generators(args.seed + 1_000_003, args.n),
            progress=not args.quiet,
            callback=lambda st, sch: path_points.append(
                st.x / (sch.alpha[st.i] ** 2 + sch.sigma[st.i] ** 2) ** 0.5
            ),
            **options,
        )
        samples, nfe = out.x0, out.nfe
    else:
        kw = dict(sampler=args.sampler, steps=args.steps, grid=args.grid, cfg_scale=args.cfg,
                  guidance=args.guidance, guidance_options=args.guidance_options, dtype=dtype,
                  progress=not args.quiet and dist.is_main(), **options)
        if sharded:  # rows lo..hi are model.sample(n)[lo:hi]: sample k depends on seed + k only
            dist.agree((args.n, dist.fingerprint(model.net)), "--n or the model's weights")
            per_row = isinstance(labels, torch.Tensor) and labels.ndim > 0
            samples = dist.map_rows(lambda lo, hi: model.sample(
                hi - lo, seed=args.seed + lo, labels=labels[lo:hi] if per_row else labels, **kw),
                args.n)
        else:
            samples = model.sample(args.n, seed=args.seed, labels=labels, **kw)
        # SDEdit runs the last int(steps * strength) steps of the grid
        nfe = info.nfe(args.steps if args.init is None else int(args.steps * args.strength))
    seconds = time.perf_counter() - t0
    samples = samples.detach().cpu()
    if not dist.is_main():  # rank 0 writes and reports for every rank
        return 0

    what = f"{model.name}, {args.sampler}, {args.steps} steps ({nfe} NFE)"
    if labels is not None:
        what += f", label {args.label}" + (f", {args.guidance} {args.cfg:g}" if guided else "")
    for path in outs:
        suffix = path.suffix.lower()
        if suffix in TENSOR_SUFFIXES:
            _write_tensor(samples, path)
        elif is_2d:
            lab = labels if isinstance(labels, torch.Tensor) else None
            if args.trajectories:
                plot.trajectories(torch.stack(path_points), path, title=what)
            else:
                plot.scatter(samples, path, labels=lab, title=what)
        elif len(model.sample_shape) == 3 and model.sample_shape[0] in (1, 3):
            ncol = model.num_classes if args.label == "all" else None
            plot.image_grid(samples, path, ncol=ncol, title=what)
        else:
            raise ValueError(
                f"cannot draw samples of shape {model.sample_shape}; write .pt or .npy instead"
            )
        print(f"wrote {path}")
    print(f"{args.n} samples from {what} in {seconds:.1f} s")
    return 0

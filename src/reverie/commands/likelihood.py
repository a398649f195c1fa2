"""``reverie likelihood``: log-likelihood and bits/dim of data under a model, by the
probability-flow ODE (:func:`reverie.likelihood.log_likelihood`)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from reverie._io import write_text
from reverie._progress import progress_iter


def register(sub: argparse._SubParsersAction) -> None:
    from reverie.likelihood import DIVERGENCES, PROBES, TABLEAUS

    p = sub.add_parser(
        "likelihood",
        help="log-likelihood / bits per dim of data under a model (probability-flow ODE)",
        description="Log-likelihood of data under a diffusion model by the probability-flow "
                    "ODE (Song et al. 2021) with an adaptive Runge-Kutta solver.",
    )
    p.add_argument("--model", required=True,
                   help="bundled model (digits, two-moons), model folder, or exact toy mixture "
                        "(ring, grid, left, right, top, bottom)")
    p.add_argument("--data", default=None,
                   help="'test' (held-out), 'train' or 'all' digits; or a .pt/.npy/.npz file of "
                        "[N, *sample_shape] data; default for toys: samples of the toy itself")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                   help="score only the first N points")
    p.add_argument("--divergence", choices=DIVERGENCES, default=None,
                   help="default: exact up to 16 dimensions, hutchinson above")
    p.add_argument("--probe", choices=PROBES, default="rademacher")
    p.add_argument("--n-probes", type=int, default=1)
    p.add_argument("--method", choices=list(TABLEAUS), default="dopri5")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--bin-width", type=float, default=None,
                   help="quantisation step of the data: dequantise uniformly and report discrete "
                        "bits/dim (default 1/8 for digits, none otherwise; 0 disables)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for small models on a busy machine)")
    p.add_argument("--out", default=None, help="write per-sample results as JSON here")
    p.set_defaults(func=_run, distributed_ok=True)  # batches sharded under torchrun


def _load_data(spec: str | None, model, n: int | None, seed: int) -> tuple[torch.Tensor, str]:
    if spec is None:
        if model.mixture is None:
            raise ValueError("--data is required for this model (e.g. --data test for digits)")
        count = n or 512
        return model.mixture.sample(count, torch.Generator().manual_seed(seed)), "toy samples"
    if spec in ("test", "heldout", "train", "all"):
        if model.loaded is None or model.loaded.name != "digits":
            raise ValueError(f"--data {spec} names a digits split; this model is {model.name!r}")
        from reverie.data import load_digits

        return load_digits("test" if spec == "heldout" else spec)[0], f"digits ({spec})"
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no data file {spec!r} (or use test/train/all for digits)")
    if path.suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix in (".npy", ".npz"):
        import numpy as np

        arr = np.load(path)
        if path.suffix == ".npz":
            key = "x" if "x" in arr.files else arr.files[0]
            arr = arr[key]
        x = torch.from_numpy(np.asarray(arr))
    else:
        raise ValueError(f"unsupported data file {spec!r}; expected .pt, .npy or .npz")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{spec!r} must hold one tensor of data, got {type(x).__name__}")
    shape = model.sample_shape
    if x.ndim >= 2 and x[0].numel() == math.prod(shape) and tuple(x.shape[1:]) != tuple(shape):
        x = x.reshape(x.shape[0], *shape)
    return x, str(path)


def _run(args: argparse.Namespace) -> int:
    from reverie import distributed as dist
    from reverie.commands._models import resolve
    from reverie.likelihood import bits_per_dim, log_likelihood

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    (model,) = resolve([args.model])
    x, source = _load_data(args.data, model, args.n, args.seed)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if args.n is not None:
        x = x[: args.n]
    x = x.to(torch.float64)
    bin_width = args.bin_width
    if bin_width is None and model.loaded is not None and model.loaded.name == "digits":
        bin_width = 1.0 / 8.0
    if bin_width is not None and bin_width <= 0:
        bin_width = None
    g = torch.Generator().manual_seed(args.seed)
    if bin_width is not None:  # uniform dequantisation (Theis et al. 2016)
        x = x + bin_width * (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5)
    if args.divergence is None:
        args.divergence = "exact" if x[0].numel() <= 16 else "hutchinson"
    lls, nfes = [], []
    t0 = time.perf_counter()
    starts = range(0, x.shape[0], args.batch_size)
    if dist.is_initialized():  # under torchrun each rank takes its share of the batches, each
        # batch with its own generator as in one process: the same numbers, bitwise
        dist.agree((tuple(x.shape), float(x.sum()), dist.fingerprint(model.denoiser)),
                   "the data or the model's weights")
        mine = dist.shard(len(starts))
        starts = starts[mine.start : mine.stop]
    for start in progress_iter(starts, dist.is_main(), "likelihood", unit="batch"):
        xb = x[start:start + args.batch_size]
        res = log_likelihood(
            model.denoiser, xb, args.divergence, probe=args.probe, n_probes=args.n_probes,
            generator=torch.Generator().manual_seed(args.seed + 1 + start), method=args.method,
            rtol=args.rtol, atol=args.atol, sample_shape=model.sample_shape, return_info=True)
        lls.append(res.log_likelihood)
        nfes.append(res.nfe)
    if dist.is_initialized():
        lls, nfes = [dist.gather_rows(torch.cat(lls) if lls else None)], dist.gather_objects(nfes)
    seconds = time.perf_counter() - t0
    if not dist.is_main():  # rank 0 reports and writes
        return 0
    ll = torch.cat(lls)
    dims = math.prod(model.sample_shape)
    bpd = bits_per_dim(ll, dims)
    se = lambda v: float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")  # noqa: E731
    print(f"model {args.model} ({model.process!r}), data: {source}, {len(ll)} points of "
          f"{dims} dims, divergence {args.divergence}, {args.method} rtol={args.rtol:g}")
    print(f"log-likelihood: {float(ll.mean()):.4f} +- {se(ll):.4f} nats per point")
    print(f"bits/dim (continuous density): {float(bpd.mean()):.4f} +- {se(bpd):.4f}")
    result = {"model": args.model, "data": source, "n": len(ll), "dims": dims,
              "divergence": args.divergence, "log_likelihood_mean": float(ll.mean()),
              "bits_per_dim": float(bpd.mean()), "nfe_per_batch": nfes, "seconds": seconds}
    if bin_width is not None:
        dbpd = bits_per_dim(ll, dims, bin_width=bin_width)
        print(f"bits/dim (dequantised, bin width {bin_width:g}): {float(dbpd.mean()):.4f} "
              f"+- {se(dbpd):.4f}")
        result["bits_per_dim_discrete"] = float(dbpd.mean())
        result["bin_width"] = bin_width
    if model.mixture is not None and bin_width is None:
        exact = model.mixture.log_prob(x)
        err = (ll - exact).abs()
        print(f"exact log-density: {float(exact.mean()):.4f}; mean |error| {float(err.mean()):.2e}")
        result["exact_log_likelihood_mean"] = float(exact.mean())
    print(f"NFE per batch: {nfes}; {seconds:.1f} s")
    if args.out:
        result["log_likelihood"] = ll.tolist()
        path = write_text(json.dumps(result, indent=2), args.out)
        print(f"results written to {path}")
    return 0

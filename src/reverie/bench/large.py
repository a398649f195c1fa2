"""Large and long outputs against exact Gaussian fields (reverie.large, docs/large.md).

A window model is the exact denoiser of a window-sized stationary Gaussian field; tiled,
panoramic, any-size and FIFO outputs of a bigger field are compared with the big field's
exact covariance. The samplers are deterministic and the denoisers linear, so each output
covariance is computed exactly by pushing the identity through (no Monte Carlo). Tables:
covariance error per lag, at the seams of a naive tiling vs inside the tiles, by overlap and
blending; the panorama seam; any-size refinement by strength; FIFO by length and variant.
``--plot PATH`` writes a picture of tiled 2-D fields and a wrap-around panorama.

FAM diffusion (paper 42): on a ring field whose "native" high-resolution model has a wrong
low-frequency spectrum, the output spectrum of frequency modulation against the truth's
(exact, ``linear_covariance``); on the digits model at twice its resolution (16 x 16), the
Frechet distance and conditional accuracy of ``reverie bench digits``' judge after 2 x 2
average pooling (``--fam-n`` samples; 0 skips it; ``--fam-plot PATH`` writes a picture).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie import EDM, DenoiserBase, sample
from reverie.large import fifo, fifo_noise_frames, rotating, tiled, upscale
from reverie.reference.fields import GaussianField, linear_covariance

from .common import format_table, save_result

PROC = EDM()
LAGS = (0, 1, 2, 4, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=16, help="window (tile) size, 1-D")
    parser.add_argument("--size", type=int, default=64, help="canvas size, 1-D")
    parser.add_argument("--lengthscale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=40, help="dpmpp_2m steps")
    parser.add_argument("--lengths", type=str, default="16,32,64", help="FIFO lengths")
    parser.add_argument("--plot", type=str, default=None, help="write a PNG of tiled fields")
    parser.add_argument("--shapes", type=str, default=None,
                        help="write a PNG of wide canvases of the bundled shapes model")
    parser.add_argument("--fam-n", type=int, default=200,
                        help="digits samples of the FAM run at 16 x 16 (0 skips it)")
    parser.add_argument("--fam-plot", type=str, default=None,
                        help="write a PNG of the FAM digits at 16 x 16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)


def _cov(den: DenoiserBase, shape: tuple[int, ...], steps: int) -> torch.Tensor:
    d = 1
    for s in shape:
        d *= s
    return linear_covariance(lambda z: sample(den, z.reshape(-1, *shape), "dpmpp_2m", steps), d)


def _by_lag(err: torch.Tensor) -> list[float]:
    return [float(torch.diagonal(err, k).mean()) for k in LAGS if k < err.shape[0]]


def _seams(err: torch.Tensor, starts: list[int], tile: int) -> tuple[float, float]:
    """Largest error (lags 0 and 1) on the entries next to a window edge of the tiling (the
    seams), and on the others."""
    n = err.shape[0]
    near = torch.zeros(n, dtype=torch.bool)
    for e in {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < n}:
        near[e - 1: e + 1] = True
    pair = torch.maximum(torch.diagonal(err), torch.cat([torch.diagonal(err, 1), err[-1:, -1]]))
    return float(pair[near].max()), float(pair[~near].max())


def tiling_table(args: argparse.Namespace) -> list[list[Any]]:
    w, n, ell = args.window, args.size, args.lengthscale
    win = GaussianField.stationary(w, ell).denoiser(PROC)
    big = GaussianField.stationary(n, ell)
    rows = [["one window (the sampler's own error)", "-", "-", 1,
             *_by_lag((_cov(win, (w,), args.steps) - win.field.cov).abs()), "-", "-"]]
    for overlap in (0, w // 8, w // 4, w // 2, 3 * w // 4):
        for weights in ("uniform", "gaussian", "linear"):
            if overlap == 0 and weights != "uniform":
                continue
            den = tiled(win, w, overlap, weights=weights)
            err = (_cov(den, (n,), args.steps) - big.cov).abs()
            seam, inside = _seams(err, den.starts((n,))[0], w)
            rows.append(["tiled", overlap, weights, len(den.starts((n,))[0]), *_by_lag(err),
                         seam, inside])
    covs = [_cov(tiled(win, w, 0, shift=True, generator=torch.Generator().manual_seed(s)),
                 (n,), args.steps) for s in range(4)]
    err = (torch.stack(covs).mean(0) - big.cov).abs()
    rows.append(["FSTD: no overlap, random shift per step", 0, "uniform", n // w + 1,
                 *_by_lag(err), *_seams(err, list(range(0, n, w)), w)])
    return rows


def panorama_table(args: argparse.Namespace) -> list[list[Any]]:
    w, n, ell = args.window, args.size, args.lengthscale
    ring = GaussianField.stationary(n, ell, periodic=True)
    win = GaussianField.stationary(w, ell).denoiser(PROC)
    flat = GaussianField.stationary(n, ell).denoiser(PROC)
    rows = []
    for name, den in [("tiles, no wrap", tiled(win, w, w // 2, weights="linear")),
                      ("tiles, wrap-around", tiled(win, w, w // 2, weights="linear", wrap=True)),
                      ("full-width open model", flat),
                      ("full-width, rotated 11 per step", rotating(flat, 11))]:
        cov = _cov(den, (n,), args.steps)
        err = (cov - ring.cov).abs()
        rows.append([name, float(err[n - 1, 0]), float(err[n - 2: n + 1, :2].max()),
                     float(err.max())])
    return rows


def tiling_2d_table(args: argparse.Namespace) -> list[list[Any]]:
    win = GaussianField.stationary((10, 10), args.lengthscale).denoiser(PROC)
    big = GaussianField.stationary((16, 24), args.lengthscale)
    rows = []
    for overlap in (0, 5):
        err = (_cov(tiled(win, (10, 10), overlap, weights="linear"), (16, 24), args.steps)
               - big.cov).abs()
        rows.append([overlap, float(torch.diagonal(err).max()), float(err.max())])
    return rows


def any_size_table(args: argparse.Namespace) -> list[list[Any]]:
    w, n, ell = args.window, 3 * args.window, 1.5 * args.lengthscale
    base = GaussianField.stationary((1, w), ell * w / n).denoiser(PROC)
    win = GaussianField.stationary((1, w), ell).denoiser(PROC)
    big = GaussianField.stationary(n, ell)
    rows = []
    for strength in (0.2, 0.5, 0.8, 1.0):
        def fn(z: torch.Tensor, strength: float = strength) -> torch.Tensor:
            small = sample(base, z[:, None, :w], "dpmpp_2m", 30)
            return upscale(win, small, (n,), tile=w, overlap=w // 2, shift=False,
                           weights="linear", strength=strength, steps=30, noise=z[:, None, w:],
                           mode="linear")

        err = (linear_covariance(fn, w + n) - big.cov).abs()
        rows.append([strength, int(strength * 30), *_by_lag(err), float(err.max())])
    return rows


def fifo_table(args: argparse.Namespace) -> list[list[Any]]:
    space = GaussianField.stationary(2, 1.0)
    rho, f, parts = 0.5, 8, 4
    rows = []

    class Mislabelled(DenoiserBase):  # the model is told noise levels 15% too high
        process, window = PROC, f

        def __call__(self, x: torch.Tensor, t: Any, **cond: Any) -> torch.Tensor:
            return win(x, t * 1.15)

    win = GaussianField.ar1(f, rho, space).denoiser(PROC)
    variants: list[tuple[str, int, int, dict]] = []
    for length in (int(v) for v in args.lengths.split(",")):
        variants.append(("look-ahead, dpmpp_2m", length, parts, {}))
    last = variants[-1][1]
    variants += [("no look-ahead, dpmpp_2m", last, parts, {"lookahead": False}),
                 ("look-ahead, ddim (the paper's step)", last, parts, {"solver": "ddim"}),
                 ("look-ahead, 1 partition", last, 1, {}),
                 ("look-ahead, 2 partitions", last, 2, {}),
                 ("wrong ladder (model told t x 1.15)", last, parts, {"model": Mislabelled()})]
    for name, length, p, kw in variants:
        model = kw.pop("model", win)
        kw.setdefault("solver", "dpmpp_2m")
        k = fifo_noise_frames(length, f, p)
        t0 = time.perf_counter()
        cov = linear_covariance(
            lambda z, model=model, length=length, p=p, k=k, kw=kw: fifo(
                model, length, (z.shape[0], 2), partitions=p, noise=z.reshape(-1, k, 2), **kw),
            2 * k)
        secs = time.perf_counter() - t0
        exact = GaussianField.ar1(length, rho, space).cov
        err = (cov - exact).abs().reshape(length, 2, length, 2)
        lag = [float(torch.stack([err[i, :, i + j] for i in range(length - j)]).max())
               for j in range(4)]
        var = torch.diagonal(cov).reshape(length, 2)[:, 0]
        half = length // 2
        drift = float(var[half:].mean() - var[:half].mean())
        rows.append([name, length, p, *lag, float(var[-1]), drift, secs])
    return rows


def fam_field_table(args: argparse.Namespace) -> list[list[Any]]:
    """FAM's frequency modulation on :func:`reverie.reference.spectral.resolution_pair`: the
    largest covariance error and the largest relative spectrum error at and below the native
    model's wrong band (``|f| <= 12``) and above it."""
    from reverie.large.fam import fam, fam_upscale, fourier_resize
    from reverie.reference.spectral import resolution_pair, ring_spectrum

    n, m, cut, steps = 64, 32, 12, args.steps
    truth, trained, native = resolution_pair(n, m, cut)
    tden, nden = trained.denoiser(PROC), native.denoiser(PROC)
    exact = ring_spectrum(truth.cov)
    freq = torch.fft.fftfreq(n, 1 / n).abs()
    low, high = freq <= cut, (freq > cut) & (exact > 1e-3)

    def two_stage(make):  # the global sample from z[:, :m], the high-resolution run from the rest
        return linear_covariance(
            lambda z: make(sample(tden, z[:, :m], "dpmpp_2m", steps), z[:, m:]), n + m)

    variants = [
        ("native model alone", "-", "-",
         linear_covariance(lambda z: sample(nden, z, "dpmpp_2m", steps), n)),
        ("enlarged global sample alone", "-", "-",
         linear_covariance(lambda z: fourier_resize(sample(tden, z, "dpmpp_2m", steps), (n,)),
                           m))]
    for filt, c in (("lowpass", 0.75), ("fam", 0.5), ("fam", 1.0)):
        variants.append((f"FM {filt}, c={c}", "full run", "-", two_stage(
            lambda ref, z, f=filt, c=c: sample(fam(nden, ref, c=c, filter=f), z, "dpmpp_2m",
                                               steps))))
        for strength in (0.4, 0.6, 0.8):
            variants.append((f"FM {filt}, c={c}", "diffuse-denoise", strength, two_stage(
                lambda ref, z, f=filt, c=c, s=strength: fam_upscale(
                    nden, ref, (n,), strength=s, c=c, filter=f, steps=steps, noise=z))))
    rows = []
    for name, how, strength, cov in variants:
        rel = (ring_spectrum(cov) - exact).abs() / exact
        rows.append([name, how, strength, float((cov - truth.cov).abs().max()),
                     float(rel[low].max()), float(rel[high].max())])
    return rows


def fam_digits_table(args: argparse.Namespace) -> tuple[list[list[Any]], dict]:
    """The digits model (8 x 8) at 16 x 16: direct sampling, the enlarged 8 x 8 sample,
    SDEdit of it, FAM's FM (paper filter and constant low-pass) and FM + AM, judged after
    2 x 2 average pooling (Frechet distance to the test digits, conditional accuracy) with the
    high-frequency energy (mean square of what the pooling-and-enlarging removes)."""
    from torch.nn import functional as F

    from reverie.bench.digits import Judge, frechet_distance
    from reverie.hub import load
    from reverie.large.fam import attention_modulation, fam_upscale

    model, judge, n = load("digits"), Judge(args.seed), args.fam_n
    labels = torch.arange(n) % 10
    den = model.conditional(labels)
    ref = sample(den, model.noise(n, seed=args.seed), "dpmpp_2m", 20)
    z = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(args.seed + 1))
    up = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False)

    def fam_run(s, filt, am=False):
        if not am:
            return fam_upscale(den, ref, (16, 16), strength=s, filter=filt, mode="bilinear",
                               noise=z)
        with attention_modulation(den, model.net, ref, mode="bilinear",
                                  generator=torch.Generator().manual_seed(args.seed + 2)) as m:
            return fam_upscale(m, ref, (16, 16), strength=s, filter=filt, mode="bilinear",
                               noise=z)

    runs: list[tuple[str, Any, Any]] = [
        ("the 8 x 8 sample (trained resolution)", "-", lambda: ref),
        ("direct 16 x 16 sampling", "-", lambda: sample(den, z, "dpmpp_2m", 20)),
        ("bilinear enlargement of the 8 x 8 sample", "-", lambda: up)]
    for s in (0.5, 0.8):
        runs += [("SDEdit of the enlargement", s,
                  lambda s=s: sample(den, z, "dpmpp_2m", 20, init=up, strength=s)),
                 ("FM, paper filter (c=0.5)", s, lambda s=s: fam_run(s, "fam")),
                 ("FM, low-pass (c=0.5)", s, lambda s=s: fam_run(s, "lowpass")),
                 ("FM low-pass + AM (lam=0.5)", s, lambda s=s: fam_run(s, "lowpass", True))]
    rows, images = [], {}
    for name, strength, fn in runs:
        t0 = time.process_time()
        x = fn()
        secs = time.process_time() - t0
        small = F.avg_pool2d(x, 2) if x.shape[-1] == 16 else x
        hf = (float((x - F.interpolate(small, size=(16, 16), mode="bilinear",
                                       align_corners=False)).pow(2).mean())
              if x.shape[-1] == 16 else 0.0)
        p = judge.proba(small)
        rows.append([name, strength, frechet_distance(judge.features(small), judge.test_features),
                     float((p.argmax(1) == labels.numpy()).mean()), hf, secs])
        images[f"{name} {strength}"] = x[:10]
        print(f"  {name} {strength}: FD {rows[-1][2]:.3f}", flush=True)
    return rows, images


def plot(path: str, args: argparse.Namespace) -> None:
    from reverie.plot import _figure, save_figure

    g = torch.Generator().manual_seed(args.seed)
    w, ell = 16, 3.0
    win = GaussianField.stationary((w, w), ell).denoiser(PROC)
    noise = torch.randn(1, 32, 128, generator=g, dtype=torch.float64)
    panels = [("naive tiles (overlap 0)", tiled(win, (w, w), 0), 0),
              ("MultiDiffusion, overlap 8, linear blend",
               tiled(win, (w, w), 8, weights="linear"), 0),
              ("wrap-around panorama, rolled by half (the seam is in the middle)",
               tiled(win, (w, w), 8, weights="linear", wrap=(False, True)), 64)]
    fig = _figure(10, 5.2)
    for i, (title, den, roll) in enumerate(panels):
        x = sample(den, noise, "dpmpp_2m", 30)[0]
        ax = fig.add_subplot(3, 1, i + 1)
        ax.imshow(torch.roll(x, roll, -1).numpy(), cmap="RdBu", vmin=-2.5, vmax=2.5)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    save_figure(fig, path)


def plot_shapes(path: str, args: argparse.Namespace) -> None:
    """Wide canvases (8 x 32 latents, 32 x 128 pixels) of the bundled ``shapes`` model (8 x 8
    latents) under MultiDiffusion windows of 8 x 8 overlapping by 4, one prompt per row."""
    from reverie import load
    from reverie.plot import image_grid

    pipe = load("shapes")
    rows = []
    for prompt in ("a red circle in the middle", "a blue square in the middle",
                   "a green triangle in the middle"):
        den = pipe.denoiser(pipe.encode_prompt(prompt, ""), guidance_scale=1.5)
        z = torch.randn(1, 4, 8, 32, generator=torch.Generator().manual_seed(args.seed))
        rows.append(pipe.decode(sample(tiled(den, (8, 8), 4), z, "dpmpp_2m", 20)))
    image_grid(torch.cat(rows) * 2 - 1, path, ncol=1, cmap="viridis", scale=2.5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    tiles = tiling_table(args)
    lag_cols = [f"lag {k}" for k in LAGS if k < args.window]
    print(f"Tiled 1-D field: canvas {args.size}, window {args.window}, SE lengthscale "
          f"{args.lengthscale}; mean |covariance error| per lag, and the largest error (lags "
          f"0-1) next to a window edge (seams) vs elsewhere (FSTD: the unshifted edges)")
    print(format_table(["method", "overlap", "weights", "windows", *lag_cols, "seam max",
                        "elsewhere max"], tiles))
    result["tiling"] = tiles
    pano = panorama_table(args)
    print("\nPanorama (a periodic field on a ring): covariance error across the wrap seam")
    print(format_table(["model", "seam lag 1", "seam max", "max"], pano))
    result["panorama"] = pano
    two = tiling_2d_table(args)
    print("\nTiled 2-D field: canvas 16 x 24, window 10 x 10, linear blend")
    print(format_table(["overlap", "variance max error", "max error"], two))
    result["tiling_2d"] = two
    anys = any_size_table(args)
    print(f"\nAny-size: a {args.window}-point coarse field, interpolated to {3 * args.window} "
          "and refined by tiled SDEdit")
    print(format_table(["strength", "steps run", *lag_cols, "max"], anys))
    result["any_size"] = anys
    ff = fifo_table(args)
    print("\nFIFO: AR(1) frames (rho 0.5) of a 2-point field, window 8 frames; largest "
          "covariance error per frame lag, the last frame's variance (exact 1.0) and the "
          "drift (mean variance of the second half - first half)")
    print(format_table(["variant", "frames", "partitions", "lag 0", "lag 1", "lag 2", "lag 3",
                        "last var", "drift", "seconds"], ff))
    result["fifo"] = ff
    famf = fam_field_table(args)
    print("\nFAM frequency modulation on a 64-point ring: the native model's spectrum is wrong "
          "at |f| <= 12, the global pass is the truth seen at 32 points; largest covariance "
          "error and largest relative spectrum error at |f| <= 12 and above")
    print(format_table(["variant", "run", "strength", "cov max err", "spectrum low",
                        "spectrum high"], famf))
    result["fam_field"] = famf
    if args.fam_n > 0:
        famd, images = fam_digits_table(args)
        print(f"\nFAM on the digits model at 16 x 16 (trained 8 x 8; n = {args.fam_n}, labels "
              "0..9, dpmpp_2m 20 steps; judged after 2 x 2 average pooling)")
        print(format_table(["method", "strength", "Frechet", "cond. acc.", "high-freq energy",
                            "CPU s"], famd))
        result["fam_digits"] = famd
        if args.fam_plot:
            from reverie.plot import image_grid

            keep = [k for k in images if not k.startswith("the 8 x 8")]
            image_grid(torch.cat([images[k] for k in keep]), args.fam_plot, ncol=10)
            result["fam_plot"] = args.fam_plot
    if args.plot:
        plot(args.plot, args)
        result["plot"] = args.plot
    if args.shapes:
        plot_shapes(args.shapes, args)
        result["shapes"] = args.shapes
    result["seconds"] = time.perf_counter() - t0
    path = save_result("large", result)
    print(f"\n{result['seconds']:.1f} s; wrote {path}")
    return result

"""Posterior sampling on the MCGdiff Gaussian-mixture benchmark (exact posterior), all methods.

The benchmark of Cardoso, Janati, Le Corff & Moulines (ICLR 2024, section 4.1; the authors'
``gmm.py``): a 25-component mixture prior with unit covariances and means
``(-8i, -8j, -8i, -8j, ...)``, ``i, j in {-2..2}``, weights ``randn^2`` normalised; a random
operator ``A = U diag(s) V^T[:dy]`` with ``s`` sorted uniform(0, 1) singular values; noise
``sigma_y = U(0, 1) * max(s)``; ``y = A x* + sigma_y e`` with ``x*`` from the prior. The
posterior is again a mixture (:func:`reverie.reference.linear_gaussian_posterior`); every
method draws the same number of samples with the same number of steps (one model call per
step and sample: equal NFE) on the same grid (the default grid with the MCGdiff times
``tau_i`` moved onto it), and is scored by the mean sliced 1-Wasserstein distance to exact
posterior samples (the paper's metric: mean over random directions of W1). ``floor`` is the
distance between two exact sample sets of the same size: no sampler can beat it on average.

With ``--digits`` (needs the bundled ``digits`` model) it also runs inpainting and 2x
super-resolution on digits test images (PSNR and SSIM to the truth, measurement consistency).
With ``--images`` (or ``--images-only``) it runs issue 22's image suite on the same model
(:func:`run_images`): inpainting, motion blur, 4x and 2x super-resolution, compressed sensing,
phase retrieval and a saturated (non-linear) blur at noise 0.05, every registered method that
accepts each problem (the others skipped with the reason), PSNR and SSIM with bootstrap
intervals over images, NFE and seconds (`--problems` picks some of them).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from reverie.inverse import METHODS

DIMS = (8, 80, 800)
DYS = (1, 2, 4)
# every single-prior method (structured_noise needs a second prior), the SMC methods first
ALL = tuple(sorted((m for m in METHODS if m != "structured_noise"),
                   key=lambda m: not METHODS[m].particles))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small run: 3 replicates, 500 samples, dx in {8, 80}"
    )
    parser.add_argument("--replicates", type=int, default=None, help="problems per (dx, dy)")
    parser.add_argument("--samples", type=int, default=None, help="samples per method")
    parser.add_argument("--steps", type=int, default=20, help="steps (NFE per sample)")
    parser.add_argument("--dims", type=str, default=None, help="comma-separated dx values")
    parser.add_argument("--dys", type=str, default="1,2,4", help="comma-separated dy values")
    parser.add_argument("--methods", type=str, default=",".join(ALL))
    parser.add_argument("--slices", type=int, default=100, help="random directions of the SW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--digits",
        action="store_true",
        help="also run digits inpainting / super-resolution (needs the model)",
    )
    parser.add_argument(
        "--digits-only", action="store_true", help="only the digits part (skip the mixture)"
    )
    parser.add_argument("--images", action="store_true",
                        help="also run the image suite (7 problems, every method; digits model)")
    parser.add_argument("--images-only", action="store_true",
                        help="only the image suite (skip the mixture)")
    parser.add_argument("--problems", type=str, default=",".join(IMAGE_PROBLEMS),
                        help="comma-separated image-suite problems to run")
    parser.add_argument("--image-count", type=int, default=16,
                        help="test images per problem (image suite)")
    parser.add_argument("--smc-images", type=int, default=8,
                        help="test images per problem for the SMC methods (one call per image) "
                        "and the --slow ones")
    parser.add_argument("--slow", type=str, default="mmps",
                        help="methods run on --smc-images images only (costly per step)")


def mixture_prior(dim: int, generator: torch.Generator):
    """The 25-component prior of the benchmark."""
    from reverie.reference import GaussianMixture

    means = [[-8.0 * i, -8.0 * j] * (dim // 2) for i in range(-2, 3) for j in range(-2, 3)]
    w = torch.randn(25, generator=generator, dtype=torch.float64) ** 2
    return GaussianMixture(torch.tensor(means, dtype=torch.float64), 1.0, w / w.sum())


def random_problem(prior, dy: int, generator: torch.Generator):
    """``(A, sigma_y, y)``: the benchmark's operator with uniform singular values."""
    dx = prior.dim
    g = torch.randn(dy, dx, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=True)
    s = torch.rand(dy, generator=generator, dtype=torch.float64).sort(descending=True).values
    a = u @ torch.diag(s) @ vh[:dy]
    x_true = prior.sample(1, generator)[0]
    sigma_y = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(s.max())
    y = a @ x_true + sigma_y * torch.randn(dy, generator=generator, dtype=torch.float64)
    return a, sigma_y, y


def benchmark_grid(process, op, sigma_y: float, steps: int) -> torch.Tensor:
    """The default grid with the MCGdiff times ``sigma_ve(tau_i) = sigma_y / s_i`` on it."""
    from reverie.inverse.methods import adapt_grid
    from reverie.samplers import SAMPLERS, resolve_grid

    grid = resolve_grid(SAMPLERS["ddpm"], process, steps, process.default_grid)
    s = op.svd.s[op.svd.s > 0]
    tau = process.t_from_sigma_ve(sigma_y / s) if sigma_y > 0 else torch.empty(0)
    return adapt_grid(process, grid, tau)


def _options(method: str, data_std: float) -> dict[str, Any]:
    # DPS: the step of the authors' GMM script (zeta = 0.1 on the squared residual norm, i.e.
    # 0.2 on the norm); PiGDM / TDS: the prior's standard deviation as data_std.
    return {
        "dps": {"scale": 0.2},
        "pigdm": {"data_std": data_std},
        "tds": {"data_std": data_std},
    }.get(method, {})


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and 1.96 standard errors (the paper's "mean +- 1.96 std / sqrt(n)")."""
    t = torch.tensor(values, dtype=torch.float64)
    half = 1.96 * float(t.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(t.mean()), half


def run_mixture(args: argparse.Namespace) -> dict[str, Any]:
    import reverie
    from reverie.inverse import MatrixOperator, solve
    from reverie.metrics import SlicedWasserstein
    from reverie.reference import linear_gaussian_posterior

    quick = args.quick
    reps = args.replicates or (3 if quick else 10)
    n = args.samples or (500 if quick else 1000)
    dims = [int(v) for v in args.dims.split(",")] if args.dims else list((8, 80) if quick else DIMS)
    dys = [int(v) for v in args.dys.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    proc = reverie.VP.linear()
    rows, raw = [], []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(dims) * len(dys) * reps, desc="inverse bench", unit="problem")
    for ind_dim, dx in enumerate(dims):
        prior = mixture_prior(dx, torch.Generator().manual_seed(args.seed + 1000 * dx))
        den = prior.denoiser(proc)
        # the prior's per-coordinate standard deviation (law of total variance)
        spread = prior.weights @ ((prior.means - prior.mean()) ** 2).mean(1)
        data_std = math.sqrt(float(prior.weights @ prior.evals.mean(1) + spread))
        for ind_dy, dy in enumerate(dys):
            scores: dict[str, list[float]] = {m: [] for m in (*methods, "floor", "prior")}
            seconds: dict[str, float] = {m: 0.0 for m in methods}
            nfe: dict[str, int] = {}
            for rep in range(reps):
                seed = args.seed + 2**ind_dim * 3**ind_dy * 1000 + rep
                g = torch.Generator().manual_seed(seed)
                a, sigma_y, y = random_problem(prior, dy, g)
                op = MatrixOperator(a)
                post = linear_gaussian_posterior(prior, a, y, sigma_y**2)
                ref = post.sample(n, g)
                # one set of random directions per problem, shared by every method, the floor
                # and the prior (so all are scored on the same projections)
                sw = SlicedWasserstein(ref, args.slices, torch.Generator().manual_seed(seed + 7),
                                       p=1)
                scores["floor"].append(sw(post.sample(n, g)))
                scores["prior"].append(sw(prior.sample(n, g)))
                grid = benchmark_grid(proc, op, sigma_y, args.steps)
                for m in methods:
                    t0 = time.perf_counter()
                    res = solve(
                        den,
                        op,
                        y,
                        sigma_y,
                        method=m,
                        n=n,
                        steps=args.steps,
                        grid=grid,
                        generator=torch.Generator().manual_seed(seed + 11),
                        return_info=True,
                        **_options(m, data_std),
                    )
                    seconds[m] += time.perf_counter() - t0
                    nfe[m] = res.nfe
                    x = res.samples
                    val = sw(x) if bool(torch.isfinite(x).all()) else float("nan")
                    scores[m].append(val)
                    raw.append(
                        {"dx": dx, "dy": dy, "rep": rep, "method": m, "sw": val, "sigma_y": sigma_y}
                    )
                bar.update(1)
            row: dict[str, Any] = {"dx": dx, "dy": dy}
            for m, vals in scores.items():
                row[m] = _interval(vals)
            row["nfe"] = nfe
            row["seconds"] = {m: seconds[m] / reps for m in methods}
            rows.append(row)
    bar.close()
    return {
        "rows": rows,
        "raw": raw,
        "replicates": reps,
        "samples": n,
        "steps": args.steps,
        "methods": methods,
        "process": repr(proc),
        "slices": args.slices,
    }


def _table(result: dict[str, Any]) -> str:
    from reverie.bench.common import format_table

    methods = result["methods"]
    cols = [*methods, "floor", "prior"]
    headers = ["dx", "dy", *cols]
    body = []
    for row in result["rows"]:
        body.append([row["dx"], row["dy"], *(f"{row[c][0]:.2f} ± {row[c][1]:.2f}" for c in cols)])
    return format_table(headers, body)


def _checks(result: dict[str, Any]) -> list[str]:
    """The targets: SMC beats DPS and DDRM at every (dx, dy); no NaN."""
    lines = []
    smc = [m for m in result["methods"] if METHODS[m].particles]
    for row in result["rows"]:
        for s in smc:
            for b in ("dps", "ddrm"):
                if b in result["methods"] and not row[s][0] < row[b][0]:
                    lines.append(f"dx={row['dx']} dy={row['dy']}: {s} does not beat {b}")
    nans = [r for r in result["raw"] if r["sw"] != r["sw"]]
    lines += [f"NaN: {r['method']} dx={r['dx']} dy={r['dy']} rep={r['rep']}" for r in nans]
    return lines


DIGIT_METHODS = ALL


def digits_task(task: str, shape: tuple[int, ...], generator: torch.Generator):
    """The operator of a restoration task on ``[1, 8, 8]`` digits: ``inpaint`` (keep the
    left half and a random quarter of the right half), ``superres`` (2x2 block averages) or
    ``blur`` (Gaussian kernel, std 1)."""
    from reverie.inverse import Blur, Downsample, Inpainting, gaussian_kernel

    if task == "inpaint":
        c, h, w = shape
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[..., : w // 2] = True
        mask[..., w // 2 :] = torch.rand(c, h, w - w // 2, generator=generator) < 0.25
        return Inpainting(mask)
    if task == "superres":
        return Downsample(2, shape)
    if task == "blur":
        return Blur(gaussian_kernel(5, 1.0), shape)
    raise ValueError(f"unknown task {task!r}; expected inpaint, superres or blur")


def run_digits(args: argparse.Namespace) -> dict[str, Any]:
    """Digits inpainting and super-resolution: PSNR and SSIM (:func:`reverie.metrics.ssim`,
    Gaussian window std 1.5, data range 2) to the truth and measurement consistency (RMS of
    ``y - A x``, to compare with the noise level), per method at equal NFE."""
    from reverie.bench.common import format_table
    from reverie.data import load_digits
    from reverie.hub import load
    from reverie.inverse import measurement_consistency, psnr, solve
    from reverie.metrics import ssim

    model = load("digits")
    images, _ = load_digits("test")
    k = 8 if args.quick else 32
    per = 4  # posterior samples per image
    steps, sigma_y = 50, 0.05
    x_true = images[:k].to(torch.float32)
    rows, out = [], {}
    for task in ("inpaint", "superres"):
        g = torch.Generator().manual_seed(args.seed)
        op = digits_task(task, tuple(x_true.shape[1:]), g)
        y = op.A(x_true) + sigma_y * torch.randn(op.A(x_true).shape, generator=g)
        for m in [m for m in args.methods.split(",") if m in DIGIT_METHODS]:
            t0 = time.perf_counter()
            p_vals, s_vals, c_vals = [], [], []
            for i in range(k):
                x = solve(
                    model.denoiser,
                    op,
                    y[i],
                    sigma_y,
                    method=m,
                    steps=steps,
                    n=per,
                    generator=torch.Generator().manual_seed(args.seed + i),
                )
                p_vals.append(psnr(x, x_true[i : i + 1].expand_as(x)))
                s_vals.append(ssim(x, x_true[i : i + 1].expand_as(x)))
                c_vals.append(
                    measurement_consistency(op, x, y[i : i + 1].expand(per, *y.shape[1:]))
                )
            p_all, s_all, c_all = torch.cat(p_vals), torch.cat(s_vals), torch.cat(c_vals)
            res = {
                "psnr": float(p_all.mean()),
                "psnr_ci": 1.96 * float(p_all.std()) / math.sqrt(len(p_all)),
                "ssim": float(s_all.mean()),
                "ssim_ci": 1.96 * float(s_all.std()) / math.sqrt(len(s_all)),
                "consistency": float(c_all.mean()),
                "seconds": time.perf_counter() - t0,
            }
            out[f"{task}/{m}"] = res
            rows.append(
                [
                    task,
                    m,
                    f"{res['psnr']:.2f} ± {res['psnr_ci']:.2f}",
                    f"{res['ssim']:.3f} ± {res['ssim_ci']:.3f}",
                    res["consistency"],
                    steps,
                    res["seconds"],
                ]
            )
    print(
        f"\ndigits ({k} test images x {per} samples, sigma_y = {sigma_y}, {steps} steps = NFE "
        "per sample):"
    )
    print(format_table(["task", "method", "PSNR dB", "SSIM", "RMS(y - A x)", "NFE",
                             "seconds"], rows))
    return out


# ---- the image suite (issue 22) ---------------------------------------------------------------

IMAGE_PROBLEMS = ("inpaint", "motion_blur", "superres4", "superres2", "cs", "phase",
                  "nonlinear_blur")
CS_M, PHASE_M, GAIN = 16, 128, 2.0  # CS: 64 -> 16; phase retrieval: 2x oversampled


def _deepinv() -> Any:
    """``deepinv`` when it imports, else ``None`` (it needs torchvision)."""
    try:
        import deepinv
    except Exception:  # ImportError, or torchvision failing to load
        return None
    return deepinv


def image_problem(task: str, shape: tuple[int, ...], generator: torch.Generator) -> tuple[Any, str]:
    """``(forward model, physics used)`` of one image-suite problem on ``shape`` images:
    deepinv's physics through :func:`reverie.inverse.from_deepinv` where ``import deepinv``
    works (the linear ones), else reverie's operators built to deepinv's definitions; the two
    non-linear ones are always reverie's (deepinv's phase retrieval takes complex images)."""
    from reverie.inverse import (
        Blur,
        Downsample,
        compressed_sensing,
        from_deepinv,
        motion_kernel,
        nonlinear_blur,
        random_phase_retrieval,
    )

    dinv = _deepinv()
    if task == "phase":
        return random_phase_retrieval(PHASE_M, shape, generator), (
            f"reverie PhaseRetrieval |B x|^2, m={PHASE_M}, B_ij ~ N(0, 1/2m) + i N(0, 1/2m) "
            "(deepinv's RandomPhaseRetrieval)")
    if task == "nonlinear_blur":
        return nonlinear_blur(motion_kernel(5, generator), shape, GAIN), (
            f"reverie Saturated: tanh({GAIN:g} k * x) / tanh({GAIN:g}), k a 5x5 motion kernel")
    if task == "inpaint":
        op = digits_task("inpaint", shape, generator)
        if dinv is None:
            return op, "reverie Inpainting (left half + 25% of the right half)"
        return from_deepinv(dinv.physics.Inpainting(img_size=shape, mask=op.mask.float()),
                            shape), "deepinv Inpainting (same mask)"
    if task == "motion_blur":
        k = motion_kernel(5, generator)
        if dinv is None:
            return Blur(k, shape), ("reverie Blur (circular) by a 5x5 motion_kernel (Matern-5/2 "
                                    "trajectory, as deepinv's MotionBlurGenerator)")
        k = dinv.physics.generator.MotionBlurGenerator((5, 5), rng=generator).step()["filter"]
        return from_deepinv(dinv.physics.BlurFFT(img_size=shape, filter=k), shape), (
            "deepinv BlurFFT by a 5x5 MotionBlurGenerator kernel")
    if task in ("superres4", "superres2"):
        f = int(task[-1])
        if dinv is None:
            return Downsample(f, shape), f"reverie Downsample({f}) ({f}x{f} block averages)"
        box = torch.full((1, 1, f, f), 1.0 / f**2)
        return from_deepinv(dinv.physics.Downsampling(img_size=shape, factor=f, filter=box,
                                                      padding="valid"), shape), (
            f"deepinv Downsampling(factor={f}, {f}x{f} box filter, valid: block averages)")
    if task == "cs":
        if dinv is None:
            return compressed_sensing(CS_M, shape, generator), (
                f"reverie compressed_sensing: Gaussian {CS_M}x64, entries N(0, 1/m) "
                "(deepinv's CompressedSensing)")
        return from_deepinv(dinv.physics.CompressedSensing(m=CS_M, img_size=shape, rng=generator),
                            shape), f"deepinv CompressedSensing(m={CS_M})"
    raise ValueError(f"unknown image problem {task!r}; expected one of {IMAGE_PROBLEMS}")


def image_problems(spec: str) -> list[str]:
    """The ``--problems`` list (comma-separated names of :data:`IMAGE_PROBLEMS`)."""
    problems = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in problems if p not in IMAGE_PROBLEMS]
    if unknown or not problems:
        raise ValueError(f"--problems must name some of {', '.join(IMAGE_PROBLEMS)}; got "
                         f"{spec!r}")
    return problems


def skip_reason(method: str, op: Any) -> str | None:
    """Why ``method`` cannot run on ``op`` (``None`` if it can)."""
    from reverie.inverse import LinearOperator, compatible_methods

    if method in compatible_methods(op):
        return None
    if method == "structured_noise":
        return "needs a second diffusion prior for the noise (noise_denoiser)"
    if METHODS[method].linear and not isinstance(op, LinearOperator):
        return "not linear (needs A^T)"
    return "no SVD in closed form"


def _bootstrap(values: torch.Tensor, generator: torch.Generator, draws: int = 2000
               ) -> tuple[float, float, float]:
    """Mean and the 95% percentile bootstrap interval of the mean over images."""
    idx = torch.randint(len(values), (draws, len(values)), generator=generator)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return float(values.mean()), lo, hi


def run_images(args: argparse.Namespace) -> dict[str, Any]:
    """The image suite on the bundled ``digits`` EDM model (8x8 test images in [-1, 1]):
    every problem of :data:`IMAGE_PROBLEMS` at Gaussian noise 0.05, every registered method
    that accepts it (:func:`skip_reason` for the others), default options, 50 steps, 4
    posterior samples per image. Non-SMC methods solve all images in one batched call (one
    measurement per sample); the SMC methods (one posterior per call) run image by image on
    the first ``--smc-images``, and the ``--slow`` ones (MMPS: conjugate gradients through
    the network at every step) batched on as many. PSNR / SSIM (:func:`reverie.metrics.ssim`,
    data range 2) are averaged over each image's samples, then over images with a 95%
    bootstrap interval; ``psnr_common`` / ``ssim_common`` are the means over the first
    ``--smc-images`` images, which every method ran on (compare methods there)."""
    from reverie.bench.common import format_table
    from reverie.data import load_digits
    from reverie.hub import load
    from reverie.inverse import measurement_consistency, psnr, solve
    from reverie.metrics import ssim
    from reverie.samplers import NonFiniteError

    problems = image_problems(args.problems)
    model = load("digits")
    images, _ = load_digits("test")
    k, k_smc, per, steps, sigma_y = args.image_count, args.smc_images, 4, 50, 0.05
    x_all = images[:k].to(torch.float32)
    shape = tuple(x_all.shape[1:])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods += [m for m in METHODS if m not in ALL and m not in methods]  # listed as skipped
    slow = {m.strip() for m in args.slow.split(",") if m.strip()}
    rows, skipped, failed, physics = [], [], [], {}
    for ind, task in enumerate(IMAGE_PROBLEMS):
        if task not in problems:  # the seed stays tied to the problem's place in the suite
            continue
        g = torch.Generator().manual_seed(args.seed + 100 * ind)
        op, physics[task] = image_problem(task, shape, g)
        clean = op(x_all).to(torch.float32)
        y_all = clean + sigma_y * torch.randn(clean.shape, generator=g)
        for m in methods:
            why = skip_reason(m, op)
            if why is not None:
                skipped.append({"problem": task, "method": m, "reason": why})
                continue
            smc = METHODS[m].particles
            kk = k_smc if smc or m in slow else k
            x_true, y = x_all[:kk], y_all[:kk]
            t0 = time.perf_counter()
            try:
                if smc:  # one posterior (a cloud of `per` particles) per image
                    outs = [solve(model.denoiser, op, y[i], sigma_y, method=m, steps=steps,
                                  n=per, generator=torch.Generator().manual_seed(args.seed + i),
                                  return_info=True) for i in range(kk)]
                    x, res = torch.cat([o.samples for o in outs]), outs[0]
                else:  # all images at once: `per` rows per image, each with its measurement
                    res = solve(model.denoiser, op, y.repeat_interleave(per, 0), sigma_y,
                                method=m, steps=steps, return_info=True,
                                generator=torch.Generator().manual_seed(args.seed))
                    x = res.samples
            except NonFiniteError as e:  # reported, not hidden: default options diverged
                failed.append({"problem": task, "method": m, "error": str(e)})
                print(f"  {task} {m}: FAILED ({e})", flush=True)
                continue
            seconds = time.perf_counter() - t0
            ref = x_true.repeat_interleave(per, 0)
            p = psnr(x, ref).reshape(kk, per).mean(1).double()
            q = ssim(x, ref).reshape(kk, per).mean(1).double()
            c = measurement_consistency(op, x, y.repeat_interleave(per, 0))
            gb = torch.Generator().manual_seed(args.seed)
            (pm, plo, phi), (qm, qlo, qhi) = _bootstrap(p, gb), _bootstrap(q, gb)
            rows.append({"problem": task, "method": m, "images": kk, "psnr": pm, "psnr_lo": plo,
                         "psnr_hi": phi, "ssim": qm, "ssim_lo": qlo, "ssim_hi": qhi,
                         # on the first smc_images images, which every method ran on
                         "psnr_common": float(p[:k_smc].mean()),
                         "ssim_common": float(q[:k_smc].mean()),
                         "consistency": float(c.mean()), "nfe": res.nfe, "vjp": res.vjp,
                         "seconds": seconds, "seconds_per_image": seconds / kk})
            print(f"  {task} {m}: PSNR {pm:.2f} [{plo:.2f}, {phi:.2f}], SSIM {qm:.3f}, "
                  f"{seconds:.1f} s", flush=True)
    print(f"\nimage suite: digits EDM model, sigma_y = {sigma_y}, {steps} steps, {per} samples "
          f"per image; {k} test images ({k_smc} for the SMC methods and "
          f"{', '.join(sorted(slow))}); 95% bootstrap intervals over images")
    for task in problems:
        print(f"  {task}: {physics[task]}")
    print(format_table(
        ["problem", "method", "images", "PSNR dB [95% CI]", "SSIM [95% CI]",
         f"PSNR / SSIM, first {k_smc}", "RMS(y - A x)", "NFE (+VJP)", "seconds"],
        [[r["problem"], r["method"], r["images"],
          f"{r['psnr']:.2f} [{r['psnr_lo']:.2f}, {r['psnr_hi']:.2f}]",
          f"{r['ssim']:.3f} [{r['ssim_lo']:.3f}, {r['ssim_hi']:.3f}]",
          f"{r['psnr_common']:.2f} / {r['ssim_common']:.3f}", r["consistency"],
          f"{r['nfe']} (+{r['vjp']})", r["seconds"]] for r in rows]))
    print("skipped: " + "; ".join(f"{s['problem']}/{s['method']} ({s['reason']})"
                                  for s in skipped))
    print("failed: " + ("; ".join(f"{f['problem']}/{f['method']} ({f['error']})" for f in failed)
                        or "none"))
    return {"rows": rows, "skipped": skipped, "failed": failed, "physics": physics,
            "deepinv": _deepinv() is not None, "sigma_y": sigma_y, "steps": steps,
            "samples_per_image": per, "images": k, "smc_images": k_smc, "slow": sorted(slow),
            "problems": problems,
            "note": "superres4 of 8x8 images leaves 2x2 measurements; superres2 is reported too"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    if not (args.digits_only or args.images_only):
        result = run_mixture(args)
        print(
            f"\nGaussian-mixture benchmark: mean sliced W1 to the exact posterior (mean ± 1.96 "
            f"s.e. over {result['replicates']} problems), {result['samples']} samples, "
            f"{result['steps']} steps = {result['steps']} NFE per sample, {result['process']}"
        )
        print(_table(result))
        failed = _checks(result)
        result["target_failures"] = failed
        print(
            "\ntargets (SMC beats DPS and DDRM everywhere, no NaN):",
            "met" if not failed else "NOT met: " + "; ".join(failed),
        )
    if args.digits or args.digits_only:
        result["digits"] = run_digits(args)
    if args.images or args.images_only:
        result["images"] = run_images(args)
    result["seconds"] = time.perf_counter() - t0
    return result

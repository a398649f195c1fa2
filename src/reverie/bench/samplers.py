"""Samplers vs diffusers on an exact Gaussian mixture: error vs NFE, per-step overhead, memory.

Every sampler, reverie's and diffusers' schedulers alike, is driven in the same run by the same
exact model (the closed-form denoiser of a Gaussian mixture under DDPM's discrete VP process)
from the same noise. Accuracy is the sliced 2-Wasserstein distance to exact samples of the
mixture (with the two-sample noise floor reported) and the total-variation error of the mode
weights. Each side gets its best time spacing: every grid for reverie, every timestep spacing
and sigma option for diffusers. Overhead is measured with a model that costs nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.grids import GRIDS, make_grid
from reverie.metrics import SlicedWasserstein, mode_weight_error
from reverie.process import VP
from reverie.reference import GaussianMixture
from reverie.samplers import SAMPLERS, State
from reverie.samplers import run as run_sampler

# reverie sampler -> the diffusers scheduler that implements the same method
PAIRS = {
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++2M",
    "dpmpp_3m": "DPM++3M",
    "unipc": "UniPC-2",
    "euler": "Euler",
    "heun": "Heun",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small run: n=2000, NFE 5, 10")
    parser.add_argument("--n", type=int, default=20000, help="samples per method")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--dim", type=int, default=8, help="dimension of the mixture")
    parser.add_argument("--seed", type=int, default=0)


def bench_mixture(dim: int, seed: int) -> GaussianMixture:
    """Six anisotropic components at distance ~2 in ``dim`` dimensions, scaled like image data."""
    g = torch.Generator().manual_seed(seed)
    k = 6
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    means = 0.9 * means / means.norm(dim=1, keepdim=True) * dim**0.5 / 2
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    covs = 0.04 * (a @ a.transpose(1, 2) + 0.2 * torch.eye(dim, dtype=torch.float64))
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, covs, weights)


# ---------------------------------------------------------------------------------------------
# diffusers side
# ---------------------------------------------------------------------------------------------


def _diffusers_variants(quick: bool) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
    import diffusers as d

    spacings = ["trailing"] if quick else ["linspace", "leading", "trailing"]
    base = {"beta_schedule": "linear", "num_train_timesteps": 1000}

    def variants(cls, extra_options, **fixed):
        out = []
        for sp in spacings:
            for label, opts in extra_options:
                kw = {**base, **fixed, "timestep_spacing": sp, **opts}
                name = f"{sp}{'+' + label if label else ''}"
                out.append((name, lambda cls=cls, kw=kw: cls(**kw)))
        return out

    sig = [("", {})] if quick else [("", {}), ("karras", {"use_karras_sigmas": True})]
    dpm_sig = sig if quick else sig + [("logsnr", {"use_lu_lambdas": True})]
    return {
        "DDIM": variants(d.DDIMScheduler, [("", {})], clip_sample=False, set_alpha_to_one=True),
        "DPM++2M": variants(d.DPMSolverMultistepScheduler, dpm_sig, solver_order=2),
        "DPM++3M": variants(d.DPMSolverMultistepScheduler, dpm_sig, solver_order=3),
        "UniPC-2": variants(d.UniPCMultistepScheduler, sig, solver_order=2),
        "UniPC-3": variants(d.UniPCMultistepScheduler, sig, solver_order=3),
        "DEIS-3": variants(d.DEISMultistepScheduler, sig, solver_order=3),
        "Euler": variants(d.EulerDiscreteScheduler, sig),
        "Heun": variants(d.HeunDiscreteScheduler, sig),
    }


def _diffusers_steps(name: str, nfe: int) -> int:
    return (nfe + 1) // 2 if name == "Heun" else nfe  # Heun: NFE = 2N - 1


def diffusers_grids(proc: VP, label: str, steps: int, quick: bool) -> dict[str, torch.Tensor]:
    """The time grids that diffusers' ``label`` scheduler walks for ``steps`` steps, one per
    spacing option, as reverie grids (``sigma -> t`` through the process, then the clean end),
    so that reverie's sampler can be run on exactly the grid the peer uses."""
    out = {}
    for vname, make in _diffusers_variants(quick)[label]:
        try:
            sch = make()
            sch.set_timesteps(steps)
        except Exception:  # noqa: BLE001 -- a configuration diffusers does not run
            continue
        sigmas = getattr(sch, "sigmas", None)
        if sigmas is not None:  # the solver's own noise levels (sigma / alpha)
            s = sigmas.to(torch.float64)
            s = s[s > 0].unique_consecutive()  # Heun repeats its interior sigmas
            t = proc.t_from_log_snr(-2 * torch.log(s))
        else:  # DDIM: the model is called at these timesteps
            t = sch.timesteps.to(torch.float64).unique_consecutive()
        t = t.clamp(max=proc.t_max)
        out[f"diffusers:{vname}"] = torch.cat([t, torch.tensor([proc.t_clean], dtype=t.dtype)])
    return out


def run_diffusers(make, eps_fn, noise: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    sch = make()
    sch.set_timesteps(steps)
    x = noise * sch.init_noise_sigma
    for t in sch.timesteps:
        x_in = sch.scale_model_input(x, t)
        x = sch.step(eps_fn(x_in, float(t)), t, x).prev_sample
    return x, len(sch.timesteps)


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


def _problem(args: argparse.Namespace):
    """The benchmark mixture, its process and exact denoiser, the shared noise, and the
    distance to exact samples (the same projections for every method; the reference is
    projected and sorted once)."""
    gm = bench_mixture(args.dim, args.seed)
    proc = VP.linear()
    ref = gm.sample(4 * args.n, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(
        args.n, args.dim, generator=torch.Generator().manual_seed(args.seed + 2),
        dtype=torch.float64,
    )
    sw = SlicedWasserstein(ref, 256, torch.Generator().manual_seed(args.seed + 3))
    return gm, proc, gm.denoiser(proc), noise, sw


def accuracy(args: argparse.Namespace) -> tuple[list[dict], float, dict]:
    """Best row per (side, method, NFE), the two-sample floor, and every diffusers
    configuration's distance by ``(label, variant, NFE)`` (reused by the same-grid checks)."""
    gm, proc, den, noise, sw = _problem(args)
    n = args.n

    floor = statistics.mean(
        sw(gm.sample(n, torch.Generator().manual_seed(args.seed + 10 + k))) for k in range(3)
    )
    rows: list[dict] = []
    grids = ["logsnr", "karras"] if args.quick else list(GRIDS)
    for name in SAMPLERS:
        info = SAMPLERS[name]
        for nfe in args.nfe:
            steps = max(1, (nfe - 1) // info.nfe_per_step + 1)
            best = None
            candidates = {grid: make_grid(proc, steps, grid) for grid in grids}
            if name in PAIRS:  # also the peer's own grids (a reverie grid is any tensor)
                candidates |= diffusers_grids(
                    proc, PAIRS[name], _diffusers_steps(PAIRS[name], nfe), args.quick)
            for grid, g in candidates.items():
                if len(g) - 1 != steps:
                    continue  # a peer grid with another step count (e.g. deduplicated)
                x_t = noise * float(proc.sigma(g[0]))
                out = run_sampler(
                    info, den, x_t, g, generator=torch.Generator().manual_seed(args.seed + 4)
                )
                row = {
                    "side": "reverie",
                    "method": name,
                    "variant": grid,
                    "nfe": out.nfe,
                    "sw": sw(out.x0),
                    "mode_tv": mode_weight_error(out.x0, gm),
                }
                if best is None or row["sw"] < best["sw"]:
                    best = row
            rows.append(best)
    eps_fn = lambda x, t: den.eps(x.to(torch.float64), t).to(x.dtype)  # noqa: E731
    peer: dict[tuple[str, str, int], float] = {}
    for label, variants in _diffusers_variants(args.quick).items():
        for nfe in args.nfe:
            best = None
            for vname, make in variants:
                try:
                    x0, used = run_diffusers(
                        make, eps_fn, noise.float(), _diffusers_steps(label, nfe)
                    )
                except Exception as err:  # a diffusers configuration that does not run
                    why = f"{type(err).__name__}: {err}"
                    print(f"  diffusers {label} {vname} NFE {nfe}: skipped ({why})")
                    continue
                if not bool(torch.isfinite(x0).all()):
                    continue
                row = {
                    "side": "diffusers",
                    "method": label,
                    "variant": vname,
                    "nfe": used,
                    "sw": sw(x0.double()),
                    "mode_tv": mode_weight_error(x0.double(), gm),
                }
                peer[label, vname, nfe] = row["sw"]
                if best is None or row["sw"] < best["sw"]:
                    best = row
            if best is not None:
                rows.append(best)
    return rows, floor, peer


# ---------------------------------------------------------------------------------------------
# per-step overhead and memory
# ---------------------------------------------------------------------------------------------


def overhead(rounds: int) -> list[dict]:
    """Microseconds per step with a model that costs nothing (eps = 0) on an SD-latent-sized
    tensor, reverie vs the paired diffusers scheduler, interleaved and repeated (median)."""
    import diffusers as d

    from reverie.denoisers import Denoiser

    proc = VP.linear()
    den = Denoiser(lambda x, t: torch.zeros_like(x), proc, "eps")
    x = torch.randn(1, 4, 64, 64)
    steps = 50
    kw = {"timestep_spacing": "trailing"}
    makers = {
        "DDIM": lambda: d.DDIMScheduler(clip_sample=False, **kw),
        "DPM++2M": lambda: d.DPMSolverMultistepScheduler(**kw),
        "DPM++3M": lambda: d.DPMSolverMultistepScheduler(solver_order=3, **kw),
        "UniPC-2": lambda: d.UniPCMultistepScheduler(**kw),
        "Euler": lambda: d.EulerDiscreteScheduler(**kw),
        "Heun": lambda: d.HeunDiscreteScheduler(**kw),
    }
    zero = lambda x_in, t: torch.zeros_like(x_in)  # noqa: E731
    grid = make_grid(proc, steps, "trailing")
    times: dict[str, list[float]] = {k: [] for k in list(PAIRS) + list(PAIRS.values())}
    for _ in range(rounds):
        for ours, theirs in PAIRS.items():
            t0 = time.perf_counter()
            out = run_sampler(ours, den, x, grid)
            times[ours].append((time.perf_counter() - t0) / out.nfe * 1e6)
            t0 = time.perf_counter()
            _, used = run_diffusers(makers[theirs], zero, x, steps)
            times[theirs].append((time.perf_counter() - t0) / used * 1e6)
    rows = []
    for ours, theirs in PAIRS.items():
        a, b = statistics.median(times[ours]), statistics.median(times[theirs])
        rows.append(
            {
                "reverie": ours,
                "diffusers": theirs,
                "reverie_us": a,
                "diffusers_us": b,
                "ratio": a / b,
            }
        )
    return rows


def memory(dim: int) -> list[dict]:
    """The most copies of ``x`` a sampler's state holds between steps (its history)."""
    gm = bench_mixture(dim, 0)
    proc = VP.linear()
    den = gm.denoiser(proc)
    grid = make_grid(proc, 12, "logsnr")
    rows = []
    for name in SAMPLERS:
        most = 0

        def track(state: State, sch: Any) -> None:
            nonlocal most
            most = max(most, len(state.memory))

        x = torch.randn(4, dim, dtype=torch.float64) * float(proc.sigma(grid[0]))
        run_sampler(name, den, x, grid, callback=track, generator=torch.Generator().manual_seed(0))
        rows.append({"method": name, "order": SAMPLERS[name].order, "history_copies": most})
    return rows


def same_grid_checks(args: argparse.Namespace, peer: dict | None = None) -> list[dict]:
    """reverie's ``ddim`` and ``dpmpp_3m`` (and its options) on exactly the grid of each
    diffusers DDIM / DPM++(3M) configuration: where the algorithms coincide the errors agree,
    so the remaining differences in the accuracy table are the algorithms'."""
    _, proc, den, noise, sw = _problem(args)
    eps_fn = lambda x, t: den.eps(x.to(torch.float64), t).to(x.dtype)  # noqa: E731
    ours = {
        "DDIM": [("ddim", {})],
        "DPM++3M": [
            ("dpmpp_3m", {}), ("dpmpp_3m", {"lower_order_final": True}),
            ("dpmpp_3m", {"legacy": True}),
            ("dpmpp_3m", {"legacy": True, "lower_order_final": True}),
        ],
    }
    out = []
    for label, runs in ours.items():
        for nfe in args.nfe:
            grids = diffusers_grids(proc, label, nfe, args.quick)
            for vname, make in _diffusers_variants(args.quick)[label]:
                if f"diffusers:{vname}" not in grids:
                    continue
                g = grids[f"diffusers:{vname}"]
                if (label, vname, nfe) in (peer or {}):  # measured by accuracy() already
                    theirs = peer[label, vname, nfe]
                else:
                    theirs = sw(run_diffusers(make, eps_fn, noise.float(), nfe)[0].double())
                row = {"peer": label, "variant": vname, "nfe": nfe, "diffusers": theirs}
                for name, opts in runs:
                    key = name + "".join(f" {k}={v}" for k, v in opts.items())
                    x_t = noise * float(proc.sigma(g[0]))
                    row[key] = sw(run_sampler(name, den, x_t, g, **opts).x0)
                out.append(row)
    return out


# ---------------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> dict:
    if args.quick:
        args.n, args.nfe = min(args.n, 2000), [5, 10]
    t0 = time.perf_counter()
    rows, floor, peer = accuracy(args)
    acc_s = time.perf_counter() - t0
    print(
        f"\n### Accuracy: sliced W2 to the exact mixture (dim {args.dim}, n = {args.n}; "
        f"two-sample floor {floor:.4f}), best spacing per method\n"
    )
    methods = [(r["side"], r["method"]) for r in rows]
    methods = list(dict.fromkeys(methods))
    table = []
    for side, method in methods:
        cells = []
        for nfe in args.nfe:
            match = [
                r
                for r in rows
                if r["side"] == side and r["method"] == method and nfe - 1 <= r["nfe"] <= nfe
            ]
            cells.append(f"{match[0]['sw']:.4f} ({match[0]['variant']})" if match else "-")
        table.append([side, method, *cells])
    print(format_table(["side", "method", *[f"NFE {n}" for n in args.nfe]], table))

    checks = {}
    for nfe in args.nfe:

        def at(side, method=None, nfe=nfe):
            return [
                r
                for r in rows
                if r["side"] == side
                and nfe - 1 <= r["nfe"] <= nfe
                and (method is None or r["method"] == method)
            ]

        for ours, theirs in PAIRS.items():
            a, b = at("reverie", ours), at("diffusers", theirs)
            if a and b:
                checks[f"{ours}<=diffusers {theirs} @NFE{nfe}"] = a[0]["sw"] <= b[0]["sw"] * 1.02
        ours_best = min(at("reverie"), key=lambda r: r["sw"])
        theirs_best = min(at("diffusers"), key=lambda r: r["sw"])
        key = (
            f"best reverie ({ours_best['method']}, {ours_best['variant']}) / best diffusers "
            f"({theirs_best['method']}, {theirs_best['variant']}) sliced-W2 @NFE{nfe}"
        )
        checks[key] = round(ours_best["sw"] / theirs_best["sw"], 3)

    same = same_grid_checks(args, peer)
    print("\n### Same grid: reverie on exactly the grid of each diffusers configuration\n")
    cols = list(dict.fromkeys(k for r in same for k in r))
    print(format_table(cols, [[r.get(c, "") if isinstance(r.get(c), (str, int)) else
                               f"{r[c]:.4f}" if c in r else "" for c in cols] for r in same]))
    ov = overhead(rounds=3 if args.quick else 7)
    print(
        "\n### Per-step overhead (model that costs nothing, x of shape 1x4x64x64 float32, "
        "50 steps, median of interleaved rounds)\n"
    )
    print(
        format_table(
            ["reverie", "diffusers", "reverie us/step", "diffusers us/step", "ratio"],
            [
                [r["reverie"], r["diffusers"], r["reverie_us"], r["diffusers_us"], r["ratio"]]
                for r in ov
            ],
        )
    )
    mem = memory(args.dim)
    print("\n### Memory: copies of x held in the sampler state between steps\n")
    print(
        format_table(
            ["sampler", "order", "history copies"],
            [[r["method"], r["order"], r["history_copies"]] for r in mem],
        )
    )
    print("\n### Targets\n")
    for k, v in checks.items():
        print(f"- {k}: {v}")
    print(f"\nmachine: {machine()}; accuracy part took {acc_s:.0f} s")
    return {
        "args": vars(args) | {"func": None},
        "floor": floor,
        "accuracy": rows,
        "same_grid": same,
        "overhead": ov,
        "memory": mem,
        "checks": checks,
    }


run = run_bench

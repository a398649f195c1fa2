"""Samplers vs diffusers on exact Gaussian mixtures: defaults, tuned grids held out, fitted
grids, per-step overhead, memory.

Every sampler, reverie's and diffusers' schedulers alike, is driven by the same exact model (the
closed-form denoiser of a Gaussian mixture under DDPM's discrete VP process, linear betas) from
the same noise, with the state in float32 on both sides. Accuracy is the sliced 2-Wasserstein
distance (128 directions) to exact samples of the mixture, beside the two-sample floor (SDE
samplers: the mean over four seeds of their noise, on both sides). The
mixtures are drawn at random (``random_mixture``) from seeds that no default or option was chosen
on (``--mixtures``).

Three tables:

* **defaults** -- ``reverie.sample(den, noise, sampler=NAME, steps=N)`` with no grid against
  each diffusers scheduler with its own constructor defaults (``clip_sample=False`` for DDIM and
  DDPM): no selection at all.
* **tuned, held out** -- both sides get the same candidate set, the grids of diffusers' spacing
  options (``linspace``/``leading``/``trailing``, Karras and log-SNR sigmas where the scheduler
  has them; reverie walks each as a tensor); the candidate is chosen on one noise seed and
  reference set (A) and reported on another (B).
* **fitted** -- ``reverie.optimize_grid`` per deterministic sampler, fitted from the model alone
  (its own noise seed), reported on B; with its cost in model calls.

The ``grid`` part runs every sampler on one named grid (``--grid``, default ``angle``) on B.
The ``teleport`` part runs analytical teleportation (``reverie.teleport``) on B.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.grid_fit import optimize_grid
from reverie.grids import GRIDS, make_grid
from reverie.metrics import SlicedWasserstein
from reverie.process import VP, RectifiedFlow
from reverie.reference import GaussianMixture
from reverie.samplers import SAMPLERS, State, resolve_grid
from reverie.samplers import run as run_sampler


def _peers() -> dict[str, tuple[Callable[..., Any], dict[str, Any]]]:
    """reverie sampler -> (diffusers scheduler class, the fixed options that make it the same
    method); everything else is the scheduler's own default."""
    import diffusers as d

    return {
        "ddim": (d.DDIMScheduler, {"clip_sample": False}),
        "ddpm": (d.DDPMScheduler, {"clip_sample": False}),
        "euler": (d.EulerDiscreteScheduler, {}),
        "heun": (d.HeunDiscreteScheduler, {}),
        "dpmpp_2m": (d.DPMSolverMultistepScheduler, {}),
        "dpmpp_3m": (d.DPMSolverMultistepScheduler, {"solver_order": 3}),
        "dpmpp_2m_sde": (d.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        "dpmpp_3m_sde": (
            d.DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        ),
        "dpmpp_2s": (d.DPMSolverSinglestepScheduler, {}),
        "unipc": (d.UniPCMultistepScheduler, {}),
        "euler_ancestral": (d.EulerAncestralDiscreteScheduler, {}),
        "lms": (d.LMSDiscreteScheduler, {}),
        "deis": (d.DEISMultistepScheduler, {"solver_order": 3}),
    }


# the spacing options a tuned comparison may choose from (the same set for both sides)
SPACINGS = ("linspace", "leading", "trailing")
SIGMA_OPTIONS = {"": {}, "karras": {"use_karras_sigmas": True}, "logsnr": {"use_lu_lambdas": True}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small run: n=2000, NFE 5, 10")
    parser.add_argument("--n", type=int, default=4000, help="samples per method and mixture")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--dim", type=int, default=8, help="dimension of the mixtures")
    parser.add_argument(
        "--mixtures", type=int, nargs="+", default=[2000, 2001, 2002, 2003, 2004],
        help="seeds of the random mixtures reported (no choice was made on them)",
    )
    parser.add_argument("--fit-n", type=int, default=2048, help="noises for optimize_grid")
    parser.add_argument("--fit-objective", choices=("auto", "mse", "sw"), default="auto",
                        help="optimize_grid's objective (default: its own default)")
    parser.add_argument(
        "--fit-nfe", type=int, nargs="+", default=[5, 10, 20],
        help="NFE budgets at which optimize_grid is fitted and reported",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noises and references")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="also draw the defaults table as error-vs-NFE panels")
    parser.add_argument("--samplers", default=None,
                        help="comma-separated subset of the samplers (default: all)")
    parser.add_argument("--grid", default="angle", choices=GRIDS,
                        help="the named grid every sampler walks in the 'grid' part")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all)")


def random_mixture(seed: int, dim: int = 8) -> GaussianMixture:
    """A random mixture: 2-9 components, means of random scale, random full covariances of
    random size, random weights."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 10, (1,), generator=g))
    scale = float(torch.rand(1, generator=g)) * 1.5 + 0.5
    means = torch.randn(k, dim, generator=g, dtype=torch.float64) * scale
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    s = torch.rand(k, 1, 1, generator=g, dtype=torch.float64) * 0.3 + 0.02
    covs = s * (a @ a.transpose(1, 2) + 0.1 * torch.eye(dim, dtype=torch.float64))
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.3
    return GaussianMixture(means, covs, w)


def bench_mixture(dim: int, seed: int) -> GaussianMixture:
    """Six anisotropic components at distance ~2 in ``dim`` dimensions (memory table)."""
    g = torch.Generator().manual_seed(seed)
    k = 6
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    means = 0.9 * means / means.norm(dim=1, keepdim=True) * dim**0.5 / 2
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    covs = 0.04 * (a @ a.transpose(1, 2) + 0.2 * torch.eye(dim, dtype=torch.float64))
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, covs, weights)


# ---------------------------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------------------------


def run_diffusers(make, eps_fn, noise: torch.Tensor, steps: int, seed: int = 0):
    """Walk a diffusers scheduler; returns ``(x0, model calls)``."""
    sch = make()
    sch.set_timesteps(steps)
    x = noise * sch.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    stochastic = "generator" in sch.step.__code__.co_varnames
    for t in sch.timesteps:
        x_in = sch.scale_model_input(x, t)
        kw = {"generator": g} if stochastic else {}
        x = sch.step(eps_fn(x_in, float(t)), t, x, **kw).prev_sample
    return x, len(sch.timesteps)


def _steps(name: str, nfe: int) -> int:
    return max(1, (nfe - 1) // SAMPLERS[name].nfe_per_step + 1)


def _peer_steps(name: str, nfe: int) -> int:
    return (nfe + 1) // 2 if name == "heun" else nfe  # diffusers' Heun: NFE = 2N - 1


def _variants(name: str) -> dict[str, Callable[[], Any]]:
    """Every spacing option of the peer scheduler (the tuned candidate set)."""
    cls, fixed = _peers()[name]
    base = {"beta_schedule": "linear", "num_train_timesteps": 1000, **fixed}
    sig = dict(SIGMA_OPTIONS)
    if "DPMSolverMultistep" not in cls.__name__:
        sig.pop("logsnr")
    if cls.__name__ in ("DDIMScheduler", "DDPMScheduler"):
        sig = {"": {}}
    out = {}
    for sp in SPACINGS:
        for label, opts in sig.items():
            kw = {**base, "timestep_spacing": sp, **opts}
            out[sp + (f"+{label}" if label else "")] = lambda kw=kw: cls(**kw)
    return out


def peer_grid(proc: VP, make, steps: int) -> torch.Tensor | None:
    """The time grid a diffusers scheduler walks, as a reverie grid (``sigma -> t`` through the
    process, then the clean end); ``None`` where it is not a plain grid."""
    sch = make()
    sch.set_timesteps(steps)
    sigmas = getattr(sch, "sigmas", None)
    if sigmas is not None:  # the solver's own noise levels (sigma / alpha)
        s = sigmas.to(torch.float64)
        s = s[s > 0].unique_consecutive()  # Heun repeats its interior sigmas
        t = proc.t_from_log_snr(-2 * torch.log(s))
    else:  # DDIM / DDPM: the model is called at these timesteps
        t = sch.timesteps.to(torch.float64).unique_consecutive()
    t = t.clamp(max=proc.t_max)
    if not bool((t[1:] < t[:-1]).all()):
        return None
    return torch.cat([t, torch.tensor([proc.t_clean], dtype=t.dtype)])


class _Problem:
    """One mixture: its exact denoiser, the noises and sliced-W2 references A (choose) and B
    (report), and the two-sample floor on B."""

    def __init__(self, seed: int, args: argparse.Namespace, process=None):
        self.gm = gm = random_mixture(seed, args.dim)
        self.proc = VP.linear() if process is None else process
        exact = gm.denoiser(self.proc)
        self.den = type(exact)(
            lambda x, t: exact(x.double(), t).to(x.dtype), self.proc, "x0"
        )
        self.eps = lambda x, t: exact.eps(x.double(), t).to(x.dtype)
        base = args.seed * 100 + seed * 10
        gen = lambda k: torch.Generator().manual_seed(base + k)  # noqa: E731
        n = args.n
        self.noise = {
            "A": torch.randn(n, args.dim, generator=gen(1)),
            "B": torch.randn(n, args.dim, generator=gen(2)),
        }
        self.sw = {
            "A": SlicedWasserstein(gm.sample(4 * n, gen(3)), 128, gen(4)),
            "B": SlicedWasserstein(gm.sample(4 * n, gen(5)), 128, gen(6)),
        }
        # two-sample floor: the mean distance of five exact sample sets of size n
        self.floor = statistics.mean(self.sw["B"](gm.sample(n, gen(7 + 10 * k))) for k in range(5))

    def reverie(self, name: str, grid: torch.Tensor, split: str, **opts: Any) -> tuple[float, int]:
        x = self.noise[split] * float(self.proc.sigma(grid[0]))
        scores = []
        for seed in _seeds(SAMPLERS[name].stochastic):
            gen = torch.Generator().manual_seed(seed)
            out = run_sampler(name, self.den, x, grid, generator=gen, **opts)
            scores.append(_score(self.sw[split], out.x0))
        return statistics.mean(scores), out.nfe

    def diffusers(self, make, name: str, nfe: int, split: str) -> tuple[float, int]:
        scores = []
        for seed in _seeds(SAMPLERS[name].stochastic):
            x0, used = run_diffusers(make, self.eps, self.noise[split], _peer_steps(name, nfe),
                                     seed)
            scores.append(_score(self.sw[split], x0))
        return statistics.mean(scores), used


def _seeds(stochastic: bool) -> range:
    """Seeds of the sampler noise: one for an ODE; four for an SDE, whose distance to the
    exact samples varies with its noise (by up to a factor 5 on a mixture with narrow modes at
    n = 4000), averaged on both sides."""
    return range(11, 15) if stochastic else range(11, 12)


def _score(sw: SlicedWasserstein, x: torch.Tensor) -> float:
    return sw(x) if bool(torch.isfinite(x).all()) else float("nan")


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


def _names(args: argparse.Namespace) -> list[str]:
    """The samplers benchmarked: ``--samplers`` (checked against the registry) or all."""
    spec = getattr(args, "samplers", None)
    if not spec:
        return list(SAMPLERS)
    return [SAMPLERS[n.strip()].name for n in spec.split(",")]  # unknown names: a clear error


def defaults(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """No selection: each side's default at each NFE, on reference B."""
    rows = []
    for seed, pb in problems.items():
        for nfe in args.nfe:
            for name in _names(args):
                steps = _steps(name, nfe)
                ours, used = pb.reverie(name, _default_grid(pb, name, steps), "B")
                row = {"mixture": seed, "nfe": nfe, "method": name, "reverie": ours,
                       "reverie_nfe": used, "floor": pb.floor}
                if name in _peers():
                    cls, fixed = _peers()[name]
                    theirs, _ = pb.diffusers(lambda c=cls, f=fixed: c(**f), name, nfe, "B")
                    row["diffusers"] = theirs
                rows.append(row)
    return rows


def named_grid(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """Every sampler on the named grid ``args.grid`` (no selection on these mixtures), beside
    its default grid, on reference B."""
    rows, grid_name = [], getattr(args, "grid", "angle")
    for seed, pb in problems.items():
        for nfe in args.nfe:
            for name in _names(args):
                grid = make_grid(pb.proc, _steps(name, nfe), grid_name)
                ours, used = pb.reverie(name, grid, "B")
                rows.append({"mixture": seed, "nfe": nfe, "method": f"{name} ({grid_name})",
                             "reverie": ours, "reverie_nfe": used, "floor": pb.floor})
    return rows


# analytical teleportation's candidate samplers (split A, 5 NFE: unipc chosen, with
# reverie.teleport's defaults skip = 1 and the angle grid)
TELEPORT_SAMPLERS = ("unipc", "ipndm", "dpmpp_3m")


def teleport(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """``reverie.teleport.sample`` on split B: the Gaussian fitted from the model at ``t_max``
    (``fit_gaussian``, 256 calls paid once per mixture, its own noise seed), teleported to
    ``sigma / alpha`` = the largest data scale, then each sampler on the angle grid from there;
    NFE counts the per-sample calls."""
    from reverie import teleport as tp

    rows = []
    for seed, pb in problems.items():
        gen = torch.Generator().manual_seed(args.seed * 100 + seed * 10 + 9)
        fit = tp.fit_gaussian(pb.den, (args.dim,), generator=gen)
        for nfe in args.nfe:
            for name in TELEPORT_SAMPLERS:
                out = tp.sample(pb.den, pb.noise["B"], name, _steps(name, nfe), fit=fit)
                rows.append({"mixture": seed, "nfe": out.nfe, "method": f"{name} (teleport)",
                             "reverie": _score(pb.sw["B"], out.x0), "reverie_nfe": out.nfe,
                             "fit_nfe": fit.nfe, "fit_scale": fit.scale, "floor": pb.floor})
    return rows


def _default_grid(pb: _Problem, name: str, steps: int) -> torch.Tensor:
    return resolve_grid(SAMPLERS[name], pb.proc, steps, None)


def tuned(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """Both sides choose among the same candidate grids on A and are reported on B."""
    rows = []
    for seed, pb in problems.items():
        for nfe in args.nfe:
            for name in [n for n in _peers() if n in _names(args)]:
                if name == "dpmpp_2s":
                    continue  # single-step pairs: diffusers' grid is not a per-step grid
                steps = _steps(name, nfe)
                pick: dict[str, tuple[float, str]] = {}
                for vname, make in _variants(name).items():
                    try:
                        grid = peer_grid(pb.proc, make, _peer_steps(name, nfe))
                        theirs = pb.diffusers(make, name, nfe, "A")[0]
                    except Exception:  # noqa: BLE001 -- an option diffusers does not run
                        continue
                    if theirs == theirs and theirs < pick.get("diffusers", (float("inf"),))[0]:
                        pick["diffusers"] = (theirs, vname)
                    if grid is None or len(grid) - 1 != steps:
                        continue
                    ours = pb.reverie(name, grid, "A")[0]
                    if ours == ours and ours < pick.get("reverie", (float("inf"),))[0]:
                        pick["reverie"] = (ours, vname)
                row = {"mixture": seed, "nfe": nfe, "method": name, "floor": pb.floor}
                variants = _variants(name)
                if "reverie" in pick:
                    vname = pick["reverie"][1]
                    grid = peer_grid(pb.proc, variants[vname], _peer_steps(name, nfe))
                    row["reverie"], row["reverie_choice"] = pb.reverie(name, grid, "B")[0], vname
                if "diffusers" in pick:
                    vname = pick["diffusers"][1]
                    row["diffusers"] = pb.diffusers(variants[vname], name, nfe, "B")[0]
                    row["diffusers_choice"] = vname
                rows.append(row)
    return rows


def fitted(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """``optimize_grid`` for every deterministic sampler, fitted from the model alone."""
    rows = []
    for seed, pb in problems.items():
        for nfe in args.fit_nfe:
            for name in _names(args):
                if SAMPLERS[name].stochastic:
                    continue
                steps = _steps(name, nfe)
                t0 = time.perf_counter()
                grid, rep = optimize_grid(
                    pb.den, name, steps, shape=(args.dim,), n=args.fit_n,
                    generator=torch.Generator().manual_seed(args.seed * 100 + seed * 10 + 8),
                    dtype=torch.float32, return_report=True,
                    objective=getattr(args, "fit_objective", "auto"),
                )
                secs = time.perf_counter() - t0
                value, used = pb.reverie(name, grid, "B")
                rows.append({"mixture": seed, "nfe": used, "method": name, "fitted": value,
                             "source": rep.source, "fit_nfe": rep.nfe, "fit_s": secs,
                             "floor": pb.floor})
    return rows


def flows(args: argparse.Namespace) -> list[dict]:
    """A rectified flow (SD3 / Flux's process, ``shift = 1``): reverie's defaults against
    diffusers' flow-matching schedulers with their own defaults, on the same mixtures."""
    import diffusers as d

    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
    peers = {
        "euler": d.FlowMatchEulerDiscreteScheduler,
        "heun": d.FlowMatchHeunDiscreteScheduler,
        "dpmpp_2m": lambda: d.DPMSolverMultistepScheduler(**flow),
        "dpmpp_3m": lambda: d.DPMSolverMultistepScheduler(solver_order=3, **flow),
        "unipc": lambda: d.UniPCMultistepScheduler(**flow),
    }
    rows = []
    for seed in args.mixtures:
        pb = _Problem(seed, args, RectifiedFlow())
        for nfe in args.nfe:
            for name, cls in peers.items():
                grid = resolve_grid(SAMPLERS[name], pb.proc, _steps(name, nfe), None)
                ours, used = pb.reverie(name, grid, "B")
                sch = cls()
                sch.set_timesteps(_peer_steps(name, nfe))
                x = pb.noise["B"].clone()
                for t in sch.timesteps:
                    tt = float(t) / 1000  # diffusers' flow timesteps: 1000 sigma (shift 1)
                    x = sch.step((x - pb.den(x, tt)) / tt, t, x).prev_sample  # v = eps - x0
                rows.append({"mixture": seed, "nfe": nfe, "method": name, "reverie": ours,
                             "reverie_nfe": used, "diffusers": _score(pb.sw["B"], x),
                             "diffusers_nfe": len(sch.timesteps), "floor": pb.floor})
    return rows


def targets(default_rows, fitted_rows, tuned_rows, args) -> dict[str, Any]:
    """Per mixture and NFE: defaults never worse than the peer's default; at 5 NFE the best
    reverie error's excess over the floor at most half of diffusers' best default's."""
    out: dict[str, Any] = {}
    losses = [r for r in default_rows if "diffusers" in r
              and not r["reverie"] <= r["diffusers"] * 1.02 + 0.002]
    paired = [r for r in default_rows if "diffusers" in r]
    out["defaults: cells where reverie's default loses to diffusers' default by > 2%"] = (
        f"{len(losses)} of {len(paired)}"
        + (": " + ", ".join(f"{r['method']}@{r['nfe']} (mixture {r['mixture']}: "
                            f"{r['reverie']:.4f} vs {r['diffusers']:.4f})" for r in losses)
           if losses else "")
    )
    for seed in args.mixtures:
        d5 = [r for r in default_rows if r["mixture"] == seed and r["nfe"] == 5]
        f5 = [r for r in fitted_rows if r["mixture"] == seed and r["nfe"] == 5]
        t5 = [r for r in tuned_rows if r["mixture"] == seed and r["nfe"] == 5 and "reverie" in r]
        if not (d5 and f5):
            continue
        floor = d5[0]["floor"]
        theirs = min((r for r in d5 if "diffusers" in r), key=lambda r: r["diffusers"])
        cands = [(r["reverie"], f"{r['method']} default") for r in d5]
        cands += [(r["fitted"], f"{r['method']} optimize_grid") for r in f5]
        cands += [(r["reverie"], f"{r['method']} tuned {r['reverie_choice']}") for r in t5]
        best = min(cands)
        key = (f"mixture {seed} @NFE5: best reverie ({best[1]}, {best[0]:.4f}) excess over the "
               f"floor ({floor:.4f}) / best diffusers default ({theirs['method']}, "
               f"{theirs['diffusers']:.4f}) excess (target <= 0.5)")
        if theirs["diffusers"] - floor < 0.05 * floor:
            out[key] = "not measurable: diffusers' best is within 5% of the two-sample floor"
        else:
            out[key] = round((best[0] - floor) / (theirs["diffusers"] - floor), 3)
    return out


# ---------------------------------------------------------------------------------------------
# the M2 methods outside the registry: ReDi retrieval and adaptive DPM-Solver
# ---------------------------------------------------------------------------------------------

# ReDi's setting, chosen on the tuning mixtures 1, 2, 101-104 (split A; top in {1, 2, 4}, base
# sampler ipndm or dpmpp_2m, key/value steps (1, 16), (1, 17), (2, 18) for 5 calls, (2, 12)
# for 10): a base of 4000 ipndm runs of 20 steps, the nearest key (top = 1)
REDI = {5: (1, 16), 10: (2, 12)}  # per-sample model calls -> (key_step, value_step)


def retrieval(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """``reverie.redi`` (ReDi) on split B: a knowledge base of 4000 full ipndm runs (20 steps,
    their own noise seed) per mixture, then per sample ``key_step`` calls to the key, the
    retrieval, and the steps from the value step on; beside ipndm's default at the same
    calls. ``nfe`` counts the per-sample calls (plus one check call on one probe sample per
    batch, not counted); the base's 4000 x 16 calls are paid once, offline."""
    from reverie import redi

    rows = []
    for seed, pb in problems.items():
        kb_noise = torch.randn(4000, args.dim, generator=torch.Generator().manual_seed(seed + 77))
        for nfe, (key, value) in REDI.items():
            if nfe not in args.nfe:
                continue
            base = redi.build(pb.den, kb_noise, sampler="ipndm", steps=20, key_step=key,
                              value_step=value)
            out = redi.sample(base, pb.den, pb.noise["B"])
            ipndm = pb.reverie("ipndm", _default_grid(pb, "ipndm", nfe), "B")[0]
            rows.append({"mixture": seed, "nfe": out.nfe - 1, "method": "redi", "reverie":
                         _score(pb.sw["B"], out.x0), "ipndm": ipndm, "floor": pb.floor})
    return rows


def adaptive(problems: dict[int, _Problem], args: argparse.Namespace) -> list[dict]:
    """``reverie.samplers_m2.dpm_adaptive`` (DPM-Solver-23, k-diffusion's defaults but rtol) on
    split B: its error and the model calls it chose."""
    from reverie.samplers_m2 import dpm_adaptive

    rows = []
    for seed, pb in problems.items():
        for rtol in (0.2, 0.05, 0.01):
            out = dpm_adaptive(pb.den, pb.noise["B"], rtol=rtol)
            rows.append({"mixture": seed, "rtol": rtol, "method": "dpm_adaptive",
                         "reverie": _score(pb.sw["B"], out.x0), "nfe": out.nfe,
                         "floor": pb.floor})
    return rows


# ---------------------------------------------------------------------------------------------
# per-step overhead and memory
# ---------------------------------------------------------------------------------------------


# reverie sampler -> the diffusers scheduler timed against it
PAIRS = {
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++2M",
    "dpmpp_3m": "DPM++3M",
    "unipc": "UniPC-2",
    "euler": "Euler",
    "heun": "Heun",
}


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


# ---------------------------------------------------------------------------------------------


def _side_by_side(rows: list[dict], args) -> list[list]:
    """Per sampler (in the rows' order), its reverie row and, where measured, its diffusers row:
    the mean over mixtures at each NFE ("-" where none)."""
    table = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        for side in ("reverie", "diffusers"):
            if not any(side in r for r in mine):
                continue
            cells = []
            for nfe in args.nfe:
                vals = [r[side] for r in mine if r["nfe"] == nfe and side in r]
                cells.append(statistics.mean(vals) if vals else "-")
            table.append([name, side, *cells])
    return table


PARTS = ("defaults", "tuned", "fitted", "flows", "retrieval", "adaptive", "grid", "teleport",
         "overhead", "memory")


def run_bench(args: argparse.Namespace) -> dict:
    if args.quick:
        args.n, args.nfe, args.mixtures = min(args.n, 2000), [5, 10], args.mixtures[:2]
        args.fit_nfe, args.fit_n = [5], min(args.fit_n, 512)
    parts = [p.strip() for p in args.parts.split(",")]
    if unknown := set(parts) - set(PARTS):
        raise ValueError(f"unknown part(s) {sorted(unknown)}; expected some of {PARTS}")
    t0 = time.perf_counter()
    result: dict[str, Any] = {"args": vars(args) | {"func": None}}
    headers = ["sampler", "side", *[f"NFE {n}" for n in args.nfe]]
    problems = {}
    if {"defaults", "tuned", "fitted", "retrieval", "adaptive", "grid", "teleport"} & set(parts):
        problems = {seed: _Problem(seed, args) for seed in args.mixtures}
        result["floor"] = statistics.mean(pb.floor for pb in problems.values())
    d_rows = t_rows = f_rows = []
    if "defaults" in parts:
        d_rows = result["defaults"] = defaults(problems, args)
        print(f"\n### Defaults (no selection): sliced W2, mean over {len(problems)} held-out "
              f"mixtures (dim {args.dim}, n = {args.n}, float32 state both sides; mean floor "
              f"{result['floor']:.4f})\n")
        print(format_table(headers, _side_by_side(d_rows, args)))
        print("\nPer mixture (reverie / diffusers, defaults):\n")
        print(_per_mixture(d_rows, args))
    if "tuned" in parts:
        t_rows = result["tuned"] = tuned(problems, args)
        print("\n### Tuned, held out: the same candidate grids (diffusers' spacing options) for "
              "both sides, chosen on seed A, reported on seed B (mean over mixtures)\n")
        print(format_table(headers, _side_by_side(t_rows, args)))
    if "fitted" in parts:
        f_rows = result["fitted"] = fitted(problems, args)
        print("\n### Fitted: reverie.optimize_grid from the model alone, reported on seed B "
              "(mean over mixtures; fit cost in model calls on one sample)\n")
        table = []
        for name in dict.fromkeys(r["method"] for r in f_rows):
            cells = []
            for nfe in args.fit_nfe:
                vals = [r for r in f_rows if r["method"] == name and nfe - 1 <= r["nfe"] <= nfe]
                cells.append(
                    f"{statistics.mean(r['fitted'] for r in vals):.4f} "
                    f"({statistics.mean(r['fit_nfe'] for r in vals) / 1e3:.0f}k NFE, "
                    f"{statistics.mean(r['fit_s'] for r in vals):.1f} s)" if vals else "-"
                )
            table.append([name, *cells])
        print(format_table(["sampler", *[f"NFE {n}" for n in args.fit_nfe]], table))
    if "flows" in parts:
        fl_rows = result["flows"] = flows(args)
        print("\n### Flows: RectifiedFlow defaults vs diffusers' FlowMatch schedulers' defaults "
              "(reverie / diffusers, float32 both sides)\n")
        print(format_table(headers, _side_by_side(fl_rows, args)))
        print(_per_mixture(fl_rows, args))
    if "retrieval" in parts:
        rows = result["retrieval"] = retrieval(problems, args)
        print("\n### ReDi (reverie.redi): a base of 4000 ipndm runs per mixture, then "
              "retrieval; per-sample model calls, split B (reverie / ipndm default)\n")
        print(format_table(["mixture", "NFE", "redi", "ipndm default", "floor"],
                           [[r["mixture"], r["nfe"], r["reverie"], r["ipndm"], r["floor"]]
                            for r in rows]))
    if "adaptive" in parts:
        rows = result["adaptive"] = adaptive(problems, args)
        print("\n### Adaptive DPM-Solver-23 (dpm_adaptive): error and the NFE it chose\n")
        print(format_table(["mixture", "rtol", "NFE", "sliced W2", "floor"],
                           [[r["mixture"], r["rtol"], r["nfe"], r["reverie"], r["floor"]]
                            for r in rows]))
    if "grid" in parts:
        rows = result["grid"] = named_grid(problems, args)
        print(f"\n### Every sampler on grid={rows[0]['method'].split()[-1]}: sliced W2 on seed "
              "B, mean over mixtures, then per mixture\n")
        print(format_table(headers, _side_by_side(rows, args)))
        cells = {(r["mixture"], r["method"], r["nfe"]): r["reverie"] for r in rows}
        names = dict.fromkeys(r["method"] for r in rows)
        print(format_table(["mixture", "sampler", *[f"NFE {n}" for n in args.nfe]],
                           [[m, name, *[cells[m, name, n] for n in args.nfe]]
                            for m in args.mixtures for name in names]))
    if "teleport" in parts:
        rows = result["teleport"] = teleport(problems, args)
        print("\n### Analytical teleportation (reverie.teleport): sliced W2 on seed B, mean over "
              "mixtures, then per mixture (with the floor)\n")
        print(format_table(headers, _side_by_side(rows, args)))
        cells = {(r["mixture"], r["method"], r["nfe"]): r["reverie"] for r in rows}
        names = dict.fromkeys(r["method"] for r in rows)
        floors = {r["mixture"]: r["floor"] for r in rows}
        print(format_table(["mixture", "sampler", *[f"NFE {n}" for n in args.nfe], "floor"],
                           [[m, name, *[cells[m, name, n] for n in args.nfe], floors[m]]
                            for m in args.mixtures for name in names]))
    acc_s = time.perf_counter() - t0
    if "overhead" in parts:
        ov = result["overhead"] = overhead(rounds=3 if args.quick else 7)
        print(
            "\n### Per-step overhead (model that costs nothing, x of shape 1x4x64x64 float32, "
            "50 steps, median of interleaved rounds)\n"
        )
        print(format_table(
            ["reverie", "diffusers", "reverie us/step", "diffusers us/step", "ratio"],
            [[r["reverie"], r["diffusers"], r["reverie_us"], r["diffusers_us"], r["ratio"]]
             for r in ov],
        ))
    if "memory" in parts:
        mem = result["memory"] = memory(args.dim)
        print("\n### Memory: copies of x held in the sampler state between steps\n")
        print(format_table(["sampler", "order", "history copies"],
                           [[r["method"], r["order"], r["history_copies"]] for r in mem]))
    checks = result["checks"] = targets(d_rows, f_rows, t_rows, args) if d_rows else {}
    if "flows" in parts:
        lost = [r for r in result["flows"] if not r["reverie"] <= r["diffusers"] * 1.02 + 0.002]
        checks["flows: cells where reverie's default loses to diffusers' by > 2%"] = (
            f"{len(lost)} of {len(result['flows'])}")
    print("\n### Targets\n")
    for k, v in checks.items():
        print(f"- {k}: {v}")
    print(f"\nmachine: {machine()}; accuracy parts took {acc_s:.0f} s")
    if getattr(args, "plot", None) and d_rows:
        plot_defaults(result, args.plot)
        print(f"wrote {args.plot}")
    return result


def plot_defaults(result: dict, path: str) -> None:
    """Error vs NFE of the defaults table (mean over mixtures): reverie solid, diffusers dashed,
    ``optimize_grid`` dotted, the floor grey; one panel per sampler that has a peer."""
    from reverie.plot import _figure, save_figure

    rows, fitted_rows = result["defaults"], result.get("fitted", [])
    names = [m for m in dict.fromkeys(r["method"] for r in rows) if any(
        "diffusers" in r for r in rows if r["method"] == m)]
    cols = 5
    fig = _figure(3.0 * cols, 2.6 * math.ceil(len(names) / cols))
    floor = statistics.mean(r["floor"] for r in rows)
    for k, name in enumerate(names):
        ax = fig.add_subplot(math.ceil(len(names) / cols), cols, k + 1)
        for key, style, label in (("reverie", "-o", "reverie default"),
                                  ("diffusers", "--s", "diffusers default")):
            nfes = sorted({r["nfe"] for r in rows if r["method"] == name})
            ys = [statistics.mean(r[key] for r in rows if r["method"] == name and r["nfe"] == n)
                  for n in nfes]
            ax.plot(nfes, ys, style, ms=3, label=label)
        fit = [r for r in fitted_rows if r["method"] == name]
        if fit:
            nfes = sorted({r["nfe"] for r in fit})
            ax.plot(nfes, [statistics.mean(r["fitted"] for r in fit if r["nfe"] == n)
                           for n in nfes], ":^", ms=3, label="optimize_grid")
        ax.axhline(floor, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()
        ticks = sorted({r["nfe"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        lo, hi = ax.get_ylim()
        yt = [v for v in (0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0) if lo <= v <= hi]
        ax.set_yticks(yt, [f"{v:g}" for v in yt])
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    fig.suptitle("sliced W2 to exact samples vs NFE (mean over held-out mixtures; grey: floor)",
                 fontsize=9)
    fig.subplots_adjust(hspace=0.4, wspace=0.3)
    save_figure(fig, path)


def _per_mixture(rows: list[dict], args: argparse.Namespace) -> str:
    out = []
    for seed in args.mixtures:
        for name in dict.fromkeys(r["method"] for r in rows if "diffusers" in r):
            cells = []
            for nfe in args.nfe:
                r = next(r for r in rows if r["mixture"] == seed and r["method"] == name
                         and r["nfe"] == nfe)
                cells.append(f"{r['reverie']:.4f} / {r['diffusers']:.4f}")
            out.append([seed, name, *cells])
    return format_table(["mixture", "sampler", *[f"NFE {n}" for n in args.nfe]], out)


run = run_bench

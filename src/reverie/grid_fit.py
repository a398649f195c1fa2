"""Time grids fitted to a model and a sampler, from the model alone (no data).

:func:`optimize_grid` follows the recipe of the teacher-based grid optimisers (GITS, Chen et al.
2024; OSS, Pei et al. 2025; LD3, Tong et al. 2025): a many-step solve of the probability-flow
ODE from the same noise is the target, and the grid is chosen to bring the few-step sampler's
output closest to it. The search is over

1. the named grids (:data:`reverie.grids.GRIDS`) and the sampler's default;
2. a two-parameter *angle* family: with ``c`` the data scale (the teacher's output standard
   deviation) and ``theta = atan(sigma_ve / c)``, interior points at
   ``theta_i = theta_max (1 - i / N)^p`` for a few ``c`` multiples and exponents ``p``. On
   Gaussian data ``N(0, c^2 I)`` DDIM's exact optimum is ``p = 1`` (equal angle steps; Sabour et
   al. 2024, "Align Your Steps", Thm. 3.1), so the family contains the known answer;
3. a local coordinate search of each interior point of the best candidate between its
   neighbours (grids of up to ``refine_max_steps`` steps).

The objective is the mean squared distance to the teacher (deterministic samplers) or the
sliced 2-Wasserstein distance to the teacher's samples (stochastic samplers, with common random
numbers so that candidates are compared on the same noise; ``objective="sw"`` for any
sampler). Half of the ``n`` noises fit; the other half validate: the fitted grid is returned
only if it beats the sampler's default grid on the validation half, otherwise the default is
returned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer, positive_int
from reverie._progress import progress_bar
from reverie._random import randn
from reverie.denoisers import DenoiserBase
from reverie.grids import GRIDS, check_grid, make_grid
from reverie.metrics import SlicedWasserstein
from reverie.samplers import SAMPLERS, Sampler, resolve_grid, run

__all__ = ["optimize_grid", "GridFit"]


@dataclass
class GridFit:
    """What :func:`optimize_grid` found: the grid returned, where it came from, the fitting and
    validation losses of the default and the chosen grid, and the cost in model calls (``nfe``
    counts one call on one sample; ``teacher_nfe`` is the part spent on the teacher)."""

    grid: Tensor
    source: str
    fit_loss: float
    val_loss: float
    default_fit_loss: float
    default_val_loss: float
    nfe: int
    teacher_nfe: int
    candidates: dict[str, float] = field(default_factory=dict)


def optimize_grid(
    denoiser: DenoiserBase,
    sampler: str | Sampler,
    steps: int,
    *,
    shape: tuple[int, ...] | list[int],
    n: int = 4096,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    teacher_steps: int | None = None,
    refine_max_steps: int = 12,
    objective: str = "auto",
    return_report: bool = False,
    progress: bool = False,
    **options: Any,
) -> Tensor | tuple[Tensor, GridFit]:
    """A grid of ``steps`` steps fitted to ``denoiser`` and ``sampler`` from the model alone.

    ``shape`` is the shape of one sample; ``n`` noises are drawn from ``generator`` (half fit,
    half validate); ``cond`` goes to every model call and ``options`` to the sampler. The
    teacher is third-order DPM-Solver++(3M) (``legacy=False``) with ``teacher_steps`` steps
    (default ``max(200, 10 steps)``).
    ``objective``: ``"mse"`` (the mean squared distance to the teacher from the same noise,
    trajectory matching as in GITS / OSS / LD3; the default for deterministic samplers) or
    ``"sw"`` (sliced W2 to the teacher's samples: the output law; the default for stochastic
    ones, and better in distribution on low-dimensional mixtures where a few mode flips
    dominate the squared error). Returns the grid (float64, ending at the clean end), or
    ``(grid, GridFit)`` with
    ``return_report=True``. The cost is about ``n (teacher_steps + K nfe(steps))`` model calls
    for ``K`` ~ 30-60 candidate grids: seconds on an exact model, and worth lowering ``n`` to
    64-256 for a network.
    """
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    if objective not in ("auto", "mse", "sw"):
        raise ValueError(f"objective must be 'auto', 'mse' or 'sw', got {objective!r}")
    if objective == "auto":
        objective = "sw" if info.stochastic else "mse"
    positive_int("steps", steps)
    integer("n (half fit, half validate)", n, 4)
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
    proc = denoiser.process
    dtype = dtype or torch.get_default_dtype()
    z = randn((n, *tuple(shape)), generator, dtype=dtype)
    halves = {"fit": z[: n // 2], "val": z[n // 2 :]}
    cost = {"nfe": 0}

    def solve(name: str | Sampler, grid: Tensor, noise: Tensor, **opts: Any) -> Tensor:
        g = torch.Generator().manual_seed(0)  # common random numbers for stochastic samplers
        out = run(
            name, denoiser, noise * float(proc.sigma(grid[0])), grid, generator=g, cond=cond,
            **opts,
        )
        cost["nfe"] += out.nfe * noise.shape[0]
        return out.x0

    # the target: a many-step third-order solve from the same noise
    m = teacher_steps or max(200, 10 * steps)
    teacher_grid = resolve_grid(SAMPLERS["dpmpp_3m"], proc, m, _teacher_grid_name(proc))
    teacher = {k: solve("dpmpp_3m", teacher_grid, v, legacy=False) for k, v in halves.items()}
    teacher_nfe = cost["nfe"]
    flat = teacher["fit"].reshape(teacher["fit"].shape[0], -1).double()
    scale = float(flat.var(dim=0).mean().sqrt()) if flat.shape[0] > 1 else 1.0
    sw = {
        k: SlicedWasserstein(v, 128, torch.Generator().manual_seed(1))
        for k, v in teacher.items()
    }

    def loss(grid: Tensor, half: str) -> float:
        x = solve(info, grid, halves[half], **options)
        if not bool(torch.isfinite(x).all()):
            return math.inf
        if objective == "sw":
            return sw[half](x)
        return float((x.double() - teacher[half].double()).pow(2).mean())

    default = resolve_grid(info, proc, steps, None)
    candidates: dict[str, Tensor] = {"default": default}
    for name in GRIDS:
        try:
            candidates[name] = make_grid(proc, steps, name)
        except ValueError:
            continue  # a grid this process cannot build (e.g. log-SNR infinite at t_max)
    for mult in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        for p in (0.75, 1.0, 1.25, 1.5, 2.0, 3.0):
            g = _angle_grid(proc, steps, mult * max(scale, 1e-6), p)
            if g is not None:
                candidates[f"angle(c={mult:g}s, p={p:g})"] = g
    bar = progress_bar(len(candidates), progress, "optimize_grid", unit="grid")
    scores: dict[str, float] = {}
    for key, g in candidates.items():
        scores[key] = loss(g, "fit")
        bar.update(1)
    bar.close()
    best_key = min(scores, key=lambda k: scores[k])
    best, best_loss = candidates[best_key], scores[best_key]
    if 1 < steps <= refine_max_steps and math.isfinite(best_loss):
        best, best_loss = _refine(proc, best, best_loss, lambda g: loss(g, "fit"))
        if best_loss < scores[best_key]:
            best_key = f"{best_key}, refined"
    val_best, val_default = loss(best, "val"), loss(default, "val")
    if not val_best < val_default:
        best, best_key, best_loss, val_best = default, "default", scores["default"], val_default
    report = GridFit(
        grid=best,
        source=best_key,
        fit_loss=best_loss,
        val_loss=val_best,
        default_fit_loss=scores["default"],
        default_val_loss=val_default,
        nfe=cost["nfe"],
        teacher_nfe=teacher_nfe,
        candidates=scores,
    )
    return (best, report) if return_report else best


def _teacher_grid_name(proc) -> str:
    return "logsnr" if math.isfinite(float(proc.log_snr(proc.t_max))) else "trailing"


def _angle_grid(proc, steps: int, c: float, p: float) -> Tensor | None:
    """``theta_i = theta_max (1 - i/steps)^p`` with ``theta = atan(sigma_ve / c)``, interior
    points kept at or above ``t_min``; ``None`` if the points collapse."""
    s_max = float(proc.sigma_ve(torch.tensor(proc.t_max, dtype=torch.float64)))
    theta_max = math.atan(s_max / c) if math.isfinite(s_max) else math.pi / 2
    s_min = float(proc.sigma_ve(torch.tensor(proc.t_min, dtype=torch.float64)))
    u = (1 - torch.arange(1, steps, dtype=torch.float64) / steps) ** p
    return _grid_from_sigmas(proc, (c * torch.tan(u * theta_max)).clamp(min=s_min))


def _refine(proc, grid: Tensor, best: float, loss, sweeps: int = 3) -> tuple[Tensor, float]:
    """Coordinate search of each interior point in ``log sigma_ve`` between its neighbours,
    with steps shrinking by half each sweep (AYS's per-point search, made cheap)."""
    log_s = torch.log(proc.sigma_ve(grid[:-1]).to(torch.float64))
    lo_end = math.log(float(proc.sigma_ve(torch.tensor(proc.t_min, dtype=torch.float64))))
    for sweep in range(sweeps):
        frac = 0.25 / 2**sweep
        for i in range(1, len(log_s)):
            upper = float(log_s[i - 1])
            lower = float(log_s[i + 1]) if i + 1 < len(log_s) else lo_end
            for direction in (-1.0, 1.0):
                span = (upper - float(log_s[i])) if direction > 0 else (float(log_s[i]) - lower)
                if not math.isfinite(span) or span <= 0:
                    continue
                trial = log_s.clone()
                trial[i] = log_s[i] + direction * frac * span
                g = _from_log_sigma(proc, trial)
                if g is None:
                    continue
                value = loss(g)
                if value < best:
                    best, log_s, grid = value, trial, g
    return grid, best


def _from_log_sigma(proc, log_s: Tensor) -> Tensor | None:
    return _grid_from_sigmas(proc, torch.exp(log_s[1:]))


def _grid_from_sigmas(proc, sigma_ve: Tensor) -> Tensor | None:
    """``t_max``, the times of the interior noise levels ``sigma_ve``, the clean end; ``None``
    if that is not a valid grid (points out of order)."""
    inner = proc.t_from_sigma_ve(sigma_ve).to(torch.float64)
    grid = torch.cat(
        [torch.tensor([proc.t_max], dtype=torch.float64), inner,
         torch.tensor([proc.t_clean], dtype=torch.float64)]
    )
    try:
        return check_grid(grid, proc)
    except ValueError:
        return None

"""Time grids: decreasing tensors of process times that end exactly at the clean end.

A grid for ``steps`` steps has ``steps + 1`` entries ``t_0 > t_1 > ... > t_steps = t_clean``;
samplers evaluate the model at (some of) ``t_0 .. t_{steps-1}`` and take the last step onto
the clean end explicitly. Grids are separate from samplers (k-diffusion): any sampler walks
any grid, and a custom tensor is accepted wherever a grid name is.

=============  =========================================================================
``uniform``    ``steps`` points uniform in ``t`` from ``t_max`` to ``t_min``, then ``t_clean``
``trailing``   ``steps + 1`` points uniform in ``t`` from ``t_max`` to ``t_clean``
               (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed")
``logsnr``     uniform in log-SNR between ``t_max`` and ``t_min``, then ``t_clean``
               (DPM-Solver's "logSNR" / diffusers ``use_lu_lambdas``)
``karras``     Karras et al. (2022) eq. 5 in ``sigma/alpha`` with ``rho = 7``, then ``t_clean``
``leading``    ``t_min + k (t_max - t_clean) / steps`` for ``k = steps-1 .. 0``, then ``t_clean``
               (diffusers' ``leading`` spacing, DDIM's default: the last evaluation at ``t_min``;
               for a discrete-time :class:`~reverie.process.VP` the stride is rounded down to
               whole training steps, as diffusers does)
``angle``      ``sigma_ve = c tan(theta_i)``, ``theta_i`` from ``theta_max`` to ``theta_min`` as
               ``(1 - i / steps)^p``, then ``t_clean`` (:func:`angle_times`). Equal angle steps
               (``p = 1``) are DDIM's exact optimum on ``N(0, c^2 I)`` (Sabour et al. 2024,
               "Align Your Steps", Thm. 3.1); ``c = 3``, ``p = 1.75`` were chosen at 5 NFE on
               the tuning mixtures (BENCHMARKS.md, "the angle grid"); like ``trailing``, the
               last evaluation stays above ``t_min`` (near ``c tan(theta_max / steps^p)``)
=============  =========================================================================

For a :class:`~reverie.process.RectifiedFlow` with ``shift != 1`` the ``uniform`` and
``trailing`` grids are shifted as in SD3: ``t' = s t / (1 + (s - 1) t)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.process import GaussianProcess

__all__ = ["GRIDS", "make_grid", "check_grid", "angle_times"]

GRIDS = ("uniform", "trailing", "logsnr", "karras", "leading", "angle")

# the angle grid's c and p, chosen at 5 NFE on the tuning mixtures 1, 2, 101-104 (split A;
# BENCHMARKS.md, "samplers: the angle grid"): c in 0.5-10, p in 1-2.5
ANGLE_C, ANGLE_P = 3.0, 1.75


def make_grid(
    process: GaussianProcess,
    steps: int,
    name: str = "logsnr",
    *,
    t_max: float | None = None,
    t_min: float | None = None,
    rho: float = 7.0,
    c: float = ANGLE_C,
    p: float = ANGLE_P,
) -> Tensor:
    """A float64 grid of ``steps + 1`` times from ``t_max`` to ``process.t_clean``.

    ``t_max``/``t_min`` default to the process's own range; ``rho`` is Karras's exponent,
    ``c`` and ``p`` the ``angle`` grid's scale (in ``sigma / alpha``) and warp.
    """
    positive_int("steps", steps)
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; expected one of {', '.join(GRIDS)}")
    hi = process.t_max if t_max is None else float(t_max)
    lo = process.t_min if t_min is None else float(t_min)
    clean = process.t_clean
    if not clean < lo < hi or hi > process.t_max + 1e-12:
        raise ValueError(
            f"need t_clean={clean} < t_min={lo} < t_max={hi} <= process.t_max={process.t_max}"
        )
    f64 = torch.float64
    if name == "trailing":
        inner = torch.linspace(hi, clean, steps + 1, dtype=f64)[:-1]
        inner = _shift(process, inner)
    elif name == "uniform":
        inner = _shift(process, torch.linspace(hi, lo, steps, dtype=f64))
    elif name == "leading":
        stride = (hi - clean) / steps
        if getattr(process, "num_train_timesteps", None) is not None:
            stride = math.floor(stride)  # whole training steps (diffusers: T // steps)
        if not lo + (steps - 1) * stride <= hi or stride <= 0:
            raise ValueError(
                f"the 'leading' grid cannot fit {steps} steps in [t_min={lo}, t_max={hi}]; "
                f"use fewer steps or grid='trailing'"
            )
        inner = _shift(process, lo + stride * torch.arange(steps - 1, -1, -1, dtype=f64))
    elif name == "angle":
        inner = angle_times(process, steps, c, p, hi, lo)
    else:
        lam_hi, lam_lo = float(process.log_snr(hi)), float(process.log_snr(lo))
        if not (math.isfinite(lam_hi) and math.isfinite(lam_lo)):
            raise ValueError(
                f"the {name!r} grid needs a finite log-SNR at both ends, but log_snr(t_max={hi}) "
                f"= {lam_hi}; pass a smaller t_max (e.g. t_max=0.999) or use grid='trailing'"
            )
        if name == "logsnr":
            lam = torch.linspace(lam_hi, lam_lo, steps, dtype=f64)
            inner = process.t_from_log_snr(lam)
        else:  # karras
            s_hi, s_lo = math.exp(-0.5 * lam_hi), math.exp(-0.5 * lam_lo)
            ramp = torch.linspace(0, 1, steps, dtype=f64)
            sig = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
            inner = process.t_from_sigma_ve(sig)
        # pin the ends exactly (the inverse maps are accurate only to rounding)
        inner[0] = hi
        if steps > 1:
            inner[-1] = lo
    grid = torch.cat([inner, torch.tensor([clean], dtype=f64)])
    return check_grid(grid, process)


def angle_times(process: GaussianProcess, steps: int, c: float, p: float,
                t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """The ``steps`` evaluation times of the ``angle`` grid: with ``theta = atan(sigma_ve / c)``
    (``pi / 2`` where ``sigma_ve`` is infinite), ``theta_i = theta_min + (theta_max -
    theta_min) (1 - i / steps)^p`` for ``i = 0 .. steps - 1``: ``t_max`` first, every point
    strictly above ``t_min``."""
    if not (c > 0 and p > 0):
        raise ValueError(f"the angle grid needs c > 0 and p > 0, got c={c}, p={p}")
    f64 = torch.float64
    hi = process.t_max if t_max is None else float(t_max)
    lo = process.t_min if t_min is None else float(t_min)
    s_hi, s_lo = (float(process.sigma_ve(torch.tensor(v, dtype=f64))) for v in (hi, lo))
    th_hi = math.atan(s_hi / c) if math.isfinite(s_hi) else math.pi / 2
    th_lo = math.atan(s_lo / c)
    theta = th_lo + (th_hi - th_lo) * (1 - torch.arange(steps, dtype=f64) / steps) ** p
    inner = process.t_from_sigma_ve(c * torch.tan(theta[1:])).to(f64)  # sigma_ve = c tan(theta)
    return torch.cat([torch.tensor([hi], dtype=f64), inner])


def _shift(process: GaussianProcess, t: Tensor) -> Tensor:
    shift = getattr(process, "shift", 1.0)
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def check_grid(grid: Tensor, process: GaussianProcess) -> Tensor:
    """Validate a grid and return it as float64; raise ``ValueError`` saying what is wrong."""
    if not isinstance(grid, Tensor):
        grid = torch.as_tensor(grid)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(
            f"a grid must be a 1-D tensor of at least 2 times, got shape {tuple(grid.shape)}"
        )
    if not grid.is_floating_point():
        grid = grid.to(torch.float64)
    grid = grid.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("the grid contains NaN or inf")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"a grid must be strictly decreasing, got {grid.tolist()}")
    clean = process.t_clean
    tol = 1e-9 * max(1.0, abs(process.t_max))
    if abs(float(grid[-1]) - clean) > tol:
        raise ValueError(
            f"a grid must end at the clean end t_clean={clean} of {process!r}; "
            f"it ends at {float(grid[-1])} (append {clean} to take the final step explicitly)"
        )
    grid[-1] = clean
    if float(grid[0]) > process.t_max + tol:
        raise ValueError(
            f"a grid must start at or below t_max={process.t_max} of {process!r}, "
            f"it starts at {float(grid[0])}"
        )
    return grid

"""The geometric perspective: Chen et al. (2023), "A geometric perspective on diffusion models"
(arXiv:2305.19947).

* The **sampling trajectory** ``x_t`` of the probability-flow ODE and the **denoising trajectory**
  ``D(x_t)`` beside it (:func:`trajectory`): the first is quasi-linear, close to the chord
  from ``x_T`` to ``x_0`` (:func:`deviation`, :func:`straightness`); the second reaches a good
  sample earlier.
* **ODE-jump** (:func:`ode_jump`): run the ODE for the first ``k`` steps of a grid and jump to
  the denoiser output ``D(x_{t_k})`` (every reverie sampler's final step onto the clean end is
  that jump, so this is the sampler on the truncated grid).
* **Mean shift** (:func:`mean_shift`): the optimal denoiser of an empirical data set is one
  mean-shift step with a Gaussian kernel of bandwidth ``sigma / alpha`` (their Prop. 3):
  ``D*(x; sigma) = sum_i softmax_i(-|x / alpha - y_i|^2 / (2 (sigma / alpha)^2)) y_i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess
from reverie.samplers import SAMPLERS, State, resolve_grid, run

__all__ = ["Trajectory", "trajectory", "deviation", "straightness", "ode_jump", "mean_shift",
           "EmpiricalDenoiser"]


@dataclass(frozen=True)
class Trajectory:
    """A sampling trajectory ``x`` (``[steps + 1, batch, ...]``: ``x_T`` first, the sample last)
    and the denoising trajectory ``x0`` (``[steps, batch, ...]``: the data prediction the
    sampler made at each step), on the grid ``t``."""

    x: Tensor
    x0: Tensor
    t: Tensor


class _Recording(DenoiserBase):
    """A denoiser that keeps its outputs (the denoising trajectory)."""

    def __init__(self, inner: DenoiserBase):
        self.inner, self.process, self.outputs = inner, inner.process, []

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        out = self.inner(x, t, **cond)
        self.outputs.append(out)
        return out


def trajectory(denoiser: DenoiserBase, noise: Tensor, sampler: str = "euler", steps: int = 18,
               grid: str | Tensor | None = None, *, cond: Mapping[str, Any] | None = None,
               **options: Any) -> Trajectory:
    """Both trajectories of ``sampler`` from ``sigma(t_0) * noise`` (one model call per step:
    a single-call sampler such as ``euler``/``ddim``, the paper's; the denoising trajectory of a
    multi-call sampler records its last call per step)."""
    info = SAMPLERS[sampler]
    g = resolve_grid(info, denoiser.process, steps, grid)
    rec = _Recording(denoiser)
    x = noise * float(denoiser.process.sigma(g[0]))
    states = [x]
    marks: list[int] = []

    def keep(state: State, _sch: Any) -> None:
        states.append(state.x)
        marks.append(len(rec.outputs) - 1)

    run(info, rec, x, g, cond=cond, callback=keep, **options)
    return Trajectory(torch.stack(states), torch.stack([rec.outputs[k] for k in marks]), g)


def deviation(path: Tensor) -> Tensor:
    """The distance of each point of ``path`` (``[points, batch, ...]``) to the straight line
    through its first and last points (the paper's trajectory deviation, Fig. 3), ``[points,
    batch]``; 0 at both ends and everywhere on a straight path."""
    if not isinstance(path, Tensor) or path.ndim < 2 or path.shape[0] < 2:
        got = tuple(path.shape) if isinstance(path, Tensor) else type(path).__name__
        raise ValueError(f"path must be a tensor [points >= 2, batch, ...], got {got}")
    flat = path.reshape(path.shape[0], path.shape[1], -1)
    start, chord = flat[0], flat[-1] - flat[0]
    rel = flat - start
    unit = chord / chord.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    along = (rel * unit).sum(-1, keepdim=True)
    return (rel - along * unit).norm(dim=-1)


def straightness(path: Tensor) -> Tensor:
    """Chord length over path length per sample, ``[batch]`` (1 for a straight path)."""
    flat = path.reshape(path.shape[0], path.shape[1], -1)
    length = (flat[1:] - flat[:-1]).norm(dim=-1).sum(0)
    return (flat[-1] - flat[0]).norm(dim=-1) / length.clamp_min(torch.finfo(flat.dtype).tiny)


def ode_jump(denoiser: DenoiserBase, noise: Tensor, jump: int, sampler: str = "euler",
             steps: int = 18, grid: str | Tensor | None = None, *,
             cond: Mapping[str, Any] | None = None, generator=None, **options: Any) -> Tensor:
    """ODE-jump (Chen et al. 2023, Sec. 5): walk the first ``jump`` steps of ``sampler``'s grid
    of ``steps`` steps, then jump to the denoiser output at ``t_jump`` (the grid point there):
    ``jump = steps`` is the sampler itself; the model calls are those of ``jump`` steps + 1."""
    info = SAMPLERS[sampler]
    g = resolve_grid(info, denoiser.process, steps, grid)
    if isinstance(jump, bool) or not isinstance(jump, int) or not 0 <= jump <= len(g) - 2:
        raise ValueError(f"jump must be a step index in [0, {len(g) - 2}], got {jump!r}")
    short = torch.cat([g[: jump + 1], g[-1:]])  # ... t_jump, then the clean end: D(x_{t_jump})
    x = noise * float(denoiser.process.sigma(g[0]))
    return run(info, denoiser, x, short, cond=cond, generator=generator, **options).x0


class EmpiricalDenoiser(DenoiserBase):
    """The exact denoiser of the empirical distribution of ``data`` under ``process``: one
    mean-shift step (:func:`mean_shift`) with bandwidth ``sigma_t / alpha_t``."""

    def __init__(self, data: Tensor, process: GaussianProcess):
        self.data, self.process = data, process

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        if a == 0:  # x carries no information: the data mean
            return self.data.mean(0).expand_as(x).to(x.dtype)
        return mean_shift(x / a, self.data, s / a)


def mean_shift(x: Tensor, data: Tensor, bandwidth: float) -> Tensor:
    """One mean-shift step with a Gaussian kernel: ``sum_i w_i(x) y_i``, ``w = softmax(-|x -
    y_i|^2 / (2 bandwidth^2))`` -- the optimal (empirical-data) denoiser at noise level
    ``bandwidth`` in EDM's VE coordinates (Chen et al. 2023, Prop. 3); ``bandwidth = 0``: the
    nearest data point."""
    flat, ys = x.reshape(x.shape[0], -1), data.reshape(data.shape[0], -1).to(x)
    if flat.shape[1] != ys.shape[1]:
        raise ValueError(f"x and data must have the same sample shape, got {tuple(x.shape[1:])} "
                         f"and {tuple(data.shape[1:])}")
    d2 = torch.cdist(flat, ys).square()
    if bandwidth == 0:
        return ys[d2.argmin(1)].reshape(x.shape)
    w = torch.softmax(-d2 / (2 * bandwidth**2), dim=1)
    return (w @ ys).reshape(x.shape)

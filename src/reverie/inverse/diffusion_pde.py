"""DiffusionPDE: posterior sampling under sparse observations and a PDE constraint.

Huang et al., "DiffusionPDE: Generative PDE-Solving Under Partial Observation" (NeurIPS 2024).
The model is a prior over the *joint* field (solution and coefficient stacked, e.g. ``x = (u,
a)``); Alg. 1 guides every sampler step with the gradients of two losses of the data
prediction ``x0_hat = D(x_t)``: the observation loss ``|y - A(x0_hat)|`` and the PDE loss
``|f(x0_hat)|`` of a differentiable residual ``f`` (the discretised PDE on the grid), so that
the result both matches the sparse observations and (nearly) solves the PDE; the unobserved
coefficient is recovered jointly with the solution. ``sampler="heun"`` is the paper's Alg. 1:
EDM's deterministic Heun step (Karras et al. 2022, Alg. 1; NFE 2 per step) from ``x_i``, then
both gradients (taken with respect to ``x_i`` through ``D(x_i)``, the Heun step's first model
call) subtracted from ``x_{i+1}``; ``sampler="ddpm"`` (the default, kept for compatibility) takes
the DDPM ancestral step instead (as in DPS). It is a function of its own, not one of
:data:`reverie.inverse.METHODS` (it needs the ``residual``, which the generic benchmarks do not
have).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie.denoisers import DenoiserBase
from reverie.inverse.guidance import Fixed
from reverie.inverse.methods import Problem, _time, _walk
from reverie.inverse.noise import as_noise_model
from reverie.inverse.operators import LinearOperator
from reverie.samplers import SAMPLERS, State, resolve_grid

__all__ = ["diffusion_pde"]


class _Reuse(Fixed):
    """``D`` whose first call returns the prediction made beforehand (with the gradient) and
    whose later calls (Heun's corrector at ``x_{i+1}``) run the model."""

    def __init__(self, x0: Tensor, denoiser: DenoiserBase):
        super().__init__(x0, denoiser.process)
        self.denoiser, self.used = denoiser, False

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if self.used:
            return self.denoiser(x, t, **cond)
        self.used = True
        return self.x0


def diffusion_pde(
    denoiser: DenoiserBase, operator: LinearOperator, y: Tensor, noise_std: float,
    residual: Callable[[Tensor], Tensor], *, steps: int = 100, n: int = 1,
    scale: float = 1.0, pde_scale: float = 1.0, generator: Generators = None,
    sampler: str = "ddpm", pde_start: float = 0.0, late_scale: float = 1.0,
) -> Tensor:
    """DiffusionPDE (Huang et al. 2024, Alg. 1): ``n`` samples of the joint field given one
    measurement ``y`` (shape ``operator.out_shape``); after each step
    ``x_{i+1} -= scale * grad |y - A(x0_hat)| + pde_scale * grad |f(x0_hat)|``, both
    gradients through the network (``scale`` as in DPS). ``residual(x0) -> [B, ...]`` is the
    PDE residual ``f`` of a batch of fields; ``pde_scale = 0`` is observation-only guidance.
    ``sampler``: ``"ddpm"`` (ancestral step, NFE = steps) or ``"heun"`` (the paper's EDM Heun
    step, NFE = 2 steps - 1; the gradients are applied once per step, so at equal NFE give it
    half the steps and twice the scales). ``pde_start``: the fraction of the steps before the
    PDE loss is switched on, after which the observation scale is multiplied by ``late_scale``
    (the authors' released Darcy script: ``pde_start=0.8, late_scale=0.1``; the defaults
    ``0, 1`` apply both losses at every step)."""
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"operator must be a LinearOperator, got {type(operator).__name__}")
    if not callable(residual):
        raise TypeError(f"residual must be a function x0 -> PDE residual, got {residual!r}")
    if not isinstance(y, Tensor) or tuple(y.shape) != operator.out_shape:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must have shape {operator.out_shape}, got {got}")
    positive_int("steps", steps)
    positive_int("n", n)
    if not 0.0 <= pde_start <= 1.0:
        raise ValueError(f"pde_start must be a fraction of the steps in [0, 1], got {pde_start}")
    if sampler not in ("ddpm", "heun"):
        raise ValueError(f"sampler must be 'ddpm' or 'heun', got {sampler!r}")
    proc = denoiser.process
    base = SAMPLERS[sampler]
    grid = resolve_grid(base, proc, steps, proc.default_grid)
    problem = Problem(denoiser, operator, y.expand(n, *y.shape), as_noise_model(noise_std),
                      operator.in_shape, y.dtype, grid, {})
    den, sch = denoiser, problem.schedule()
    state = State(problem.start(problem.n, generator, sch))
    y = problem.y

    def step(state: State) -> State:
        xr = state.x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = den(xr, _time(sch, state.i))
            r = residual(x0)
            if not isinstance(r, Tensor) or r.shape[:1] != x0.shape[:1]:
                got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(f"residual must return [batch={x0.shape[0]}, ...] for fields "
                                 f"of shape {tuple(x0.shape)}, got {got}")
            obs = problem.noise.dps_residual(y, problem.forward(x0)).norm(dim=1)  # |y - A x0|
            late = state.i >= pde_start * steps  # the PDE loss is on
            zeta_obs, zeta_pde = (scale * late_scale, pde_scale) if late else (scale, 0.0)
            loss = zeta_obs * obs.sum() + zeta_pde * r.reshape(r.shape[0], -1).norm(dim=1).sum()
            (grad,) = torch.autograd.grad(loss, xr)
        with torch.no_grad():  # the unguided step from x_i, its first model call D(x_i) reused
            state = base.step(_Reuse(x0.detach(), den), state, sch, generator=generator)
            return replace(state, x=state.x - grad)  # x_{i+1} -= zeta_obs g_obs + zeta_pde g_pde

    return _walk(sch, state, step, "diffusion_pde").x

"""Sequential posterior sampling: warm starts across the frames of a sequence.

Stevens et al., "Sequential Posterior Sampling with Diffusion Models" (ICASSP 2025). For a
sequence of measurements ``y_1, ..., y_K`` of a moving scene, frame ``k``'s posterior sampling
does not start from pure noise: frame ``k-1``'s sample is pushed through a transition model
``f`` and noised to an intermediate time ``tau`` of the grid,

    x_tau = alpha_tau f(x_{k-1}) + sigma_tau eps,

and the posterior sampler walks only the rest of the grid (``warm_steps`` steps instead of
``steps``). The first frame is sampled cold. Any registered non-SMC method of
:data:`reverie.inverse.METHODS` that starts from :meth:`Problem.start` can be warm-started
(DPS, PiGDM, DiffPIR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.inverse.methods import METHODS, Problem
from reverie.inverse.noise import as_noise_model
from reverie.inverse.operators import LinearOperator
from reverie.samplers import SAMPLERS, Schedule, resolve_grid

__all__ = ["WARM_METHODS", "sequential_solve"]

#: the methods whose first state is :meth:`Problem.start` (so a warm start replaces it)
WARM_METHODS = ("dps", "pigdm", "diffpir")


@dataclass
class _WarmProblem(Problem):
    init: Tensor | None = None  # f(x_{k-1}): the predicted clean frame

    def start(self, n: int, generator: Generators, sch: Schedule) -> Tensor:
        if self.init is None:
            return super().start(n, generator, sch)
        eps = randn((n, *self.shape), generator, dtype=self.dtype)
        return sch.alpha[0] * self.init + sch.sigma[0] * eps  # x_tau = alpha f(x) + sigma eps


def sequential_solve(
    denoiser: DenoiserBase, operator: LinearOperator, ys: Tensor, noise_std: float,
    transition: Callable[[Tensor], Tensor], *, method: str = "pigdm", steps: int = 100,
    warm_steps: int = 20, n: int = 1, generator: Generators = None, **options: object,
) -> Tensor:
    """Samples ``[K, n, *in_shape]`` of each frame's posterior ``p(x_k | y_k)`` for the
    measurements ``ys [K, *out_shape]``: frame 1 with ``steps`` steps from noise, frame ``k >
    1`` with the last ``warm_steps`` steps of that grid from ``transition`` of frame ``k-1``'s
    samples (Stevens et al. 2025); ``options`` go to the method."""
    if method not in WARM_METHODS:
        raise ValueError(f"method must be one of {WARM_METHODS} (they start from "
                         f"Problem.start), got {method!r}")
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"operator must be a LinearOperator, got {type(operator).__name__}")
    if not isinstance(ys, Tensor) or tuple(ys.shape[1:]) != operator.out_shape:
        got = tuple(ys.shape) if isinstance(ys, Tensor) else type(ys).__name__
        raise ValueError(f"ys must have shape [frames, {', '.join(map(str, operator.out_shape))}]"
                         f", got {got}")
    positive_int("steps", steps)
    positive_int("warm_steps", warm_steps)
    if warm_steps > steps:
        raise ValueError(f"warm_steps must be <= steps, got {warm_steps} > {steps}")
    positive_int("n", n)
    proc, info = denoiser.process, METHODS[method]
    grid = resolve_grid(SAMPLERS["ddpm"], proc, steps, proc.default_grid)
    noise, out, prev = as_noise_model(noise_std), [], None
    for y in ys:
        init = None if prev is None else transition(prev)  # push frame k-1 to frame k
        g = grid if prev is None else grid[-warm_steps - 1:]  # the rest of the grid from tau
        problem = _WarmProblem(denoiser, operator, y.expand(n, *y.shape), noise,
                               operator.in_shape, ys.dtype, g, {}, init=init)
        prev, _ = info.fn(problem, steps=g.numel() - 1, generator=generator, **options)
        out.append(prev)
    return torch.stack(out)

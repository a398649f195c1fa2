"""Conditional sampling of a function given observed points (Dutordoir et al. 2023, "Neural
Diffusion Processes", Sec. 3.3 and Alg. 2): the context values are noised by the forward
process to the current time and denoised *jointly* with the target values; only the target
part is kept, and each step is repeated ``resample`` times, going back one step by the forward
kernel in between (RePaint, Lugmayr et al. 2022). ``resample=1`` is plain replacement (Song et
al. 2021). With the exact GP denoiser the samples approach the exact GP posterior
(:meth:`reverie.functions.GP.posterior`; tests/test_functions.py measures how close).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid

__all__ = ["condition"]


def _batched(v: Tensor, n: int, name: str) -> Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    if v.ndim == 1:
        return v.expand(n, -1)
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(f"{name} must be [N] or [n={n}, N], got {list(v.shape)}")
    return v


def _check_domain(denoiser: DenoiserBase, x: Tensor, name: str) -> None:
    gp = getattr(denoiser, "gp", None)
    domain = gp.domain if gp is not None else getattr(denoiser, "domain", None)
    if domain is None:
        return
    lo, hi = domain
    if not bool(torch.isfinite(x).all()) or bool(((x < lo) | (x > hi)).any()):
        raise ValueError(f"{name} must lie in the model's domain [{lo}, {hi}]; got values in "
                         f"[{float(x.min())}, {float(x.max())}]")


def condition(denoiser: DenoiserBase, x_obs: Tensor, y_obs: Tensor, x_target: Tensor, *,
              n: int = 1, sampler: str = "ddpm", steps: int = 50, resample: int = 5,
              grid: str | Tensor | None = None, generator: Generators = None) -> Tensor:
    """``n`` samples ``[n, N]`` of the values at ``x_target`` given ``y_obs`` at ``x_obs``
    (locations ``[M]``/``[N]`` shared or ``[n, M]``/``[n, N]``; ``y_obs`` ``[M]`` or ``[n, M]``).

    NDP Alg. 2 on a grid ``t_0 > ... > t_K`` of ``steps`` steps, with a one-step ``sampler``
    (default DDPM's ancestral step, the paper's; a multistep sampler's memory is not kept, so
    it takes its first-order step):

        y_T ~ N(0, sigma_0^2 I)                                   # targets start as noise
        for i < K, repeated u = 1..resample:
            c = alpha_i y_obs + sigma_i eps                       # context noised to t_i
            [_, y] = sampler step of [c, y] from t_i to t_{i+1}   # joint reverse step
            if u < resample:                                      # back to t_i (RePaint)
                y = (alpha_i / alpha_{i+1}) y + sqrt(sigma_i^2 - (alpha_i sigma_{i+1} /
                    alpha_{i+1})^2) z
    """
    positive_int("resample", resample)
    info = SAMPLERS[sampler]
    xo, xt = _batched(x_obs, n, "x_obs"), _batched(x_target, n, "x_target")
    yo = _batched(y_obs, n, "y_obs")
    if yo.shape != xo.shape:
        raise ValueError(f"observed locations {list(torch.as_tensor(x_obs).shape)} and values "
                         f"{list(torch.as_tensor(y_obs).shape)} must have the same number of "
                         f"points")
    _check_domain(denoiser, xo, "observed locations")
    _check_domain(denoiser, xt, "target locations")
    m = xo.shape[1]
    shared = torch.as_tensor(x_obs).ndim == 1 and torch.as_tensor(x_target).ndim == 1
    cond = {"locations": torch.cat([xo[0], xt[0]]) if shared else torch.cat([xo, xt], 1)}
    sch = Schedule.build(denoiser.process, resolve_grid(info, denoiser.process, steps, grid))
    y = sch.sigma[0] * randn(xt.shape, generator, dtype=torch.float64)
    with torch.no_grad():
        for i in range(sch.steps):
            a_i, s_i, a_j, s_j = sch.alpha[i], sch.sigma[i], sch.alpha[i + 1], sch.sigma[i + 1]
            for u in range(resample):
                c = a_i * yo + s_i * randn(yo.shape, generator, dtype=torch.float64)
                joint = info.step(denoiser, State(torch.cat([c, y], 1), i), sch,
                                  generator=generator, cond=cond).x
                y = joint[:, m:]
                if u < resample - 1:  # forward kernel q(y_{t_i} | y_{t_{i+1}})
                    r = a_i / a_j
                    std = math.sqrt(max(s_i**2 - (r * s_j) ** 2, 0.0))
                    y = r * y + std * randn(y.shape, generator, dtype=torch.float64)
    return y

"""AlphaFold 3's EDM sampler and Protenix-Mini's few-step ODE setting of it.

AlphaFold 3 (Abramson et al. 2024, Suppl. Alg. 18) samples atom coordinates with an EDM-style
(Karras et al. 2022) stochastic sampler on a Karras schedule ``c_tau = sigma_data (s_max^(1/rho)
+ tau / T (s_min^(1/rho) - s_max^(1/rho)))^rho`` (``s_max = 160``, ``s_min = 4e-4``, ``rho =
7``, ``sigma_data = 16`` A), each step adding churn noise ``gamma0`` when ``c_tau > gamma_min``,
scaled by ``noise_scale_lambda = 1.003``, and over-stepping the Euler update by
``step_scale_eta = 1.5``, with 200 steps. Protenix-Mini (Gong et al. 2025, "Protenix-Mini:
Efficient Structure Predictor via Compact Architecture, Few-Step Diffusion and Switchable
pLM") replaces it by a *two-step ODE* sampler, which the paper finds loses little accuracy.
:data:`PROTENIX_MINI` takes it as the plain ODE setting of Alg. 18: ``gamma0 = 0`` (no churn,
so ``noise_scale_lambda`` is unused; 1), ``step_scale_eta = 1`` (plain Euler steps on the
probability-flow ODE), 2 steps on the same schedule. The paper also discusses adjusting the
step size of few-step ODE sampling; its exact step-scale value was not checked here, so
``step_scale_eta`` stays an option.

:func:`af3_sample` is Alg. 18 on any reverie denoiser (the SE(3) centring and random
rotation of coordinates are left out: they are specific to atoms), :func:`af3_schedule` its
schedule; :data:`AF3_DEFAULT` and :data:`PROTENIX_MINI` are the two settings. ``gamma_min`` is
in units of ``sigma_data`` (AF3's 1 A at ``sigma_data = 16`` A is ``1 / 16``). See
docs/fewstep.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase

__all__ = ["af3_schedule", "af3_sample", "AF3_DEFAULT", "PROTENIX_MINI"]

#: AlphaFold 3's sampler setting (Suppl. Alg. 18 and Sec. 3.7.1): 200 steps.
AF3_DEFAULT = {"steps": 200, "gamma0": 0.8, "gamma_min": 1 / 16, "noise_scale_lambda": 1.003,
               "step_scale_eta": 1.5}
#: Protenix-Mini's few-step ODE setting: two plain Euler steps of the probability-flow ODE.
PROTENIX_MINI = {"steps": 2, "gamma0": 0.0, "gamma_min": 1 / 16, "noise_scale_lambda": 1.0,
                 "step_scale_eta": 1.0}


def af3_schedule(steps: int, sigma_data: float = 1.0, s_max: float = 160.0,
                 s_min: float = 4e-4, rho: float = 7.0) -> Tensor:
    """The ``steps + 1`` noise levels ``c_0 > ... > c_T`` (float64, VE sigma in data units)."""
    positive_int("steps", steps)
    if not 0 < s_min < s_max or sigma_data <= 0 or rho <= 0:
        raise ValueError(f"need 0 < s_min < s_max, sigma_data > 0, rho > 0; got s_min={s_min}, "
                         f"s_max={s_max}, sigma_data={sigma_data}, rho={rho}")
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return sigma_data * (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))
                         ) ** rho


def af3_sample(denoiser: DenoiserBase, noise: Tensor, schedule: Tensor, *, gamma0: float,
               gamma_min: float, noise_scale_lambda: float, step_scale_eta: float,
               sigma_data: float = 1.0, generator: Generators = None, **cond) -> Tensor:
    """AlphaFold 3 Suppl. Alg. 18 from ``c_0 * noise`` along ``schedule`` (from
    :func:`af3_schedule`); returns ``x`` at the last level ``c_T`` (AF3 returns it as is).
    The solver state is in VE coordinates (``x / alpha``); ``cond`` goes to the denoiser."""
    c = torch.as_tensor(schedule, dtype=torch.float64)
    if c.ndim != 1 or len(c) < 2 or not bool((c[1:] < c[:-1]).all() and (c > 0).all()):
        raise ValueError(f"schedule must be a decreasing 1-D tensor of positive noise levels, "
                         f"got {c.tolist() if c.numel() < 8 else list(c.shape)}")
    if gamma0 < 0 or noise_scale_lambda < 0 or step_scale_eta <= 0:
        raise ValueError(f"need gamma0 >= 0, noise_scale_lambda >= 0, step_scale_eta > 0; got "
                         f"{gamma0}, {noise_scale_lambda}, {step_scale_eta}")
    proc = denoiser.process
    top = float(proc.sigma_ve(torch.tensor(proc.t_max, dtype=torch.float64)))
    if c[0] * (1 + gamma0) > top * (1 + 1e-9):
        raise ValueError(f"the schedule starts at sigma {float(c[0]) * (1 + gamma0):.4g}, above "
                         f"the process's largest sigma {top:.4g}; use a VE process reaching it")
    x = float(c[0]) * noise  # x_0 = c_0 * N(0, I)
    for prev, nxt in zip(c[:-1].tolist(), c[1:].tolist()):
        gamma = gamma0 if nxt > gamma_min * sigma_data else 0.0  # churn only at high noise
        t_hat = prev * (gamma + 1)  # raised noise level
        if gamma > 0:  # xi = lambda sqrt(t_hat^2 - c^2) N(0, I)
            xi = randn(x.shape, generator, dtype=x.dtype)
            x = x + noise_scale_lambda * math.sqrt(t_hat**2 - prev**2) * xi
        t = proc.t_from_sigma_ve(torch.tensor(t_hat, dtype=torch.float64))
        a = float(proc.alpha(t))
        x_den = denoiser(a * x, t, **cond)  # D(x_noisy, t_hat)
        delta = (x - x_den) / t_hat  # delta = (x_noisy - x_denoised) / t_hat
        x = x + step_scale_eta * (nxt - t_hat) * delta  # x <- x_noisy + eta dt delta
    return x

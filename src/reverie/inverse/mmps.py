"""MMPS: moment-matching posterior sampling (registered as ``"mmps"``).

Rozet, Andry, Lanusse & Louppe, "Learning Diffusion Priors from Observations by Expectation
Maximization" (NeurIPS 2024, section 4). The likelihood of ``y = A x + n``, ``n ~ N(0,
sigma_y^2 I)``, given ``x_t`` is approximated with the first two moments of ``x_0 | x_t``: the
mean ``D(x_t)`` and Tweedie's covariance ``Sigma_t = (sigma_t^2 / alpha_t) dD/dx_t``,

    p(y | x_t) ~ N(y; A D(x_t), sigma_y^2 I + A Sigma_t A^T),

whose score is ``(dD/dx_t)^T A^T (sigma_y^2 I + A Sigma_t A^T)^{-1} (y - A D(x_t))``. The
linear system is solved by conjugate gradients with ``Sigma_t`` applied by vector-Jacobian
products (the Jacobian of a denoiser is symmetric), never formed. Unlike PiGDM's ``r_t^2 I``
the covariance follows the prior, so the conditional denoiser is exact for any Gaussian prior.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.inverse.guidance import _coefs, _predict_with_grad
from reverie.inverse.methods import Cost, Problem, register
from reverie.inverse.operators import LinearOperator, _cg
from reverie.samplers import run

__all__ = ["MMPSDenoiser", "mmps"]


class MMPSDenoiser(DenoiserBase):
    """``E[x_0 | x_t, y] ~ D(x_t) + (sigma_t^2 / alpha_t) J^T A^T (sigma_y^2 I + A Sigma_t
    A^T)^{-1} (y - A D(x_t))`` with ``Sigma_t = (sigma_t^2 / alpha_t) J``, ``J = dD/dx_t``
    (module docstring); ``cg_iters`` conjugate-gradient iterations, each one vector-Jacobian
    product. ``y`` holds one measurement per sample or one for all."""

    def __init__(self, denoiser: DenoiserBase, operator: LinearOperator, y: Tensor,
                 noise_std: float, *, cg_iters: int = 5):
        positive_int("cg_iters", cg_iters)
        self.denoiser, self.process = denoiser, denoiser.process
        self.operator, self.y = operator, y
        self.noise_std, self.cg_iters = float(noise_std), cg_iters

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        xr, x0 = _predict_with_grad(self.denoiser, x, t, cond)
        a, s = _coefs(self.process, t, x)
        op, c = self.operator, s**2 / a

        def jt(u: Tensor) -> Tensor:  # J^T u, one vector-Jacobian product
            (g,) = torch.autograd.grad(x0, xr, u, retain_graph=True)
            return g

        def cov_y(u: Tensor) -> Tensor:  # (sigma_y^2 I + A Sigma_t A^T) u
            return self.noise_std**2 * u + op.A(c * jt(op.AT(u)))

        resid = (self.y - op.A(x0)).detach()
        with torch.enable_grad():
            v = _cg(cov_y, resid, iters=self.cg_iters)
            g = jt(op.AT(v))  # J^T A^T v: the likelihood score
        return x0.detach() + c * g  # Tweedie on p(x_t | y)


@register(
    "mmps",
    paper="Rozet et al., NeurIPS 2024",
    linear=True,
    gaussian=True,
    description="moment-matching posterior sampling: Tweedie's covariance (the denoiser's "
    "Jacobian) in the Gaussian likelihood, by conjugate gradients",
)
def mmps(
    problem: Problem, *, steps: int, generator: Generators, eta: float = 1.0,
    cg_iters: int = 5, **_: object,
) -> tuple[Tensor, Cost]:
    """Moment-matching posterior sampling (Rozet et al., NeurIPS 2024): the DDIM sampler
    (``eta``; 1 = DDPM ancestral) on :class:`MMPSDenoiser`. Per step one model call and at
    most ``cg_iters + 1`` vector-Jacobian products (CG stops early once converged)."""
    sch = problem.schedule()
    guided = MMPSDenoiser(problem.denoiser, problem.operator, problem.y, problem.noise_std,
                          cg_iters=cg_iters)
    x = problem.start(problem.n, generator, sch)
    out = run("ddim", guided, x, problem.grid, generator=generator, eta=eta)
    return out.x0, Cost(sch.steps, sch.steps * (cg_iters + 1))

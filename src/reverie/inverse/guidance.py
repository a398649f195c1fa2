"""Posterior terms as denoiser -> denoiser combinators (DESIGN.md, idea 2).

Each class wraps a prior denoiser ``D(x_t, t) = E[x0 | x_t]`` into an approximate *conditional*
denoiser ``E[x0 | x_t, y]``, so any sampler of :mod:`reverie.samplers` walks the posterior
without changing. By Tweedie's formula applied to ``p(x_t | y)``,

    E[x0 | x_t, y] = D(x_t, t) + (sigma_t^2 / alpha_t) grad_{x_t} log p(y | x_t),

and the methods differ in how they approximate ``p(y | x_t)``:

* :class:`PiGDMDenoiser` -- PiGDM (Song et al. 2023, eq. 8): ``p(y | x_t) ~ N(y; A D(x_t),
  sigma_y^2 I + r_t^2 A A^T)``, the gradient taken through the network (one vector-Jacobian
  product). Exact for a Gaussian prior ``N(m, data_std^2 I)``.
* :class:`DiffPIRDenoiser` -- DiffPIR (Zhu et al. 2023, eq. 13): the data-consistency proximal
  step ``argmin_x |y - A x|^2 / (2 sigma_y^2) + rho_t / 2 |x - D(x_t)|^2`` replaces the
  prediction (no network gradient).
* :class:`JointNoiseDenoiser` -- joint posterior over signal and structured noise with two
  diffusion priors (Stevens et al., "Removing Structured Noise with Diffusion Models", TMLR 2025,
  Alg. 1 with the PiGDM likelihood of their eq. 12).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie._tensor import bcast, time_tensor
from reverie.denoisers import DenoiserBase
from reverie.inverse.operators import LinearOperator
from reverie.process import GaussianProcess

__all__ = ["PiGDMDenoiser", "DiffPIRDenoiser", "JointNoiseDenoiser", "Fixed"]


class Fixed(DenoiserBase):
    """A denoiser that returns a prediction computed beforehand (no model call). Lets a
    method evaluate a sampler transition (mean and std of its Gaussian kernel) for a data
    prediction it has already made, e.g. with a gradient attached."""

    def __init__(self, x0: Tensor, process: GaussianProcess):
        self.x0 = x0
        self.process = process

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.x0


def _coefs(process: GaussianProcess, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    a = bcast(process.alpha(t), like).to(like.dtype)
    s = bcast(process.sigma(t), like).to(like.dtype)
    return a, s


def posterior_variance(process: GaussianProcess, t: Tensor, data_std: float) -> Tensor:
    """``r_t^2 = Var[x0 | x_t]`` for data ``N(m, data_std^2 I)``:
    ``data_std^2 sigma_ve^2 / (data_std^2 + sigma_ve^2)`` (PiGDM's ``r_t^2`` with data_std=1)."""
    sve2 = process.sigma_ve(t) ** 2
    d2 = data_std**2
    return d2 * sve2 / (d2 + sve2)


def _predict_with_grad(
    denoiser: DenoiserBase, x: Tensor, t: Tensor, cond: dict
) -> tuple[Tensor, Tensor]:
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        x0 = denoiser(xr, t, **cond)
    return xr, x0


class PiGDMDenoiser(DenoiserBase):
    """PiGDM's conditional denoiser (Song, Vahdat, Mardani & Kautz, ICLR 2023, eq. 7-8):

        D_y(x_t) = D(x_t) + scale * sigma_t^2 / alpha_t * J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1}
                   (y - A D(x_t)),       J = dD/dx_t,

    with ``r_t^2 = data_std^2 sigma_ve^2 / (data_std^2 + sigma_ve^2)`` (the paper's choice for
    data of unit variance is ``data_std = 1``). The paper adds the same gradient directly to the
    DDIM update with a heuristic weight; here it enters through Tweedie's formula, which makes
    the conditional denoiser exact for a Gaussian prior ``N(m, data_std^2 I)``. ``y`` holds one
    measurement per sample (``[B, *out_shape]``) or one for all (``[1, *out_shape]``).
    Each call costs one model evaluation and one vector-Jacobian product.
    """

    def __init__(
        self,
        denoiser: DenoiserBase,
        operator: LinearOperator,
        y: Tensor,
        noise_std: float,
        *,
        scale: float = 1.0,
        data_std: float = 1.0,
    ):
        self.denoiser, self.process = denoiser, denoiser.process
        self.operator, self.y = operator, y
        self.noise_std, self.scale, self.data_std = float(noise_std), float(scale), float(data_std)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        xr, x0 = _predict_with_grad(self.denoiser, x, t, cond)
        a, s = _coefs(self.process, t, x)
        r2 = posterior_variance(self.process, t, self.data_std).to(x.dtype)
        op = self.operator
        resid = (self.y - op.A(x0)).detach()
        v = op.gram_solve(resid, r2, self.noise_std**2)  # (r^2 AA^T + s_y^2 I)^-1 r
        (g,) = torch.autograd.grad(x0, xr, op.AT(v))  # J^T A^T v
        return x0.detach() + self.scale * (s**2 / a) * g  # Tweedie on p(x_t | y)


class DiffPIRDenoiser(DenoiserBase):
    """DiffPIR's data step (Zhu et al., CVPR 2023, eq. 13 / Alg. 1 line 4) as a denoiser:

        x0 = D(x_t) + (A^T A + rho_t I)^{-1} A^T (y - A D(x_t)),
        rho_t = lam sigma_y^2 / sigma_ve(t)^2,

    the minimiser of ``|y - A x|^2 + rho_t |x - D(x_t)|^2``; with ``sigma_y = 0`` it is the
    projection onto ``{A x = y}``. No network gradient is needed.
    """

    def __init__(
        self,
        denoiser: DenoiserBase,
        operator: LinearOperator,
        y: Tensor,
        noise_std: float,
        *,
        lam: float = 7.0,
    ):
        self.denoiser, self.process = denoiser, denoiser.process
        self.operator, self.y = operator, y
        self.noise_std, self.lam = float(noise_std), float(lam)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        x0 = self.denoiser(x, t, **cond)
        rho = (self.lam * self.noise_std**2 / self.process.sigma_ve(t) ** 2).to(x.dtype)
        op = self.operator
        return x0 + op.normal_solve(op.AT(self.y - op.A(x0)), 1.0, rho)


class JointNoiseDenoiser(DenoiserBase):
    """Joint conditional denoiser over ``z = [x, n]`` (flattened, concatenated) for
    ``y = A x + n + sigma_y e`` with a diffusion prior on the signal ``x`` and another on the
    structured noise ``n`` (Stevens et al., TMLR 2025, Alg. 1; PiGDM likelihood, eq. 12):

        p(y | x_t, n_t) ~ N(y; A D_x(x_t) + D_n(n_t), r_t^2 A A^T + (q_t^2 + sigma_y^2) I),

    and each prediction is moved by Tweedie's formula along its own gradient of that
    likelihood, weighted by ``lam`` (signal) and ``kappa`` (noise). ``r_t`` / ``q_t`` use
    ``data_std`` / ``noise_data_std`` as in :class:`PiGDMDenoiser`. Both priors must share the
    noising process. Costs two model evaluations and two vector-Jacobian products per call.
    """

    def __init__(
        self,
        denoiser: DenoiserBase,
        noise_denoiser: DenoiserBase,
        operator: LinearOperator,
        y: Tensor,
        noise_std: float,
        *,
        lam: float = 1.0,
        kappa: float = 1.0,
        data_std: float = 1.0,
        noise_data_std: float = 1.0,
    ):
        self.denoiser, self.noise_denoiser = denoiser, noise_denoiser
        self.process = denoiser.process
        self.operator, self.y = operator, y
        self.noise_std = float(noise_std)
        self.lam, self.kappa = float(lam), float(kappa)
        self.data_std, self.noise_data_std = float(data_std), float(noise_data_std)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        op, b = self.operator, z.shape[0]
        x = z[:, : op.in_dim].reshape(b, *op.in_shape)
        n = z[:, op.in_dim :].reshape(b, *op.out_shape)
        return x, n

    def __call__(self, z: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, z)
        x, n = self.split(z)
        xr, x0 = _predict_with_grad(self.denoiser, x, t, cond)
        nr, n0 = _predict_with_grad(self.noise_denoiser, n, t, cond)
        op = self.operator
        r2 = posterior_variance(self.process, t, self.data_std).to(z.dtype)
        q2 = posterior_variance(self.process, t, self.noise_data_std).to(z.dtype)
        resid = (self.y - op.A(x0) - n0).detach()
        v = op.gram_solve(resid, r2, q2 + self.noise_std**2)  # Sigma_t^-1 (y - mu_t)
        gx, gn = torch.autograd.grad((x0, n0), (xr, nr), (op.AT(v), v))
        a, s = _coefs(self.process, t, z)
        w = (s**2 / a).reshape(-1)
        x0 = x0.detach() + self.lam * bcast(w, x0) * gx
        n0 = n0.detach() + self.kappa * bcast(w, n0) * gn
        return torch.cat([x0.reshape(z.shape[0], -1), n0.reshape(z.shape[0], -1)], dim=1)

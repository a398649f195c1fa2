"""Variational inference with normalizing flows: a baseline posterior approximation.

Rezende & Mohamed, "Variational Inference with Normalizing Flows" (ICML 2015). The posterior
``p(x | y) ~ p(x) p(y | x)`` is approximated by ``q_K``: a Gaussian ``N(m, L L^T)`` pushed
through ``K`` planar flows ``f(z) = z + u h(w^T z + b)`` (``h = tanh``; eq. 10), whose
log-determinants are ``log |1 + u^T h'(w^T z + b) w|`` (eq. 11-12), with ``u`` constrained so
that ``w^T u >= -1`` (invertibility, appendix A.1). The free energy (eq. 15)

    F = E_{q_0}[ log q_0(z_0) - sum_k log |det df_k/dz| - log p(x, y) ],  x = f_K o ... o f_1(z_0),

is minimised by Adam on reparameterised samples. Unlike the diffusion samplers it needs the
prior's density ``log p(x)`` (an exact reference prior here), so it serves as the classical
baseline on problems whose posterior is known; ``flows = 0`` is the full-covariance Gaussian
(mean-field-free) variational family.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._checks import positive_int

__all__ = ["FlowPosterior", "flow_vi"]


class FlowPosterior(torch.nn.Module):
    """``q_K``: ``N(m, L L^T)`` and ``K`` planar flows in dimension ``dim`` (module
    docstring); :meth:`sample` returns ``(x, log q(x))``."""

    def __init__(self, dim: int, flows: int, generator: torch.Generator | None = None):
        super().__init__()
        f64 = torch.float64
        self.m = torch.nn.Parameter(torch.zeros(dim, dtype=f64))
        self.log_diag = torch.nn.Parameter(torch.zeros(dim, dtype=f64))
        self.lower = torch.nn.Parameter(torch.zeros(dim, dim, dtype=f64))
        init = 0.1 * torch.randn(3, flows, dim, generator=generator, dtype=f64)
        self.w, self.u = torch.nn.Parameter(init[0]), torch.nn.Parameter(init[1])
        self.b = torch.nn.Parameter(torch.zeros(flows, dtype=f64))

    def scale(self) -> Tensor:
        """The Cholesky factor ``L`` of the base covariance."""
        return torch.tril(self.lower, -1) + torch.diag(torch.exp(self.log_diag))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        dim = self.m.numel()
        eps = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        z = self.m + eps @ self.scale().T  # the Gaussian base
        logq = (-0.5 * (eps**2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
                - self.log_diag.sum())
        for k in range(self.b.numel()):
            w, b = self.w[k], self.b[k]
            wu = w @ self.u[k]
            # u_hat = u + (m(w^T u) - w^T u) w / |w|^2, m(a) = -1 + softplus(a): w^T u_hat >= -1
            u = self.u[k] + (-1 + torch.nn.functional.softplus(wu) - wu) * w / (w @ w + 1e-12)
            a = z @ w + b
            h = torch.tanh(a)
            logq = logq - torch.log((1 + (1 - h**2) * (w @ u)).abs() + 1e-12)  # eq. 12
            z = z + h[:, None] * u  # f(z) = z + u h(w^T z + b)
        return z, logq


def flow_vi(
    log_joint: Callable[[Tensor], Tensor], dim: int, *, flows: int = 8, iters: int = 1000,
    batch: int = 256, lr: float = 0.02, generator: torch.Generator | None = None,
) -> FlowPosterior:
    """Fit ``q_K`` (``flows`` planar flows on a full-covariance Gaussian) to the unnormalised
    posterior ``log_joint(x [B, dim]) -> [B]`` (``log p(x) + log p(y | x)``) by minimising the
    free energy (Rezende & Mohamed 2015, eq. 15) with Adam: ``iters`` steps of ``batch``
    reparameterised samples. Returns the fitted :class:`FlowPosterior`."""
    positive_int("dim", dim)
    positive_int("iters", iters)
    positive_int("batch", batch)
    if not isinstance(flows, int) or flows < 0:
        raise ValueError(f"flows must be an integer >= 0, got {flows!r}")
    q = FlowPosterior(dim, flows, generator)
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    for _ in range(iters):
        x, logq = q.sample(batch, generator)
        lp = log_joint(x)
        if not isinstance(lp, Tensor) or lp.shape != (batch,):
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"log_joint must return one value per sample [{batch}], got {got}")
        loss = (logq - lp).mean()  # the free energy F (a Monte Carlo estimate)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q

"""theta-RK-2: the Runge-Kutta tau-leaping solver of Ren et al. 2025 ("Fast solvers for discrete
diffusion models: theory and applications of high-order algorithms", arXiv 2502.00234), beside
theta-trapezoidal (:func:`reverie.discrete.samplers.decide_theta_trapezoidal`).

Measured on the exact Markov chain (tests/discrete/test_m7_theta_rk2.py): first order in TV, a
little below tau-leaping at equal steps. Its stage 2 leaps every position independently from
``x_t``, so two jumps within one step are never correlated; theta-trapezoidal's second stage
starts from ``x*`` and is the second-order one there.
"""

from __future__ import annotations

import torch

from reverie._checks import in_range
from reverie.discrete._sampling import sample_categorical
from reverie.discrete.samplers import Commit, StepContext, _leap, register

__all__ = ["decide_theta_rk2", "rk2_weights"]


def rk2_weights(theta: float) -> tuple[float, float]:
    """The stage weights ``(1 - 1/(2 theta), 1/(2 theta))`` of theta-RK-2 (they sum to 1; the
    integrated rate is then exact for rates linear in time, which gives second order)."""
    in_range("theta", theta, 0, 1, lo_open=True)
    return 1.0 - 1.0 / (2.0 * theta), 1.0 / (2.0 * theta)


@register(
    "theta_rk2",
    family="rates",
    processes=("masked", "uniform"),
    nfe_per_step=2,
    options={"theta": 0.5},
    description="theta-RK-2 second-order Runge-Kutta tau-leaping (2 model calls per step)",
)
def decide_theta_rk2(ctx: StepContext) -> Commit:
    """theta-RK-2 step ``t -> s = t - dt`` (Ren et al. 2025):

    1. tau-leap from ``x_t`` for ``theta * dt`` with the rates ``mu_t(x_t)`` to an intermediate
       ``x*`` at ``rho = t - theta dt`` (only to evaluate the model there);
    2. tau-leap from ``x_t`` (not ``x*``) for the whole ``dt`` with the combined rates
       ``((1 - 1/(2 theta)) mu_t(x_t) + 1/(2 theta) mu_rho(x*))_+``.

    ``mu_rho(x*)`` are the rates of the jumps out of ``x_t`` with the denoiser's prediction
    taken at ``(x*, rho)`` (a position already unmasked in ``x*`` keeps its hazard, now towards
    the token it took). ``theta in (0, 1]`` (``1/2``: the midpoint rule, ``1``: Heun's
    weights). Two model calls per step; the last step (``s = 0``) draws every remaining
    position from ``p(x0 | x_t)``."""
    theta = float(ctx.options["theta"])
    w_t, w_rho = rk2_weights(theta)
    u = ctx.uniform(4)
    dt = ctx.t - ctx.s
    final = ctx.s == 0
    go = ctx.active & ~final[:, None]
    rates_t = ctx.process.reverse_rates(ctx.logp, ctx.x, ctx.t, ctx.denoiser)
    # stage 1: x* = tau-leap of x_t over theta dt with the frozen rates mu_t(x_t)
    jump1, tok1 = _leap(rates_t, theta * dt, go, u[..., 0], u[..., 1], ctx.temperature)
    x1 = torch.where(jump1, tok1, ctx.x)
    out = ctx.x.clone()
    rows = go.any(-1).nonzero().squeeze(-1)
    if rows.numel():
        rho = (ctx.t - theta * dt)[rows]
        logp_rho = ctx.model(x1[rows], rho)
        # mu_rho(x*): jumps out of x_t, prediction at (x*, rho)
        rates_rho = ctx.process.reverse_rates(logp_rho, ctx.x[rows], rho, ctx.denoiser)
        # stage 2: one leap from x_t over dt with the Runge-Kutta combination of both rates
        mu = w_rho * rates_rho
        if w_t != 0:  # (theta = 1/2 skips it: rates_t may be infinite at t = 1)
            mu = mu + w_t * rates_t[rows]
        mu = mu.clamp_min(0.0)
        jump2, tok2 = _leap(mu, dt[rows], go[rows], u[rows, :, 2], u[rows, :, 3], ctx.temperature)
        out[rows] = torch.where(jump2, tok2, ctx.x[rows])
    if bool(final.any()):
        last = ctx.active & final[:, None]
        t_last = sample_categorical(ctx.logp, u[..., 1], ctx.temperature, where=last)
        out = torch.where(last, t_last, out)
    return Commit(ctx.active & (out != ctx.x), out, ctx.carry)

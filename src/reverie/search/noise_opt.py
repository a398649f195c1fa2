"""Initial-noise optimisation through a one-step surrogate, then a multi-step decode (Novack,
Zhu, McAuley, Berg-Kirkpatrick, Bryan 2024, "DITTO-2: Distilled Diffusion Inference-Time
T-Optimization for Music Generation", Sec. 3): DITTO's ``x_T* = argmax r(Sampler(x_T))`` with
the sampler replaced, during the optimisation, by a distilled one-step model ``f(x_T)`` (a
consistency model approximates the probability-flow map ``x_T -> x_0``), and the optimised
noise finally decoded with the many-step deterministic sampler."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie.search._core import Context, register
from reverie.search.ditto import _checkpointed_sample


@register(
    "ditto2", tilted=False, sampler="dpmpp_2m", needs_stochastic=False, deterministic_only=True,
    description="DITTO-2: optimise the initial noise through a one-step surrogate, decode with "
    "the sampler (Novack et al. 2024)",
)
def ditto2(
    ctx: Context, *, surrogate: Callable[[Tensor, Tensor], Tensor] | None = None,
    lr: float = 0.2, noise_weight: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """DITTO-2 (Novack et al. 2024): Adam ascent on the unit initial noise ``z`` of
    ``r(f(sigma(t_0) z, t_0)) - noise_weight |z|^2 / 2``, where ``f`` is ``surrogate``, a
    one-step model of the probability-flow map (e.g. the ``denoiser`` of a consistency
    student, :func:`reverie.accelerate.distill.consistency_distill`); then one decode of the
    final ``z`` with the search's deterministic sampler on the denoiser given to ``run``.
    ``surrogate=None`` optimises through that checkpointed sampler itself (plain DITTO, no
    speed-up; the teacher's own one-step prediction is no surrogate: at ``alpha(t_0) = 0``
    it is constant).

    NFE accounting: an iteration costs 2 NFE with a surrogate (its forward and backward pass,
    counted like network calls even when the surrogate is another network), else
    ``3 NFE(trajectory)`` as in ``ditto``; the decode costs one trajectory. The returned
    reward is the decoded sample's (the surrogate's gain is ``info["surrogate_gain_mean"]``)
    and ``info["noise"]`` is the final unit noise."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not (noise_weight >= 0 and math.isfinite(noise_weight)):
        raise ValueError(f"noise_weight must be a finite number >= 0, got {noise_weight}")
    if surrogate is not None and not callable(surrogate):
        raise TypeError(f"surrogate must be a one-step model (x, t) -> x0, e.g. a consistency "
                        f"student's denoiser, got {type(surrogate).__name__}")
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one decoding trajectory")
    per_iter = 2 if surrogate is not None else 3 * traj
    iters = (ctx.budget - traj) // per_iter
    s0, t0 = ctx.schedule.sigma[0], ctx.schedule.t[0]
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    noises, gains = [], []
    for groups in ctx.group_chunks(1):
        z = ctx.rng.randn(groups, ctx.shape, ctx.dtype, ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        t = torch.full((groups.numel(),), t0, dtype=torch.float64)
        first = last = None
        f = surrogate if surrogate is not None else (
            lambda x, _t, g=groups: _checkpointed_sample(ctx, x / s0, g))
        for _ in range(iters):
            with torch.enable_grad():
                r = ctx.reward_with_grad(f(z * s0, t))           # reward of the one-step sample
                objective = r.sum() - 0.5 * noise_weight * (z * z).sum()
                (grad,) = torch.autograd.grad(objective, z)
            first = r.detach() if first is None else first
            last = r.detach()
            opt.zero_grad(set_to_none=True)
            z.grad = -grad                                       # Adam minimises
            opt.step()
        with torch.no_grad():                                    # the multi-step decode
            x0 = ctx.trajectory(z.detach() * s0, groups)[0].x
        out_x[groups], out_r[groups] = x0.to(ctx.dtype), ctx.reward(x0)
        noises.append(z.detach())
        if first is not None:
            gains.append((last - first).to(torch.float64))
    spent = torch.full((ctx.n,), traj + per_iter * iters, dtype=torch.long)
    info = {"iterations": iters, "noise": torch.cat(noises),
            "surrogate_gain_mean": float(torch.cat(gains).mean()) if gains else 0.0}
    return out_x, out_r, spent, info

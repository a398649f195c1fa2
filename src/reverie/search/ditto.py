"""Initial-noise optimisation by backpropagating through the sampler (Novack, McAuley,
Berg-Kirkpatrick, Bryan 2024, "DITTO: Diffusion Inference-Time T-Optimization for Music
Generation", Sec. 3): ``x_T* = argmax_{x_T} r(Sampler(x_T))``, with gradient checkpointing of
every sampler step so memory does not grow with the number of steps."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from reverie.samplers import State
from reverie.search._core import Context, register


@register(
    "ditto", tilted=False, sampler="dpmpp_2m", needs_stochastic=False, deterministic_only=True,
    description="DITTO: optimise the initial noise by backprop through the checkpointed sampler "
    "(Novack et al. 2024)",
)
def ditto(
    ctx: Context, *, lr: float = 0.2, noise_weight: float = 0.0
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """DITTO (Novack et al. 2024, Algorithm 1): Adam ascent on the unit initial noise ``z`` of
    ``r(Sampler(sigma(t_0) z)) - noise_weight * |z|^2 / 2`` (``noise_weight = 0`` is the
    paper; ``1`` adds the standard-normal log-density of the noise, a MAP of the tilted law in
    noise space when the temperature is 1). Every sampler step is a checkpoint: the forward
    pass keeps only the step inputs and recomputes each step during the backward pass.

    NFE accounting: an iteration costs ``3 NFE(trajectory)`` (the forward pass, its
    recomputation and the backward pass, counted as one evaluation per network call); the
    best sample seen is returned, after a final forward pass on the last noise. ``lr`` is
    Adam's step on the unit noise (``0.2``: a coordinate moves by its own scale in about five
    iterations, which suits the few iterations a small NFE budget pays for)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not (noise_weight >= 0 and math.isfinite(noise_weight)):
        raise ValueError(f"noise_weight must be a finite number >= 0, got {noise_weight}")
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one trajectory")
    iters = (ctx.budget - traj) // (3 * traj)
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    gains = []
    for groups in ctx.group_chunks(1):
        z = ctx.rng.randn(groups, ctx.shape, ctx.dtype, ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        best_x = torch.zeros((groups.numel(), *ctx.shape), dtype=ctx.dtype)
        best_r = torch.full((groups.numel(),), -math.inf, dtype=torch.float64)
        first = None
        for it in range(iters + 1):
            if it < iters:
                with torch.enable_grad():
                    x0 = _checkpointed_sample(ctx, z, groups)
                    r = ctx.reward_with_grad(x0)
                    objective = r.sum() - 0.5 * noise_weight * (z * z).sum()
                    (grad,) = torch.autograd.grad(objective, z)
                opt.zero_grad(set_to_none=True)
                z.grad = -grad                                  # Adam minimises
            else:
                with torch.no_grad():
                    x0 = ctx.trajectory(z.detach() * ctx.schedule.sigma[0], groups)[0].x
                    r = ctx.reward(x0)
            r = r.detach().to(torch.float64)
            if first is None:
                first = r.clone()
            better = r > best_r
            best_x[better], best_r[better] = x0.detach()[better].to(ctx.dtype), r[better]
            if it < iters:
                opt.step()
        out_x[groups], out_r[groups] = best_x, best_r
        gains.append(best_r - first)
    spent = torch.full((ctx.n,), traj + 3 * traj * iters, dtype=torch.long)
    info = {"iterations": iters, "reward_gain_mean": float(torch.cat(gains).mean())}
    return out_x, out_r, spent, info


def _checkpointed_sample(ctx: Context, z: Tensor, groups: Tensor) -> Tensor:
    """The deterministic sampler from ``sigma(t_0) z`` to the clean end, differentiable in
    ``z``, one checkpoint per step (the network runs twice per step, once under backward)."""
    sch, smp, opts = ctx.schedule, ctx.sampler, ctx.sampler_options

    def step(state: State) -> State:
        i = state.i

        def transition(x: Tensor, *memory: Tensor) -> tuple[Tensor, ...]:
            tr = smp.transition(ctx.model, State(x, i, memory), sch, generator=None, cond={},
                                **opts)
            return (tr.mean, *tr.memory)

        out = checkpoint(transition, state.x, *state.memory, use_reentrant=False)
        return State(out[0], i + 1, tuple(out[1:]))

    return ctx.walk(State(z * sch.sigma[0]), step).x

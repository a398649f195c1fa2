"""Beam search over the stochastic sampler's steps (as in the search baselines of Ma et al.
2025 and the SVDD / DSearch family, Li et al. 2025): keep the ``B`` states whose data
prediction scores best, branch each into ``children`` draws of the sampler's kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.samplers import State
from reverie.search._core import Context, register, select_transition


@register(
    "beam", tilted=False, sampler="dpmpp_2m_sde", needs_stochastic=True,
    description="beam search: branch every kept state, keep the best by x0-estimate reward",
)
def beam(ctx: Context, *, children: int = 4) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Beam search: ``B`` states per returned sample start from noise; at each step every
    state draws ``children`` successors from the sampler's Gaussian kernel, each successor is
    scored by the reward of its data prediction (the network call that also gives its next
    kernel, so scoring is free), and the best ``B`` of the ``B * children`` successors are
    kept. The best clean sample is returned. ``B`` is the widest beam the budget pays for:
    ``B (c_0 + children (NFE(trajectory) - c_0)) <= budget``."""
    positive_int("children", children)
    S = ctx.steps
    per_beam = ctx.step_cost(0) + children * ctx.cost(1)
    ctx.need(per_beam, f"a beam of width 1 with {children} children per step")
    B = ctx.budget // per_beam
    width = B * children
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    for groups in ctx.group_chunks(width):
        g = groups.numel()
        gid = groups.repeat_interleave(B)
        rows = gid.repeat_interleave(children)
        parent = torch.arange(g * B).repeat_interleave(children)
        offset = torch.arange(g)[:, None] * width
        state = State(ctx.prior(gid))
        tr = ctx.transition(state, gid)
        for _ in range(S - 1):
            kids = ctx.draw(select_transition(tr, parent), state.select(parent), rows)
            ctx.check_finite(kids.x, state.i)
            ktr = ctx.transition(kids, rows)                  # scores and next kernels at once
            score = ctx.reward(ktr.x0)
            keep = (score.reshape(g, width).topk(B, dim=1).indices + offset).flatten()
            state, tr = kids.select(keep), select_transition(ktr, keep)
        final = ctx.draw(tr, state, gid)                      # the deterministic last step
        ctx.check_finite(final.x, state.i)
        r = ctx.reward(final.x)
        best = r.reshape(g, B).argmax(1) + torch.arange(g) * B
        out_x[groups], out_r[groups] = final.x[best].to(ctx.dtype), r[best]
    spent = torch.full((ctx.n,), B * per_beam, dtype=torch.long)
    return out_x, out_r, spent, {"beam": B, "children": children}

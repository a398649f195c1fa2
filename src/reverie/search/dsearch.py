"""DSearch: dynamic beam search over the denoising steps (Li, Uehara, Su, Scalia, Biancalani,
Regev, Levine, Ji 2025, "Dynamic Search for Inference-Time Alignment in Diffusion Models",
arXiv:2503.02039; code nickjeliopoulos/DSearch, ``sd_pipeline.py``).

The search keeps a population (beam) of states. At each step every state expands into a
number of children drawn from the sampler's kernel (the tree width), each child is scored by a
heuristic value -- the reward of its data prediction, or with ``lookahead`` of the data
prediction after a few more deterministic steps -- every state moves to its best child, and
the population is pruned to the best states. What makes it dynamic:

* the beam width shrinks from ``oversample`` times its final width to the final width
  (the code's ``drop_schudule exponential``): many starting points while rewards on the
  data prediction are uninformative, few good ones to refine at the end;
* the tree width grows as the beam shrinks, so each step spends about the same NFE, and grows
  further by ``expand`` towards the clean end by the noise-level schedule
  ``p_i = 1 - exp(-3 i / (S - 2))`` (the code's ``search_schudule exponential``, where a step
  searches wider with probability ``p_i``; here every step takes the expected width, so the
  NFE spent is fixed in advance and the budget is kept);
* ``lookahead`` extra deterministic (DDIM) steps sharpen the value of a child, at one NFE each.

The starting width is the largest the budget pays for (the final width is that over
``oversample``, at least 1); the best final sample is returned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.samplers import State
from reverie.search._core import Context, register, select_transition


def _plan(ctx: Context, top: int, oversample: int, children: int, expand: float,
          lookahead: int) -> tuple[list[int], list[int], list[list[int]], int]:
    """Beam widths ``W_0..W_{S-1}`` (from ``top`` down to ``top / oversample``), tree widths
    ``K_0..K_{S-2}``, the lookahead grid indices of a child at each level, and the NFE of one
    search."""
    S = ctx.steps
    end = max(1, round(top / oversample))
    # beam width: exponential decay from top to end over the levels
    widths = [max(end, int(top * (end / top) ** (i / max(S - 1, 1)))) for i in range(S)]
    trees, looks = [], []
    for i in range(S - 1):
        p = 1 - math.exp(-3 * i / max(S - 2, 1))             # noise-level schedule
        # a searching step (probability p) widens the tree by expand and by the beam's shrinkage
        k = children * ((1 - p) + p * expand * top / widths[i])
        trees.append(max(1, round(k)))
        j = i + 1                                            # the children's level
        looks.append(sorted({j + round(m * (S - j) / (lookahead + 1))
                             for m in range(1, lookahead + 1)} - {j, S}))
    nfe = widths[0] * ctx.step_cost(0) + sum(
        widths[i] * trees[i] * (ctx.step_cost(i + 1) + len(looks[i])) for i in range(S - 1))
    return widths, trees, looks, nfe


def _value(ctx: Context, kids: State, x0: Tensor, look: list[int]) -> Tensor:
    """The reward of the data prediction after deterministic DDIM jumps to the grid indices
    ``look`` (none: of the child's own data prediction)."""
    sch, x, i = ctx.schedule, kids.x, kids.i
    for j in look:
        eps = (x - sch.alpha[i] * x0) / sch.sigma[i]
        x, i = sch.alpha[j] * x0 + sch.sigma[j] * eps, j     # DDIM (eta = 0) jump to t_j
        with torch.no_grad():
            x0 = ctx.model(x, sch.t[j])
    return ctx.reward(x0)


@register(
    "dsearch", tilted=False, sampler="dpmpp_2m_sde", needs_stochastic=True,
    description="DSearch: beam search with a shrinking beam, widening tree and lookahead",
)
def dsearch(ctx: Context, *, oversample: int = 4, children: int = 2, expand: float = 2.0,
            lookahead: int = 0) -> tuple[Tensor, Tensor, Tensor, dict]:
    """DSearch (Li et al. 2025). ``oversample``: the starting beam width over the final one;
    ``children``: the tree width of the first step (the code's ``duplicate_size``);
    ``expand``: the tree-width factor of the noise-level schedule (the code's ``w``);
    ``lookahead``: deterministic steps (one NFE each) before a child is scored.
    ``oversample=1, expand=1`` is a constant-width beam where each state keeps its best of
    ``children`` (SVDD-PM's beam)."""
    positive_int("oversample", oversample)
    positive_int("children", children)
    if not (isinstance(expand, (int, float)) and math.isfinite(expand) and expand >= 1):
        raise ValueError(f"expand must be a number >= 1, got {expand!r}")
    if not (isinstance(lookahead, int) and lookahead >= 0):
        raise ValueError(f"lookahead must be an integer >= 0, got {lookahead!r}")
    S = ctx.steps
    opts = (oversample, children, expand, lookahead)
    ctx.need(_plan(ctx, 1, *opts)[3], f"a beam of width 1 with children={children}")
    top = 1  # the widest starting beam the budget pays for
    while _plan(ctx, top + 1, *opts)[3] <= ctx.budget:
        top += 1
    widths, trees, looks, nfe = _plan(ctx, top, *opts)
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    for groups in ctx.group_chunks(max([widths[0]] + [w * k for w, k in zip(widths, trees)])):
        g = groups.numel()
        gid = groups.repeat_interleave(widths[0])
        state = State(ctx.prior(gid))
        tr = ctx.transition(state, gid)
        for i in range(S - 1):
            W, K, W_next = widths[i], trees[i], widths[i + 1]
            parent = torch.arange(g * W).repeat_interleave(K)
            rows = groups.repeat_interleave(W * K)
            kids = ctx.draw(select_transition(tr, parent), state.select(parent), rows)
            ctx.check_finite(kids.x, state.i)
            ktr = ctx.transition(kids, rows)                  # data predictions, next kernels
            score = _value(ctx, kids, ktr.x0, looks[i]).reshape(g * W, K)
            # every state moves to its best child ...
            best = score.argmax(1) + torch.arange(g * W) * K
            # ... and the beam is pruned to the W_next best of them
            keep = score.max(1).values.reshape(g, W).topk(W_next, dim=1).indices
            keep = best.reshape(g, W).gather(1, keep).flatten()
            state, tr = kids.select(keep), select_transition(ktr, keep)
        gid = groups.repeat_interleave(widths[-1])
        final = ctx.draw(tr, state, gid)                      # the deterministic last step
        ctx.check_finite(final.x, state.i)
        r = ctx.reward(final.x)
        pick = r.reshape(g, widths[-1]).argmax(1) + torch.arange(g) * widths[-1]
        out_x[groups], out_r[groups] = final.x[pick].to(ctx.dtype), r[pick]
    spent = torch.full((ctx.n,), nfe, dtype=torch.long)
    return out_x, out_r, spent, {"beam": widths, "tree": trees, "lookahead": lookahead}

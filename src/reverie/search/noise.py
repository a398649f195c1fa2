"""Search over noises and paths (Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps", Sec. 3.2): random search (best-of-N), zero-order search in a
neighbourhood of a pivot noise, and search over paths (denoise part way, re-noise a little,
denoise further, keep the best)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import in_range, positive_int
from reverie.search._core import Context, group_argmax, register, renoise


def _merge_best(best_x: Tensor, best_r: Tensor, x: Tensor, r: Tensor, groups: Tensor) -> None:
    """Keep, per group, the better of the stored best and the best row of ``(x, r)``."""
    n = best_r.numel()
    rows = group_argmax(r, groups, n)
    present = rows < r.numel()
    g = torch.nonzero(present).flatten()
    cand = rows[g]
    better = r[cand] > best_r[g]
    g, cand = g[better], cand[better]
    best_r[g] = r[cand]
    best_x[g] = x[cand].to(best_x.dtype)


@register(
    "best_of_n", tilted=False, sampler="dpmpp_2m", needs_stochastic=False,
    description="random search: budget // NFE(trajectory) samples, keep the best (Ma et al. 2025)",
)
def best_of_n(ctx: Context) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Best-of-N / random search (Ma et al. 2025, Sec. 3.2 "Random Search"): draw
    ``N = budget // NFE(trajectory)`` independent samples and return the one with the highest
    reward. Its law is ``N p(x) F(r(x))^{N-1}`` (``F`` the reward CDF under ``p``), not the
    tilted target: it concentrates on the reward's upper tail as ``N`` grows."""
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one trajectory")
    k = ctx.budget // traj
    best_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    best_r = torch.full((ctx.n,), -math.inf, dtype=torch.float64)
    total = ctx.n * k
    for lo in range(0, total, ctx.chunk):
        groups = torch.arange(lo, min(lo + ctx.chunk, total)) // k
        state, _ = ctx.trajectory(ctx.prior(groups), groups)
        _merge_best(best_x, best_r, state.x, ctx.reward(state.x), groups)
    spent = torch.full((ctx.n,), k * traj, dtype=torch.long)
    return best_x, best_r, spent, {"candidates": k}


@register(
    "zero_order", tilted=False, sampler="dpmpp_2m", needs_stochastic=False,
    description="zero-order search: candidates around a pivot noise, pivot <- best "
    "(Ma et al. 2025)",
)
def zero_order(
    ctx: Context, *, neighbours: int = 4, step: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Zero-order search (Ma et al. 2025, Sec. 3.2 "Zero-Order Search"): start from a random
    pivot noise; each iteration draws ``neighbours`` candidates in its neighbourhood, runs the
    sampler on them and moves the pivot to the best candidate if it beats the pivot.

    Neighbours are preconditioned Crank-Nicolson moves ``sqrt(1 - step^2) pivot + step z``,
    which keep every candidate a standard normal noise (the paper samples on a sphere of
    radius ``step`` around the pivot)."""
    positive_int("neighbours", neighbours)
    in_range("step", step, 0, 1, lo_open=True)
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one trajectory for the pivot")
    iters = (ctx.budget - traj) // (neighbours * traj)
    s0 = ctx.schedule.sigma[0]
    keep = math.sqrt(1.0 - step * step)
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    for groups in ctx.group_chunks(neighbours):
        g = groups.numel()
        local = torch.arange(g)
        pivot = ctx.rng.randn(groups, ctx.shape, ctx.dtype, ctx.device)
        state, _ = ctx.trajectory(pivot * s0, groups)
        best_x, best_r = state.x.clone(), ctx.reward(state.x)
        rows_g = groups.repeat_interleave(neighbours)
        rows_l = local.repeat_interleave(neighbours)
        for _ in range(iters):
            z = ctx.rng.randn(rows_g, ctx.shape, ctx.dtype, ctx.device)
            cand = keep * pivot[rows_l] + step * z                # a neighbour of the pivot
            st, _ = ctx.trajectory(cand * s0, rows_g)
            r = ctx.reward(st.x)
            top = group_argmax(r, rows_l, g)
            better = r[top] > best_r                                  # hill climbing on the pivot
            pivot[better] = cand[top[better]]
            best_x[better] = st.x[top[better]]
            best_r[better] = r[top[better]]
        out_x[groups], out_r[groups] = best_x.to(ctx.dtype), best_r
    spent = torch.full((ctx.n,), traj + iters * neighbours * traj, dtype=torch.long)
    return out_x, out_r, spent, {"iterations": iters, "neighbours": neighbours}


@register(
    "paths", tilted=False, sampler="dpmpp_2m", needs_stochastic=False,
    description="search over paths: denoise, re-noise a little, denoise further, keep the best "
    "(Ma et al. 2025)",
)
def paths(
    ctx: Context, *, copies: int = 2, start: float = 0.2, forward: int = 2, backward: int = 4
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Search over paths (Ma et al. 2025, Sec. 3.2 "Search over Paths"): run ``N`` paths to
    grid index ``round(start * steps)``; then repeat: make ``copies`` copies of every path,
    re-noise each ``forward`` grid steps back with the exact forward kernel, denoise
    ``backward > forward`` steps with the sampler, score the copies by the reward of their data
    prediction and keep the best ``N``; at the clean end return the best path. ``N`` is the
    largest number of paths the budget pays for."""
    for name, v in (("copies", copies), ("forward", forward), ("backward", backward)):
        positive_int(name, v)
    if backward <= forward:
        raise ValueError(f"backward must exceed forward (the path must advance), got "
                         f"backward={backward}, forward={forward}")
    in_range("start", start, 0, 1, hi_open=True)
    S = ctx.steps
    i0 = min(int(round(start * S)), S - 1)
    rounds = []  # (current index, re-noised index, new index)
    j = i0
    while j < S:
        a = max(j - forward, 0)
        b = min(a + backward, S)
        rounds.append((j, a, b))
        j = b
    per_path = ctx.cost(0, i0) + copies * sum(ctx.cost(a, b) for _, a, b in rounds)
    ctx.need(per_path, f"one path: {i0} steps, then {len(rounds)} rounds of {copies} copies")
    N = ctx.budget // per_path
    sch = ctx.schedule
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    for groups in ctx.group_chunks(N * copies):
        g = groups.numel()
        gid = groups.repeat_interleave(N)
        state, _ = ctx.trajectory(ctx.prior(gid), gid, 0, i0)
        x, score = state.x, None
        for j, a, b in rounds:
            rows = gid.repeat_interleave(copies)
            z = ctx.rng.randn(rows, ctx.shape, ctx.dtype, ctx.device)
            xa = renoise(x.repeat_interleave(copies, 0), sch, j, a, z)   # a little noise back
            st, tr = ctx.trajectory(xa, rows, a, b)                       # denoise further
            score = ctx.reward(st.x if b == S else tr.x0)
            top = score.reshape(g, N * copies).topk(N, dim=1).indices     # keep the best N
            flat = (top + torch.arange(g)[:, None] * (N * copies)).flatten()
            x, score = st.x[flat], score[flat]
        best = score.reshape(g, N).argmax(1) + torch.arange(g) * N
        out_x[groups], out_r[groups] = x[best].to(ctx.dtype), score[best]
    spent = torch.full((ctx.n,), N * per_path, dtype=torch.long)
    return out_x, out_r, spent, {"paths": N, "rounds": len(rounds), "copies": copies}

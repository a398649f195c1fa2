"""Rollover Budget Forcing with SDE sampling of flow models (Kim, Yoon, Hwang, Sung 2025,
"Inference-Time Scaling for Flow Models via Stochastic Generation and Rollover Budget
Forcing"; code KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling, ``rbf/rbf.py``).

A flow's sampler is an ODE, so there is nothing to branch on. The flow ODE is turned into the
SDE with the same marginals,

    dx = [v(x, t) - g(t)^2 / 2 * score(x, t)] dt + g(t) dW,

which is the core sampler ``euler_maruyama`` with a diffusion ``g`` (the paper's choice for
rectified flows: ``g(t) = 3 t^2``, :func:`sde_diffusion`); any other stochastic sampler
(``dpmpp_2m_sde`` works on flows) may be passed instead. The paper's best setting samples the
flow as a VP model (interpolant conversion, :class:`reverie.denoisers.Converted`:
``Converted(flow_denoiser, VPLinear())``) with the same ``g``. Rollover Budget Forcing then spends
the NFE budget step by step: at each step it draws candidates of the next state until one
beats the best reward seen so far (rewards on the data prediction), moves there and rolls the
unused NFE over to the next step; if the step's quota runs out first it moves to the step's
best candidate. The last step spends all that is left and returns its best candidate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.denoisers import Converted, DenoiserBase
from reverie.process import RectifiedFlow
from reverie.samplers import State
from reverie.search._core import Context, register, std_rows


class sde_diffusion:  # noqa: N801 - used like a function
    """The diffusion coefficient ``g(t) = scale * t^power`` for ``euler_maruyama`` on a flow
    (Kim et al. 2025, config ``diffusion_coefficient: square, diffusion_norm: 3``)."""

    def __init__(self, scale: float = 3.0, power: float = 2.0):
        if not (scale >= 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite number >= 0, got {scale}")
        self.scale, self.power = float(scale), float(power)

    def __call__(self, t: Tensor) -> Tensor:
        return self.scale * torch.as_tensor(t, dtype=torch.float64) ** self.power

    def __repr__(self) -> str:
        return f"sde_diffusion(scale={self.scale}, power={self.power})"


def _flow_sde(denoiser: DenoiserBase) -> dict[str, Any]:
    """The paper's ``g(t) = 3 t^2`` on a flow, and on a flow converted to another process
    (their VP-SDE: ``convert_scheduler: vp`` with the same diffusion)."""
    if isinstance(denoiser, Converted):
        denoiser = denoiser.source
    if isinstance(denoiser.process, RectifiedFlow):
        return {"diffusion": sde_diffusion()}
    return {}


class _Kernels:
    """Per-chain cached kernels ``(mean, std, memory)`` at the chain's grid index."""

    def __init__(self, g: int, ctx: Context):
        self.mean = torch.zeros((g, *ctx.shape), dtype=ctx.dtype)
        self.std = torch.zeros(g, dtype=torch.float64)
        self.mem: list[Tensor] = []

    def put(self, rows: Tensor, mean: Tensor, std: Any, memory: tuple[Tensor, ...]) -> None:
        self.mean[rows] = mean.to(self.mean.dtype)
        self.std[rows] = torch.as_tensor(std, dtype=torch.float64).expand(rows.shape) if not (
            isinstance(std, Tensor) and std.ndim > 0) else std.to(torch.float64)
        for s, m in enumerate(memory):
            if s == len(self.mem):
                self.mem.append(torch.zeros((self.mean.shape[0], *m.shape[1:]), dtype=m.dtype))
            self.mem[s][rows] = m

    def copy_from(self, other: _Kernels, rows: Tensor) -> None:
        self.put(rows, other.mean[rows], other.std[rows], tuple(m[rows] for m in other.mem))


@register(
    "rbf", tilted=False, sampler="euler_maruyama", needs_stochastic=True, sampler_options=_flow_sde,
    description="Rollover Budget Forcing on the SDE of a flow (Kim et al. 2025)",
)
def rbf(ctx: Context, *, initial: int | None = None) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Rollover Budget Forcing (Kim et al. 2025, Sec. 3.3; ``rbf/rbf.py``). ``initial``
    starting noises are scored and the best kept (default 5% of the budget, the paper's 25 of
    500); the rest is split evenly over the ``steps - 1`` stochastic steps, with rollover."""
    S = ctx.steps
    if initial is None:
        initial = max(1, round(0.05 * ctx.budget))
    positive_int("initial", initial)
    c0 = ctx.step_cost(0)
    ctx.need(initial * c0 + ctx.cost(1), f"{initial} starting noises and one candidate per step")
    quota = (ctx.budget - initial * c0) // max(S - 1, 1)
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    spent_all = torch.zeros(ctx.n, dtype=torch.long)
    accepted = torch.zeros(ctx.n, dtype=torch.long)
    for groups in ctx.group_chunks(initial):
        g = groups.numel()
        ar = torch.arange(g)
        # the best of `initial` starting noises
        rows = groups.repeat_interleave(initial)
        st0 = State(ctx.prior(rows))
        tr0 = ctx.transition(st0, rows)
        r0 = ctx.reward(tr0.x0).reshape(g, initial)
        pick = r0.argmax(1) + ar * initial
        cur, best = _Kernels(g, ctx), _Kernels(g, ctx)
        cur.put(ar, tr0.mean[pick], std_rows(tr0.std, pick), tuple(m[pick] for m in tr0.memory))
        mem_len = {0: len(tr0.memory)}
        best_r = r0.max(1).values                       # best reward seen so far
        step_r = torch.full((g,), -math.inf, dtype=torch.float64)   # best candidate this step
        i = torch.zeros(g, dtype=torch.long)
        spent = torch.full((g,), initial * c0, dtype=torch.long)
        allowance = torch.full((g,), quota, dtype=torch.long)
        used = torch.zeros(g, dtype=torch.long)
        done = torch.zeros(g, dtype=torch.bool)
        if S == 1:  # the starting point's data prediction is already the sample
            out_x[groups], out_r[groups] = cur.mean.clone(), best_r
            spent_all[groups] = spent
            continue
        final_x = torch.zeros((g, *ctx.shape), dtype=ctx.dtype)
        final_r = torch.zeros(g, dtype=torch.float64)
        while not bool(done.all()):
            for j in sorted(set(i[~done].tolist())):
                c = torch.nonzero((i == j) & ~done).flatten()
                z = ctx.rng.randn(groups[c], ctx.shape, ctx.dtype, ctx.device)
                std = cur.std[c].reshape(-1, *([1] * len(ctx.shape))).to(ctx.dtype)
                st = State(cur.mean[c] + std * z, j + 1, tuple(m[c] for m in cur.mem[: mem_len[j]]))
                ctx.check_finite(st.x, j)
                tr = ctx.transition(st, groups[c])        # a candidate next state, scored
                mem_len[j + 1] = len(tr.memory)
                spent[c] += tr.nfe
                used[c] += tr.nfe
                r = ctx.reward(tr.x0)
                up = torch.nonzero(r > step_r[c]).flatten()
                best.put(c[up], tr.mean[up], std_rows(tr.std, up), tuple(m[up] for m in tr.memory))
                step_r[c[up]] = r[up]
                if j + 1 == S - 1:  # the last step: spend everything, return the best candidate
                    fin = c[spent[c] + ctx.step_cost(S - 1) > ctx.budget]
                    final_x[fin], final_r[fin] = best.mean[fin], step_r[fin]
                    done[fin] = True
                    continue
                reserve = ctx.cost(j + 2)                 # one candidate for every later step
                accept = r > best_r[c]                    # beats the best so far: move on now
                room = (used[c] + ctx.step_cost(j + 1) <= allowance[c]) & (
                    spent[c] + ctx.step_cost(j + 1) + reserve <= ctx.budget)
                forced = ~accept & ~room                  # quota spent: take the step's best
                acc, frc = c[accept], c[forced]
                cur.put(acc, tr.mean[accept], std_rows(tr.std, accept),
                        tuple(m[accept] for m in tr.memory))
                best_r[acc] = r[accept]
                allowance[acc] = quota + (allowance[acc] - used[acc])   # roll the rest over
                cur.copy_from(best, frc)
                allowance[frc] = quota
                moved = torch.cat([acc, frc])
                accepted[groups[acc]] += 1
                used[moved] = 0
                step_r[moved] = -math.inf
                i[moved] += 1
        out_x[groups], out_r[groups] = final_x, final_r
        spent_all[groups] = spent
    info = {"initial": initial, "quota": quota,
            "early_accepts_mean": float(accepted.double().mean())}
    return out_x, out_r, spent_all, info

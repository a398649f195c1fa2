"""Feynman-Kac steering: sequential Monte Carlo over the sampler's stochastic steps
(Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of
Diffusion Models", Sec. 3; code: zacharyhorvitz/Fk-Diffusion-Steering)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import in_range
from reverie.distributed import Population
from reverie.samplers import State, Transition
from reverie.search._core import Context, register, select_transition

POTENTIALS = ("difference", "max", "sum", "immediate")
RESAMPLING = ("systematic", "multinomial")


def _resample(w: Tensor, u: Tensor, scheme: str) -> Tensor:
    """Ancestor indices ``[G, k]`` from normalised weights ``w [G, k]`` and uniforms ``u``:
    systematic resampling (one uniform per group, Kitagawa 1996) or multinomial (``k``)."""
    k = w.shape[1]
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    pos = (u[:, :1] + torch.arange(k, dtype=w.dtype)) / k if scheme == "systematic" else u
    return torch.searchsorted(cdf, pos.contiguous()).clamp(max=k - 1)


@register(
    "fk", tilted=True, sampler="dpmpp_2m_sde", needs_stochastic=True, particles=True,
    description="Feynman-Kac / SMC steering with potentials on x0-estimate rewards "
    "(Singhal et al. 2025)",
)
def fk(
    ctx: Context,
    *,
    potential: str = "difference",
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """FK steering (Singhal et al. 2025, Algorithm 1): ``k = budget // NFE(trajectory)``
    particles per returned sample follow the sampler's stochastic kernel; after each step they
    are weighted by a potential ``G_i`` of the reward of their data prediction ``x0`` and
    resampled when the effective sample size falls below ``ess_threshold * k``. The last
    potential divides by the product of the earlier ones along each particle's ancestry, so the
    product of all potentials is ``exp(r(x_clean) / T)`` and the returned particle (drawn by
    its final weight) targets ``p(x) exp(r(x) / T)`` exactly as ``k -> infinity``.

    Potentials (``r_j`` the reward of step ``j``'s data prediction, ``T`` the temperature):
    ``difference`` ``exp((r_i - r_{i-1}) / T)``; ``max`` ``exp(max_{j<=i} r_j / T)``;
    ``sum`` ``exp(sum_{j<=i} r_j / T)``; ``immediate`` ``exp(r_i / T)``.
    """
    if potential not in POTENTIALS:
        raise ValueError(
            f"unknown potential {potential!r}; expected one of {', '.join(POTENTIALS)}"
        )
    if resampling not in RESAMPLING:
        raise ValueError(
            f"unknown resampling {resampling!r}; expected one of {', '.join(RESAMPLING)}"
        )
    in_range("ess_threshold", ess_threshold, 0, 1)
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one particle trajectory")
    k = ctx.budget // traj
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    resamples, final_ess = [], []
    for groups in ctx.group_chunks(k):
        x, r, count, ess = _steer(ctx, groups, k, potential, ess_threshold, resampling)
        out_x[groups], out_r[groups] = x, r
        resamples.append(count)
        final_ess.append(ess)
    spent = torch.full((ctx.n,), k * traj, dtype=torch.long)
    info = {
        "particles": k,
        "resamplings_mean": float(torch.cat(resamples).double().mean()),
        "final_ess_mean": float(torch.cat(final_ess).mean()),
        "potential": potential,
    }
    return out_x, out_r, spent, info


def _steer(
    ctx: Context, groups: Tensor, k: int, potential: str, ess_threshold: float, resampling: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FK steering of ``k`` particles for each group of ``groups``: the returned particles,
    their rewards, the resamplings per group and the final effective sample sizes."""
    T, S = ctx.temperature, ctx.steps
    g = groups.numel()
    rows = groups.repeat_interleave(k)                 # the group of every particle
    # run(distributed=True): this rank's share of every group's k particles; the
    # per-particle weights below are the whole population's on every rank
    pop = Population(g * k, ctx.split, block=k)
    mine = pop.local(rows)
    offset = torch.arange(g)[:, None] * k
    logw = torch.zeros(g * k, dtype=torch.float64)    # log weight since the last resampling
    log_g = torch.zeros(g * k, dtype=torch.float64)   # sum of log potentials along ancestry
    r_prev = torch.zeros(g * k, dtype=torch.float64)
    r_max = torch.full((g * k,), -math.inf, dtype=torch.float64)
    r_sum = torch.zeros(g * k, dtype=torch.float64)
    count = torch.zeros(g, dtype=torch.long)

    def step(state: State) -> State:
        nonlocal logw, log_g, r_prev, r_max, r_sum, count
        i = state.i
        tr = ctx.transition(state, mine)
        if i < S - 1:
            r = pop.gather(ctx.reward(tr.x0))          # reward of the data prediction at x_i
            r_max, r_sum = torch.maximum(r_max, r), r_sum + r
            if potential == "difference":
                lp = (r - r_prev) / T
            elif potential == "max":
                lp = r_max / T
            elif potential == "sum":
                lp = r_sum / T
            else:
                lp = r / T
            r_prev = r
            logw, log_g = logw + lp, log_g + lp
            w = torch.softmax(logw.reshape(g, k), dim=1)
            ess = 1.0 / (w * w).sum(1)
            need = ess < ess_threshold * k
            # drawn at every step, so each group's random stream ignores the other groups
            u = ctx.rng.uniform(groups, 1 if resampling == "systematic" else k)
            if bool(need.any()):
                anc = _resample(w, u, resampling) + offset
                keep = torch.arange(k)[None, :].expand(g, k) + offset
                idx = torch.where(need[:, None], anc, keep).flatten()
                state, tr = _resampled(pop, state, tr, idx)
                log_g, r_prev, r_max, r_sum = log_g[idx], r_prev[idx], r_max[idx], r_sum[idx]
                logw = torch.where(need.repeat_interleave(k), torch.zeros_like(logw), logw[idx])
                count += need.long()
        return ctx.draw(tr, state, rows, pop if pop.split else None)

    state = ctx.walk(State(pop.local(ctx.prior(rows))), step)
    r = pop.gather(ctx.reward(state.x))
    logw = logw + r / T - log_g                        # the last potential: exp(r/T) / prod G
    w = torch.softmax(logw.reshape(g, k), dim=1)
    pick = _draw_one(w, ctx.rng.uniform(groups, 1)[:, 0])         # the returned particle
    chosen = pick + offset[:, 0]
    return pop.gather(state.x)[chosen].to(ctx.dtype), r[chosen], count, 1.0 / (w * w).sum(1)


def _resampled(pop: Population, state: State, tr: Transition, idx: Tensor
               ) -> tuple[State, Transition]:
    """The particles ``idx`` of the whole population with their kernels (on a split
    population: this rank's rows of them, fetched from the ranks that hold them)."""
    if not pop.split:
        return state.select(idx), select_transition(tr, idx)
    per_row = isinstance(tr.std, Tensor) and tr.std.ndim > 0
    a, b = len(state.memory), len(state.memory) + len(tr.memory)
    x, mean, x0, *rest = pop.take(idx, state.x, tr.mean, tr.x0, *state.memory, *tr.memory,
                                  *([tr.std] if per_row else []))
    return (State(x, state.i, tuple(rest[:a]), state.nfe),
            Transition(mean, rest[b] if per_row else tr.std, x0, tuple(rest[a:b]), tr.nfe))


def _draw_one(w: Tensor, u: Tensor) -> Tensor:
    """One index per row of ``w [G, k]`` drawn with probabilities ``w`` (inverse CDF)."""
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, u[:, None].contiguous()).flatten().clamp(max=w.shape[1] - 1)

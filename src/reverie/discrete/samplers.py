"""Token samplers: one decision function per family, and the registry :data:`SAMPLERS`.

A decision function ``decide(ctx: StepContext) -> Commit`` chooses which active (masked)
positions are committed at a step and to which tokens (see :mod:`reverie.discrete.generate`).
Families:

* ``ancestral`` -- MD4 / MDLM ancestral sampling (Shi et al. 2024, ``ancestral_sample_step``;
  Sahoo et al. 2024, ``_ddpm_caching_update``): every masked position is unmasked with
  probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` into ``x0 ~ p(x0 | x_t)``; for uniform
  noise the exact posterior ``sum_x0 p(x0 | x_t) q(x_s | x_t, x0)`` (D3PM, Austin et al. 2021).
* ``first_hitting`` -- exactly one uniformly chosen masked position per step, at the random
  first-hitting time (Zheng et al. 2024): exact simulation of the reverse process.
* ``confidence`` -- draw a candidate for every masked position, commit the ``k`` with the
  highest score (LLaDA low-confidence remasking, Nie et al. 2025, ``generate.py``; Dream's
  ``maskgit_plus`` / ``topk_margin`` / ``entropy``, Ye et al. 2025; ``random``, Austin et al.).
* ``threshold`` -- Fast-dLLM parallel decoding (Wu et al. 2025, ``get_transfer_index``):
  commit every candidate with confidence >= ``threshold``, and at least the schedule's ``k``;
  also used inside AdaBlock's adaptive blocks (Lu et al. 2025).
* ``remasking`` -- RDM's re-masking of decoded tokens (Zheng et al. 2023, reparameterized
  discrete diffusion, ``_reparam_decoding``): decoded tokens whose score falls below that of
  a candidate not yet committed are masked again (they return through :attr:`Commit.revise`).
* ``editing`` -- LLaDA2.1 token editing: a decided token is replaced when the model is
  confident (above ``edit_threshold``) in another one.
* ``rates`` -- tau-leaping on the reverse CTMC (Campbell et al. 2022) and the
  second-order theta-trapezoidal scheme (Ren et al. 2025, arXiv 2502.00234).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reverie._checks import in_range
from reverie._registry import Registry
from reverie.discrete._sampling import sample_categorical
from reverie.discrete.denoiser import TokenDenoiserBase
from reverie.discrete.policies import (
    BLOCKS,
    CLOCKS,
    AdaptiveBlocks,
    BlockPolicy,
    Clock,
    first_hitting_clock,
)

__all__ = [
    "SAMPLERS",
    "Commit",
    "StepContext",
    "TokenSampler",
    "register",
    "decide_ancestral",
    "decide_first_hitting",
    "decide_confidence",
    "decide_threshold",
    "decide_rdm",
    "decide_token_edit",
    "leave_one_out",
    "decide_tau_leaping",
    "decide_theta_trapezoidal",
    "confidence_scores",
]


# ---------------------------------------------------------------------------------------------
# What a decision function sees and returns
# ---------------------------------------------------------------------------------------------


@dataclass
class Commit:
    """A sampler's decision at one step: write ``tokens`` at ``positions`` (both ``[n, L]``).

    ``positions`` must lie inside ``ctx.active``. ``carry`` is any per-run state the decision
    function wants back at the next step as ``ctx.carry`` (e.g. automaton states per row).
    ``revise`` (optional, ``[n, L]``) -- positions of ``ctx.decided`` (tokens decided at
    earlier steps of the block) that also get ``tokens``: ``ctx.mask_id`` masks them again
    (RDM re-masking), another id changes them; masking again is ignored on a block's last step
    (``s = 0``). Only samplers registered with ``revises=True`` may use it."""

    positions: Tensor
    tokens: Tensor
    carry: Any = None
    revise: Tensor | None = None


@dataclass
class StepContext:
    """Everything a decision function may use at one step (rows are samples).

    * ``x`` -- the canvas ``[n, L]``; ``logp`` -- ``log p(x0 | x_t)`` at ``(x, t)``, ``[n, L, V]``
      (SUBS applied: clean positions predict themselves, the mask is never predicted);
    * ``t``, ``s`` -- current and next time per row (float64 ``[n]``; ``s = 0`` on a block's last
      step, where every active position must be committed);
    * ``active`` -- the positions this step may change ``[n, L]`` (masked positions of the
      current block; for uniform-noise models, every generated position of the block);
    * ``block_start``, ``block_end`` -- the current block per row ``[n]`` (``end`` exclusive);
      ``step``, ``steps`` -- step index and number of steps of the current block per row;
      ``new_block`` -- rows whose block starts at this step; ``decided`` -- the generated
      positions of the current block already decided (not masked, not prompt or scaffold),
      which a revising sampler may change (:attr:`Commit.revise`; ``None`` for uniform noise);
    * ``count`` -- how many tokens the schedule asks to commit now per row (the confidence
      samplers' ``k``; ``alpha`` of the schedule splits a block's tokens over its steps);
    * ``temperature``, ``options`` (the sampler's options), ``model(x, t)`` (the cached
      denoiser, for multi-stage samplers), ``uniform(*shape)`` (fresh ``U[0, 1)`` draws
      ``[n, L, *shape]`` from the run's generator(s)), ``process``, ``mask_id``, ``denoiser``
      (the token denoiser, for its ids) and ``carry``; ``uniform_rows(rows, *shape)``
      (``[len(rows), L, *shape]``: draws for those rows only, so with one generator per row the
      other rows' streams are left untouched; ``None`` where not available).
    """

    x: Tensor
    logp: Tensor
    t: Tensor
    s: Tensor
    active: Tensor
    block_start: Tensor
    block_end: Tensor
    step: Tensor
    steps: Tensor
    new_block: Tensor
    count: Tensor
    temperature: float
    options: Mapping[str, Any]
    model: Callable[[Tensor, Tensor], Tensor]
    uniform: Callable[..., Tensor]
    process: Any
    mask_id: int | None
    denoiser: TokenDenoiserBase
    carry: Any = None
    decided: Tensor | None = None
    uniform_rows: Callable[..., Tensor] | None = None


@dataclass(frozen=True)
class TokenSampler:
    """A registered token sampler.

    ``decide`` -- the decision function (see :class:`StepContext`, :class:`Commit`);
    ``clock`` -- the times of each step (:mod:`reverie.discrete.policies`): ``grid_clock``
    (``1 - j / steps`` within a block) or ``first_hitting_clock`` (or their names ``"grid"``,
    ``"first_hitting"``); ``blocks`` -- the block policy: ``FixedBlocks()`` (tiles of
    ``block_length``) or ``AdaptiveBlocks()`` (AdaBlock), or the names ``"fixed"``,
    ``"adaptive"``;
    ``steps_rule`` -- ``"any"`` (steps >= 1), ``"at_most_tokens"`` (at least one token per
    step) or ``"tokens"`` (exactly one token per step); ``processes`` -- the process kinds it
    supports; ``nfe_per_step`` -- model calls per step; ``options`` -- option defaults;
    ``revises`` -- whether it changes decided tokens (:attr:`Commit.revise`; such samplers
    cannot stream, stop early or take constraints: a decided prefix is not final).
    """

    name: str
    decide: Callable[[StepContext], Commit]
    description: str
    family: str
    processes: tuple[str, ...] = ("masked",)
    clock: Clock | str = "grid"
    blocks: BlockPolicy | str = "fixed"
    steps_rule: str = "any"
    nfe_per_step: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    revises: bool = False

    def __post_init__(self) -> None:
        # the built-in policies may be given by name
        if isinstance(self.clock, str):
            object.__setattr__(self, "clock", _named(CLOCKS, self.clock, "clock"))
        if isinstance(self.blocks, str):
            object.__setattr__(self, "blocks", _named(BLOCKS, self.blocks, "block policy"))


def _named(table: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(table)}")
    return table[name]


#: All token samplers by name (``list(SAMPLERS)`` gives the names), filled by :func:`register`.
SAMPLERS: Registry[TokenSampler] = Registry("sampler", "SAMPLERS")

Decide = Callable[[StepContext], Commit]


def register(
    name: str, *, family: str, description: str, **fields: Any
) -> Callable[[Decide], Decide]:
    """Decorator: register the decision function as the token sampler ``name`` (the other
    :class:`TokenSampler` fields as keywords). Stack it to register one function under several
    names (e.g. with different options)."""

    def wrap(decide: Decide) -> Decide:
        SAMPLERS.add(TokenSampler(name, decide, description, family, **fields))
        return decide

    return wrap


# ---------------------------------------------------------------------------------------------
# ancestral
# ---------------------------------------------------------------------------------------------


@register(
    "ancestral",
    family="ancestral",
    processes=("masked", "uniform"),
    description="MD4/MDLM ancestral sampling (exact posterior step; cached model calls)",
)
def decide_ancestral(ctx: StepContext) -> Commit:
    """Ancestral step ``t -> s`` (MD4 / MDLM; D3PM's posterior for uniform noise)."""
    u = ctx.uniform(2)
    if ctx.process.kind == "masked":
        # each masked position is clean at s with probability (alpha_s - alpha_t)/(1 - alpha_t)
        pi = ctx.process.unmask_probability(ctx.t, ctx.s).to(u.device)
        unmask = ctx.active & (u[..., 0] < pi[:, None])
        tokens = sample_categorical(ctx.logp, u[..., 1], ctx.temperature, where=unmask)
        return Commit(unmask, tokens, ctx.carry)
    # uniform noise: x_s ~ sum_x0 p(x0 | x_t) q(x_s | x_t, x0), every position
    post = ctx.process.posterior(ctx.logp, ctx.x, ctx.t, ctx.s, ctx.denoiser)
    tokens = sample_categorical(torch.log(post), u[..., 1], ctx.temperature, where=ctx.active)
    return Commit(ctx.active & (tokens != ctx.x), tokens, ctx.carry)


# ---------------------------------------------------------------------------------------------
# first hitting
# ---------------------------------------------------------------------------------------------


@register(
    "first_hitting",
    family="first_hitting",
    clock=first_hitting_clock,
    steps_rule="tokens",
    description="first-hitting sampler: one uniformly chosen token per step (exact simulation)",
)
def decide_first_hitting(ctx: StepContext) -> Commit:
    """First-hitting sampler (Zheng et al. 2024): unmask one masked position chosen
    uniformly at random, into ``x0 ~ p(x0 | x_t)``. With exact conditionals this draws the
    exact joint (one token at a time in a uniformly random order: the chain rule)."""
    u = ctx.uniform(2)
    k = ctx.active.sum(-1)
    rank = ctx.active.long().cumsum(-1) - 1  # rank of each active position in its row
    pick = (u[:, 0, 0] * k).floor().long().clamp_max((k - 1).clamp_min(0))
    chosen = ctx.active & (rank == pick[:, None])
    tokens = sample_categorical(ctx.logp, u[..., 1], ctx.temperature, where=chosen)
    return Commit(chosen, tokens, ctx.carry)


# ---------------------------------------------------------------------------------------------
# confidence remasking and threshold decoding
# ---------------------------------------------------------------------------------------------


def confidence_scores(
    kind: str, logp: Tensor, candidates: Tensor, where: Tensor, u: Tensor
) -> Tensor:
    """Per-position scores, higher = commit first (``-inf`` outside ``where``):

    ``confidence`` -- ``p(candidate)`` (LLaDA ``low_confidence``, Dream ``maskgit_plus``);
    ``margin`` -- ``p(top1) - p(top2)`` (Dream ``topk_margin``; Kim et al. 2025);
    ``entropy`` -- ``sum_v p log p`` (Dream ``entropy``); ``random`` -- ``u`` (LLaDA ``random``).
    Probabilities are the model's (untempered) ones, as in LLaDA."""
    out = torch.full(candidates.shape, -torch.inf, dtype=torch.float64, device=logp.device)
    if not bool(where.any()):
        return out
    if kind == "random":
        return torch.where(where, u.to(out.device), out)
    lp = logp[where].double()
    p = lp.exp()
    if kind == "confidence":
        sc = p.gather(-1, candidates[where].unsqueeze(-1)).squeeze(-1)
    elif kind == "margin":
        top = p.topk(2, dim=-1).values
        sc = top[:, 0] - top[:, 1]
    elif kind == "entropy":
        sc = torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
    else:
        raise ValueError(f"unknown score {kind!r}; expected confidence, margin, entropy or random")
    out[where] = sc
    return out


def _top_k(score: Tensor, k: Tensor) -> Tensor:
    """The ``k[row]`` highest-scoring positions of each row (ties: leftmost first)."""
    order = torch.argsort(-score, dim=-1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    return (rank < k[:, None]) & torch.isfinite(score)


def _candidates(ctx: StepContext, u: Tensor) -> Tensor:
    return sample_categorical(ctx.logp, u, ctx.temperature, where=ctx.active)


@register(
    "low_confidence",
    family="confidence",
    steps_rule="at_most_tokens",
    options={"score": "confidence", "alg_temp": 0.0},
    description="LLaDA low-confidence remasking (Dream maskgit_plus)",
)
@register(
    "topk_margin",
    family="confidence",
    steps_rule="at_most_tokens",
    options={"score": "margin", "alg_temp": 0.0},
    description="Dream top-k margin confidence",
)
@register(
    "entropy",
    family="confidence",
    steps_rule="at_most_tokens",
    options={"score": "entropy", "alg_temp": 0.0},
    description="Dream negative-entropy confidence",
)
@register(
    "random",
    family="confidence",
    steps_rule="at_most_tokens",
    options={"score": "random", "alg_temp": 0.0},
    description="random remasking: k uniformly chosen positions per step",
)
def decide_confidence(ctx: StepContext) -> Commit:
    """Confidence remasking (LLaDA ``low_confidence``, Dream ``alg``): draw a candidate token
    for every masked position of the block, score them (option ``score``), commit the
    ``ctx.count`` best. ``alg_temp > 0`` picks the positions at random with probabilities
    ``softmax(score / alg_temp)`` without replacement (Dream; Gumbel-top-k)."""
    u = ctx.uniform(3)
    cand = _candidates(ctx, u[..., 0])
    score = confidence_scores(ctx.options["score"], ctx.logp, cand, ctx.active, u[..., 1])
    alg_temp = float(ctx.options.get("alg_temp", 0.0))
    if alg_temp > 0:
        gumbel = -torch.log(-torch.log(u[..., 2].clamp_min(1e-300)))
        score = torch.where(ctx.active, score / alg_temp + gumbel, score)
    return Commit(_top_k(score, ctx.count) & ctx.active, cand, ctx.carry)


@register(
    "threshold",
    family="threshold",
    steps_rule="at_most_tokens",
    options={"threshold": 0.9},
    description="Fast-dLLM parallel decoding above a confidence threshold",
)
@register(
    "adablock",
    family="threshold",
    blocks=AdaptiveBlocks(),
    steps_rule="at_most_tokens",
    options={"threshold": 0.9, "delimiters": None, "delimiter_threshold": 0.3, "window": 0.25},
    description="AdaBlock: blocks end at a confident delimiter; threshold decoding inside",
)
def decide_threshold(ctx: StepContext) -> Commit:
    """Fast-dLLM threshold decoding (Wu et al. 2025, ``get_transfer_index``):
    commit every masked position of the block whose candidate has confidence >= ``threshold``,
    and at least the ``ctx.count`` most confident ones (Fast-dLLM always commits the top one;
    SDAR's ``low_confidence_dynamic``), so the block finishes within its steps."""
    u = ctx.uniform(1)[..., 0]
    cand = _candidates(ctx, u)
    score = confidence_scores("confidence", ctx.logp, cand, ctx.active, u)
    above = ctx.active & (score >= float(ctx.options["threshold"]))
    return Commit((above | _top_k(score, ctx.count)) & ctx.active, cand, ctx.carry)


# ---------------------------------------------------------------------------------------------
# re-masking of decoded tokens
# ---------------------------------------------------------------------------------------------


@register(
    "rcr",
    family="remasking",
    steps_rule="at_most_tokens",
    revises=True,
    options={"max_remask": None},
    description="MDPO running-confidence remasking (training-free RCR; rdm's routing)",
)
@register(
    "rdm",
    family="remasking",
    steps_rule="at_most_tokens",
    revises=True,
    options={"max_remask": None},
    description="RDM: low-confidence decoding that re-masks decoded tokens scored below new ones",
)
def decide_rdm(ctx: StepContext) -> Commit:
    """RDM's routing (Zheng et al. 2023, ``_reparam_decoding`` with top-k routing): after a
    step the block keeps decided the ``D + k`` best-scored positions among its ``D`` decided
    ones and its masked ones (``k = ctx.count``). A masked position's score is its candidate's
    confidence now; a decided token's is its confidence when it was decided (RDM's
    ``output_scores``; carried). Equivalently: commit the ``k`` best candidates (as
    ``low_confidence``), then swap while the lowest decided score is below the best candidate
    left: that token is masked again, the candidate committed. ``max_remask`` caps the swaps
    per step (``0``: exactly ``low_confidence``, token for token; ``None``: no cap). No
    re-masking on a block's last step.

    Registered twice: ``rdm`` and ``rcr``, MDPO's training-free running-confidence remasking
    (He et al. 2025; ``generate_dlm(..., overtime_conf=True)``): it commits every masked
    candidate, records each token's confidence when committed, then masks again the lowest
    recorded ones until the schedule's count is left -- the same top ``D + k`` routing
    (MDPO's code also reaches back into finished blocks; here only the current block)."""
    u = ctx.uniform(3)  # the draws of decide_confidence, so max_remask=0 reproduces it
    cand = _candidates(ctx, u[..., 0])
    fresh = confidence_scores("confidence", ctx.logp, cand, ctx.active, u[..., 1])
    commit = _top_k(fresh, ctx.count) & ctx.active
    stored = ctx.carry if isinstance(ctx.carry, Tensor) else torch.zeros_like(fresh)
    cap = ctx.options["max_remask"]
    cap = ctx.x.shape[1] if cap is None else int(cap)
    if cap < 0:
        raise ValueError(f"max_remask must be None or an integer >= 0, got {cap}")
    decided = ctx.decided & (ctx.s > 0)[:, None]  # never re-mask on a block's last step
    low, low_at = torch.where(decided, stored, torch.inf).sort(-1)  # weakest decided first
    high, high_at = torch.where(ctx.active & ~commit, fresh, -torch.inf).sort(-1, descending=True)
    # swap j: the j-th weakest decided token for the j-th best candidate left, while it helps
    # (low ascends and high descends, so the swaps are a prefix)
    j = torch.arange(low.shape[-1], device=low.device)
    swap = (low < high) & (j < cap)
    swap = swap.long().cumprod(-1).bool()
    remask = torch.zeros_like(commit).scatter(-1, low_at, swap)
    commit = commit | torch.zeros_like(commit).scatter(-1, high_at, swap)
    tokens = torch.where(remask, torch.full_like(cand, ctx.mask_id), cand)
    # scores of decided tokens: fresh for those committed now; -inf once masked again
    stored = torch.where(commit, fresh, torch.where(remask, -torch.inf, stored))
    return Commit(commit, tokens, stored, revise=remask)


def leave_one_out(ctx: StepContext, where: Tensor) -> Tensor:
    """``log p(x0_i | x with only position i masked)`` at the positions ``where`` ``[n, L]``
    (``ctx.logp`` elsewhere): the model's belief about a decided token given all the others,
    in one batched model call of ``where.sum()`` canvases. (SUBS hides it otherwise: a clean
    position predicts itself.)"""
    rows, cols = where.nonzero(as_tuple=True)
    out = ctx.logp.clone()
    if rows.numel() == 0:
        return out
    i = torch.arange(rows.numel(), device=rows.device)
    xb = ctx.x[rows].clone()
    xb[i, cols] = ctx.mask_id  # one canvas per decided position, that position masked
    out[rows, cols] = ctx.model(xb, ctx.t[rows])[i, cols].to(out.dtype)
    return out


@register(
    "token_edit",
    family="editing",
    steps_rule="at_most_tokens",
    revises=True,
    nfe_per_step=2,  # the leave-one-out call (so left-padded prompts are refused)
    options={"threshold": 0.9, "edit_threshold": 0.9},
    description="LLaDA2.1-style token editing on top of threshold decoding (extra model call)",
)
def decide_token_edit(ctx: StepContext) -> Commit:
    """Token editing (LLaDA2.1's joint threshold decoding: mask-to-token plus token-to-token):
    masked positions are committed as by ``threshold`` (Fast-dLLM); a token decided at an
    earlier step of the block is replaced by the model's most likely token there when that
    differs and its probability exceeds ``edit_threshold``. The model's belief about a decided
    token is its leave-one-out conditional (:func:`leave_one_out`, one extra batched call per
    step; LLaDA2.1 reads its T2T-trained logits at clean positions instead).
    ``edit_threshold >= 1`` never edits: exactly ``threshold``, token for token."""
    edit_th = float(ctx.options["edit_threshold"])
    in_range("edit_threshold", edit_th, 0, 1)
    commit = decide_threshold(ctx)
    if edit_th >= 1 or not bool(ctx.decided.any()):
        return commit
    best_lp, best = leave_one_out(ctx, ctx.decided).max(-1)  # the model's choice now
    edit = ctx.decided & (best != ctx.x) & (best_lp.exp() > edit_th)
    return Commit(commit.positions, torch.where(edit, best, commit.tokens), commit.carry, edit)


# ---------------------------------------------------------------------------------------------
# tau-leaping and theta-trapezoidal
# ---------------------------------------------------------------------------------------------


def _leap(
    rates: Tensor, dt: Tensor, where: Tensor, u_jump: Tensor, u_tok: Tensor, temperature: float
):
    """Per position: jump with probability ``1 - exp(-dt sum_y rates(y))`` to ``y ∝ rates``
    (the frozen-rate jump of tau-leaping with at most one jump per position)."""
    total = rates.sum(-1)
    p_jump = -torch.expm1(-total * dt.to(total.device)[:, None])
    jump = where & (u_jump < p_jump) & (total > 0)
    tokens = sample_categorical(torch.log(rates), u_tok, temperature, where=jump)
    return jump, tokens


@register(
    "tau_leaping",
    family="rates",
    processes=("masked", "uniform"),
    description="tau-leaping with the rates frozen at the start of each step (first order)",
)
def decide_tau_leaping(ctx: StepContext) -> Commit:
    """Tau-leaping (Campbell et al. 2022): freeze the model's reverse rates at ``t``
    over ``[s, t]``. For masked models a masked position unmasks with probability
    ``1 - exp(-(t - s) w(t))``, ``w = -alpha'/(1 - alpha)``, into ``x0 ~ p(x0 | x_t)``. The
    last step (``s = 0``) draws every remaining position from ``p(x0 | x_t)``."""
    u = ctx.uniform(2)
    final = ctx.s == 0
    rates = ctx.process.reverse_rates(ctx.logp, ctx.x, ctx.t, ctx.denoiser)
    jump, tokens = _leap(rates, ctx.t - ctx.s, ctx.active, u[..., 0], u[..., 1], ctx.temperature)
    if bool(final.any()):
        last = ctx.active & final[:, None]
        t_last = sample_categorical(ctx.logp, u[..., 1], ctx.temperature, where=last)
        jump = torch.where(final[:, None], last, jump)
        tokens = torch.where(last, t_last, tokens)
    return Commit(jump, tokens, ctx.carry)


@register(
    "theta_trapezoidal",
    family="rates",
    processes=("masked", "uniform"),
    nfe_per_step=2,
    options={"theta": 0.5},
    description="theta-trapezoidal second-order solver (2 model calls per step)",
)
def decide_theta_trapezoidal(ctx: StepContext) -> Commit:
    """theta-trapezoidal step (Ren et al. 2025, arXiv 2502.00234; proved second
    order in KL there):

    1. tau-leap for ``theta * dt`` with the rates ``mu_t(x_t)`` to an intermediate ``x*`` at
       ``rho = t - theta dt``;
    2. from ``x*``, tau-leap for ``(1 - theta) dt`` with the extrapolated rates
       ``(a1 mu_rho(x*) - a2 mu_t(x_t))_+``, ``a1 = 1 / (2 theta (1 - theta))``,
       ``a2 = ((1 - theta)^2 + theta^2) / (2 theta (1 - theta))`` (``a1 - a2 = 1``; the
       integrated rate is the trapezoidal/midpoint quadrature).

    Two model calls per step; the last step (``s = 0``) draws every remaining position from
    ``p(x0 | x_t)`` with one call."""
    theta = float(ctx.options["theta"])
    in_range("theta", theta, 0, 1, lo_open=True, hi_open=True)
    a1 = 1.0 / (2.0 * theta * (1.0 - theta))
    a2 = ((1.0 - theta) ** 2 + theta**2) / (2.0 * theta * (1.0 - theta))
    u = ctx.uniform(4)
    dt = ctx.t - ctx.s
    final = ctx.s == 0
    rates_t = ctx.process.reverse_rates(ctx.logp, ctx.x, ctx.t, ctx.denoiser)
    go = ctx.active & ~final[:, None]
    jump1, tok1 = _leap(rates_t, theta * dt, go, u[..., 0], u[..., 1], ctx.temperature)
    x1 = torch.where(jump1, tok1, ctx.x)
    out = x1.clone()
    rows = go.any(-1).nonzero().squeeze(-1)
    if rows.numel():
        rho = (ctx.t - theta * dt)[rows]
        logp_rho = ctx.model(x1[rows], rho)
        rates_rho = ctx.process.reverse_rates(logp_rho, x1[rows], rho, ctx.denoiser)
        mu = (a1 * rates_rho - a2 * rates_t[rows]).clamp_min(0.0)
        where2 = go[rows]
        if ctx.process.kind == "masked":
            where2 = where2 & (x1[rows] == ctx.mask_id)  # unmasked in stage 1: done
        else:
            mu = mu.scatter(-1, x1[rows].unsqueeze(-1), 0.0)  # no jump onto the current token
        jump2, tok2 = _leap(
            mu, (1.0 - theta) * dt[rows], where2, u[rows, :, 2], u[rows, :, 3], ctx.temperature
        )
        out[rows] = torch.where(jump2, tok2, x1[rows])
    if bool(final.any()):
        last = ctx.active & final[:, None]
        t_last = sample_categorical(ctx.logp, u[..., 1], ctx.temperature, where=last)
        out = torch.where(last, t_last, out)
    return Commit(ctx.active & (out != ctx.x), out, ctx.carry)


# listing order: exact samplers first, then the confidence family, then the CTMC solvers
SAMPLERS.reorder(["ancestral", "first_hitting", "low_confidence", "topk_margin", "entropy",
                  "random", "threshold", "adablock", "rdm", "rcr", "token_edit", "tau_leaping",
                  "theta_trapezoidal"])

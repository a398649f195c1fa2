"""Reward search and steering for masked-diffusion language models under an NFE budget.

The discrete counterpart of :mod:`reverie.search` (same ``budget`` / ``n`` / ``temperature``
contract, same :class:`~reverie.search.SearchResult`)::

    res = reverie.discrete.search.run(model, reward, method="fk", budget=64, n=16, length=8,
                                      steps=8, generator=torch.Generator().manual_seed(0))
    res.samples, res.rewards, res.nfe          # nfe <= budget, per returned sample

``reward(x) -> Tensor[batch]`` scores token sequences ``LongTensor[batch, length]``.
``budget`` is the number of network evaluations (rows) allowed per returned sample; every
returned sample comes from its own independent search. Particles walk the grid with a
registered token sampler (:data:`reverie.discrete.SAMPLERS`, default ``ancestral``); rewards
on intermediate canvases are taken on the data estimate ``fill_argmax`` (every masked position
filled with its most likely token under the same model call that feeds the next step, so
intermediate rewards cost no network evaluation). ``constraint=`` (a ``Regex``,
``JsonSchema`` or ``TokenAutomaton`` of :mod:`reverie.discrete.constraints`) restricts every
particle's decisions as ``generate(constraint=...)`` does, so a reward and a regex hold at once:
the search then tilts the constrained sampler's law.

============  ===========================================================  ===============
name          method                                                       goal
============  ===========================================================  ===============
best_of_n     N independent samples, keep the best (or draw one by          maximise /
              ``softmax(r/T)`` with ``selection="softmax"``)                tilted law
fk            Feynman-Kac / SMC steering (Singhal et al. 2025)              tilted law
beam          token-level beam search with a verifier (the search of        maximise
              "Visual Autoregressive Models Beat Diffusion Models on
              Inference Time Scaling", 2025, on masked diffusion)
============  ===========================================================  ===============

The exact tilted law ``p(x) exp(r(x)/T) / Z`` of a small exact sequence model is
:func:`tilted_law` (the target of ``fk`` and of ``best_of_n`` with softmax selection).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, in_range, integer, positive_int
from reverie._registry import Registry
from reverie.discrete._walker import Walker, edit_scores, fill_argmax, select_rows
from reverie.discrete.denoiser import TokenDenoiserBase
from reverie.search._core import SearchResult, group_argmax, need_budget
from reverie.search.smc import POTENTIALS, RESAMPLING, _draw_one, _resample

__all__ = ["METHODS", "Method", "SearchResult", "run", "tilted_law", "Search"]

Reward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """A registered discrete search method; ``tilted``: it targets ``p(x) exp(r(x)/T)``
    (otherwise it maximises the reward)."""

    name: str
    fn: Callable[..., tuple[Tensor, Tensor, dict[str, Any]]]
    description: str
    tilted: bool

    @property
    def options(self) -> dict[str, Any]:
        """The method's keyword options and their defaults."""
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in sig.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}


#: Discrete search methods by name.
METHODS: Registry[Method] = Registry("discrete search method", "reverie.discrete.search.METHODS")


def register(name: str, *, description: str, tilted: bool) -> Callable:
    def wrap(fn: Callable) -> Callable:
        METHODS.add(Method(name, fn, description, tilted))
        return fn

    return wrap


class Search:
    """What a method runs with: the :class:`~reverie.discrete._walker.Walker` (model calls,
    sampler steps), the checked reward, the budget, ``n``, the temperature."""

    def __init__(self, walker: Walker, reward: Reward, budget: int, n: int, temperature: float,
                 method: str):
        self.walker, self.user_reward = walker, reward
        self.budget, self.n, self.temperature, self.method = budget, n, temperature, method
        self.reward_calls = 0

    def need(self, minimum: int, what: str) -> None:
        """Refuse a budget below ``minimum``, saying why."""
        need_budget(self.budget, minimum, what, self.method, self.walker.steps,
                    self.walker.info.name)

    def reward(self, x: Tensor) -> Tensor:
        """The user's reward on complete sequences ``x``, checked: shape ``[B]``, finite."""
        self.reward_calls += 1
        with torch.no_grad():
            r = self.user_reward(x)
        b = x.shape[0]
        if not isinstance(r, Tensor):
            raise TypeError(f"the reward must return a torch.Tensor of shape [{b}], got "
                            f"{type(r).__name__}")
        if r.shape != (b,):
            raise ValueError(f"the reward must return one value per sequence, shape [{b}]; got "
                             f"{tuple(r.shape)} for sequences of shape {tuple(x.shape)}")
        if not bool(torch.isfinite(r).all()):
            raise ValueError("the reward returned NaN or inf; rewards must be finite")
        return r.double()

    def value(self, x: Tensor, logp: Tensor, lookahead: int = 0) -> Tensor:
        """The reward of intermediate canvases ``x`` with prediction ``logp``: of the data
        estimate :func:`fill_argmax` (``lookahead = 0``), or the soft value
        ``T log mean_m exp(r(x0_m) / T)`` over ``lookahead`` completions drawn position by
        position from ``logp`` (a Monte Carlo estimate of ``T log E[exp(r/T) | x]`` under the
        factorised prediction; ``lookahead`` reward calls per canvas, no network evaluation)."""
        mask_id = self.walker.model.mask_id
        if lookahead == 0:
            return self.reward(fill_argmax(x, logp, mask_id))
        b, v = x.shape[0], logp.shape[-1]
        probs = logp.double().exp().repeat_interleave(lookahead, 0).reshape(-1, v)
        draws = torch.multinomial(probs, 1, generator=self.walker.generator).reshape(
            b * lookahead, -1)
        xs = x.repeat_interleave(lookahead, 0)
        r = self.reward(torch.where(xs == mask_id, draws, xs)).reshape(b, lookahead)
        t = self.temperature
        return t * (torch.logsumexp(r / t, 1) - math.log(lookahead))

    def walk(self, k: int) -> tuple[Tensor, Tensor]:
        """``k`` independent particles for each returned sample, walked to the clean end:
        ``[n, k, L]`` sequences and ``[n, k]`` rewards."""
        w = self.walker
        x, carry = w.start(self.n * k), None
        for j in range(w.steps):
            logp = w.call(x, w.times(j, x.shape[0])[0])
            x, carry = w.step(x, j, logp, carry)
        return x.reshape(self.n, k, -1), self.reward(x).reshape(self.n, k)


def run(
    model: TokenDenoiserBase,
    reward: Reward,
    method: str = "fk",
    budget: int | None = None,
    n: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    length: int,
    steps: int | None = None,
    sampler: str = "ancestral",
    prompt: Tensor | None = None,
    constraint: Any = None,
    sampler_options: dict[str, Any] | None = None,
    **options: Any,
) -> SearchResult:
    """Search with ``method`` under an NFE ``budget`` per returned sample; return ``n`` samples
    ``[n, length]`` (prompt included).

    ``temperature`` ``T > 0``: the target ``p(x) exp(r(x)/T)`` of ``fk`` (and of
    ``best_of_n`` with ``selection="softmax"``). ``steps`` (default: one per generated token)
    and ``sampler`` / ``sampler_options``: the token sampler every particle walks (a grid
    clock; samplers that revise decided tokens are refused). ``prompt``: token ids fixed at the
    start. ``constraint``: see the module notes. Method options are keyword arguments
    (``METHODS[name].options``)."""
    info = METHODS[method]
    if not callable(reward):
        raise TypeError(f"reward must be callable (tokens -> Tensor[batch]), got "
                        f"{type(reward).__name__}")
    if budget is None:
        raise ValueError("pass budget=, the number of network evaluations allowed per sample")
    positive_int("budget", budget)
    positive_int("n", n)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    check_options("method", method, options, info.options)
    walker = Walker(model, length, steps, sampler, prompt=prompt, constraint=constraint,
                    options=sampler_options, generator=generator)
    ctx = Search(walker, reward, budget, n, float(temperature), method)
    samples, rewards, extra = info.fn(ctx, **options)
    spent = math.ceil(walker.rows / n)
    if spent > budget:  # pragma: no cover - an accounting error, never user input
        raise RuntimeError(f"method {method!r} spent {spent} NFE per sample, over {budget}")
    extra = {**extra, "sampler": walker.info.name, "steps": walker.steps,
             "reward_calls": ctx.reward_calls}
    return SearchResult(samples, rewards, spent, walker.rows, method, budget, extra)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


@register("best_of_n", tilted=False,
          description="N independent samples per returned one; the best (or softmax-drawn)")
def best_of_n(ctx: Search, *, selection: str = "max") -> tuple[Tensor, Tensor, dict]:
    """Random search (best-of-N, the baseline of Ma et al. 2025): ``N = budget // NFE(sample)``
    independent samples of the sampler; ``selection="max"`` returns the highest-reward one,
    ``"softmax"`` draws one with probabilities ``softmax(r / T)`` (importance resampling:
    the tilted law as ``N -> infinity``)."""
    if selection not in ("max", "softmax"):
        raise ValueError(f"selection must be 'max' or 'softmax', got {selection!r}")
    traj = ctx.walker.trajectory_nfe
    ctx.need(traj, "one sample")
    k = ctx.budget // traj
    x, r = ctx.walk(k)
    if selection == "max":
        pick = r.argmax(1)
    else:
        w = torch.softmax(r / ctx.temperature, dim=1)
        pick = _draw_one(w, ctx.walker.rand(ctx.n))
    rows = torch.arange(ctx.n)
    return x[rows, pick], r[rows, pick], {"samples_per_result": k, "selection": selection}


@register("fk", tilted=True,
          description="Feynman-Kac / SMC steering with potentials on the data estimate's reward "
          "(Singhal et al. 2025)")
def fk(
    ctx: Search,
    *,
    potential: str = "difference",
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    lookahead: int = 0,
    proposal: str = "prior",
) -> tuple[Tensor, Tensor, dict]:
    """FK steering (Singhal et al. 2025, Algorithm 1) on a masked LM: ``k = budget //
    NFE(sample)`` particles per returned sample walk the sampler's steps; before each step
    (after the model call that the step uses) every particle is weighted by a potential of the
    reward ``r_j`` of its data estimate (:func:`fill_argmax`), and a group is resampled --
    canvases, model outputs and the sampler's / constraint's carry together -- when its
    effective sample size falls below ``ess_threshold * k``. The last weight divides by the
    product of the earlier potentials along each ancestry, so all potentials multiply to
    ``exp(r(x)/T)`` and the returned particle (drawn by its final weight) targets
    ``p(x) exp(r(x)/T)`` as ``k -> infinity``. Potentials as in :func:`reverie.search.smc.fk`:
    ``difference`` ``exp((r_j - r_{j-1})/T)``, ``max``, ``sum``, ``immediate``.
    ``lookahead = m > 0`` (an addition here, not in the paper) replaces ``r_j`` by the soft
    value over ``m`` completions drawn from the prediction (:meth:`Search.value`): ``m``
    reward calls per particle and step, no extra network evaluation.

    ``proposal="twisted"``: twisted SMC (the twisted diffusion sampler of Wu et al. 2023, the
    locally optimal proposal of the discrete test-time-alignment SMC of Pani et al. 2025),
    learning-free. Around the anchor ``a = fill_argmax(x, p)`` the reward is linearised,
    ``r(x0) ~ r(a) + sum_i g_i(x0_i)`` with ``g_i(v) = r(a with a_i = v) - r(a)``
    (:func:`edit_scores`: ``L V`` reward calls per particle and step, exact for additive
    rewards). Each newly decided token is drawn from the twisted table
    ``p_i(v) exp(g_i(v)/T) / Z_i`` instead of ``p_i(v)``, and the potential is the soft value of
    the linearised reward under the factorised prediction,
    ``V(x) = r(a) + T sum_{i masked} log Z_i`` (closed form). The weight of a step is
    ``prod p_i / q_i`` of its decided tokens times ``exp((V_new - V_old)/T)``: it is one when
    the prediction of the other positions does not move, so only the dependence between
    positions is left to the resampling. Needs a sampler whose choice of positions does not
    read the table (``ancestral``, ``first_hitting``) and no constraint."""
    if proposal not in ("prior", "twisted"):
        raise ValueError(f"proposal must be 'prior' or 'twisted', got {proposal!r}")
    twisted = proposal == "twisted"
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; expected one of "
                         f"{', '.join(POTENTIALS)}")
    if resampling not in RESAMPLING:
        raise ValueError(f"unknown resampling {resampling!r}; expected one of "
                         f"{', '.join(RESAMPLING)}")
    in_range("ess_threshold", ess_threshold, 0, 1)
    integer("lookahead", lookahead, 0)
    w_, T = ctx.walker, ctx.temperature
    if twisted and (w_.info.name not in TABLE_FREE_POSITIONS or w_.constrained):
        raise ValueError(f"proposal='twisted' needs one of the samplers "
                         f"{', '.join(TABLE_FREE_POSITIONS)} (positions chosen without reading "
                         f"the table) and no constraint; got sampler {w_.info.name!r}"
                         f"{' with a constraint' if w_.constrained else ''}")
    if twisted and lookahead:
        raise ValueError("proposal='twisted' takes its value in closed form; lookahead must "
                         f"be 0, got {lookahead}")
    traj = w_.trajectory_nfe
    ctx.need(traj, "one particle")
    k, g = ctx.budget // traj, ctx.n
    m = g * k
    offset = torch.arange(g)[:, None] * k
    x, carry = w_.start(m), None
    logw = torch.zeros(m, dtype=torch.float64)   # log weight since the last resampling
    log_g = torch.zeros(m, dtype=torch.float64)  # sum of log potentials along the ancestry
    r_prev = torch.zeros(m, dtype=torch.float64)
    r_max = torch.full((m,), -math.inf, dtype=torch.float64)
    r_sum = torch.zeros(m, dtype=torch.float64)
    count = torch.zeros(g, dtype=torch.long)
    for j in range(w_.steps):
        logp = w_.call(x, w_.times(j, m)[0])
        if twisted:
            tilt, val = _twist(ctx, x, logp)  # the token tilts g / T and the soft value V(x)
        if j > 0:  # the all-masked canvas has the same estimate for every particle
            r = val if twisted else ctx.value(x, logp, lookahead)  # r_j of the canvas
            r_max, r_sum = torch.maximum(r_max, r), r_sum + r
            lp = {"difference": r - r_prev, "max": r_max, "sum": r_sum, "immediate": r}[
                potential] / T
            r_prev = r
            logw, log_g = logw + lp, log_g + lp
            w = torch.softmax(logw.reshape(g, k), dim=1)
            resample = 1.0 / (w * w).sum(1) < ess_threshold * k
            u = w_.rand(g, 1 if resampling == "systematic" else k)
            if bool(resample.any()):
                anc = _resample(w, u, resampling) + offset
                keep = torch.arange(k)[None, :] + offset
                idx = torch.where(resample[:, None], anc, keep).flatten()
                x, logp, carry = x[idx], logp[idx], select_rows(carry, idx, m)
                if twisted:
                    tilt = tilt[idx]
                log_g, r_prev, r_max, r_sum = log_g[idx], r_prev[idx], r_max[idx], r_sum[idx]
                logw = torch.where(resample.repeat_interleave(k), 0.0, logw[idx])
                count += resample.long()
        if not twisted:
            x, carry = w_.step(x, j, logp, carry)
            continue
        masked = x == w_.model.mask_id
        q = torch.where(masked[..., None], torch.log_softmax(logp.double() + tilt, -1), logp)
        new, carry = w_.step(x, j, q, carry)  # decided tokens drawn from the twisted table
        hit = new != x
        tok = torch.where(hit, new, 0)[..., None]
        ratio = (logp.double().gather(-1, tok) - q.double().gather(-1, tok)).squeeze(-1)
        logw = logw + torch.where(hit, ratio, 0.0).sum(-1)  # prod p_i / q_i of the step
        x = new
    r = ctx.reward(x)
    logw = logw + r / T - log_g  # the last potential: exp(r/T) / prod of the earlier ones
    w = torch.softmax(logw.reshape(g, k), dim=1)
    chosen = _draw_one(w, w_.rand(g)) + offset[:, 0]
    info = {"particles": k, "resamplings_mean": float(count.double().mean()),
            "final_ess_mean": float((1.0 / (w * w).sum(1)).mean()), "potential": potential,
            "proposal": proposal}
    return x[chosen], r[chosen], info


#: Samplers whose choice of positions does not read the table (a twisted proposal changes
#: only the tokens' law, so its weight is the ratio of the decided tokens' probabilities).
TABLE_FREE_POSITIONS = ("ancestral", "first_hitting")


def _twist(ctx: Search, x: Tensor, logp: Tensor) -> tuple[Tensor, Tensor]:
    """The twisted proposal's tilts ``g / T`` ``[B, L, V]`` (the reward linearised around the
    data estimate) and the linearised soft value ``V(x) = r(a) + T sum_{masked} log Z_i``."""
    T, mask_id = ctx.temperature, ctx.walker.model.mask_id
    anchor = fill_argmax(x, logp, mask_id)
    g = edit_scores(ctx.reward, anchor, logp.shape[-1]) / T
    log_z = torch.logsumexp(logp.double() + g, -1)  # [B, L]
    val = ctx.reward(anchor) + T * torch.where(x == mask_id, log_z, 0.0).sum(-1)
    return g, val


@register("beam", tilted=False,
          description="token-level beam search: branch every kept canvas, keep the best by a "
          "verifier's score of its data estimate")
def beam(ctx: Search, *, children: int = 4) -> tuple[Tensor, Tensor, dict]:
    """Token-level beam search with a verifier (the beam search of "Visual Autoregressive
    Models Beat Diffusion Models on Inference Time Scaling", 2025, on masked diffusion):
    ``B`` canvases per returned sample; at each step every kept canvas draws ``children``
    successors from the sampler's decision, each successor is scored by the
    verifier (the reward) on its data estimate -- from the model call that also feeds its
    next step, so scoring costs no extra network evaluation -- and the best ``B`` of the
    ``B * children`` are kept. The best complete sequence is returned. ``B`` is the widest beam
    the budget pays for: ``B (1 + children (NFE(sample) - 1)) <= budget``."""
    positive_int("children", children)
    w_ = ctx.walker
    per_beam = 1 + children * (w_.trajectory_nfe - 1)
    ctx.need(per_beam, f"a beam of width 1 with {children} children per step")
    B, g = ctx.budget // per_beam, ctx.n
    width = B * children
    offset = torch.arange(g)[:, None] * width
    x, carry = w_.start(g * B), None
    logp = w_.call(x, w_.times(0, g * B)[0])
    for j in range(w_.steps):
        parent = torch.arange(g * B).repeat_interleave(children)
        kids, carry = w_.step(x[parent], j, logp[parent], select_rows(carry, parent, g * B))
        if j == w_.steps - 1:
            x = kids
            break
        klogp = w_.call(kids, w_.times(j + 1, kids.shape[0])[0])
        score = ctx.reward(fill_argmax(kids, klogp, w_.model.mask_id))
        keep = (score.reshape(g, width).topk(B, dim=1).indices + offset).flatten()
        x, logp, carry = kids[keep], klogp[keep], select_rows(carry, keep, g * width)
    r = ctx.reward(x)
    best = group_argmax(r, torch.arange(g).repeat_interleave(width), g)
    return x[best], r[best], {"beam": B, "children": children}


# ---------------------------------------------------------------------------------------------
# The exact tilted law of a small sequence model
# ---------------------------------------------------------------------------------------------


def tilted_law(model: Any, reward: Reward, length: int, temperature: float = 1.0
               ) -> tuple[Tensor, Tensor]:
    """All ``V^length`` sequences of an exact model (a
    :class:`~reverie.reference.HiddenMarkovModel`) and their probabilities under
    ``p(x) exp(r(x)/T) / Z``, by enumeration (float64)."""
    if not hasattr(model, "joint"):
        raise TypeError("the exact tilted law needs a model with joint(length) (an exact "
                        f"HiddenMarkovModel / MarkovChain), got {type(model).__name__}")
    seqs, p = model.joint(length)
    logw = torch.log(p) + torch.as_tensor(reward(seqs), dtype=torch.float64) / temperature
    return seqs, torch.softmax(logw, 0)

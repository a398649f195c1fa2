"""Shared machinery of the search methods: the method registry, input checks, NFE accounting,
chunked model and reward calls, per-sample random numbers, and the Gaussian kernels that
particle methods draw from (always the sampler's own ``Transition``)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reverie._progress import progress_bar
from reverie._random import randn as _randn_rows
from reverie._registry import Registry
from reverie._tensor import bcast
from reverie.denoisers import DenoiserBase
from reverie.distributed import Population
from reverie.samplers import (
    Sampler,
    Schedule,
    State,
    Transition,
    check_finite,
    resolve_grid,
    walk,
)

Reward = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------
# Result and registry
# ---------------------------------------------------------------------------------------------


def need_budget(budget: int, minimum: int, what: str, method: str, steps: int,
                sampler: str) -> None:
    """Refuse an NFE ``budget`` below ``minimum`` per sample, saying why (``what``) for
    ``method`` walking ``steps`` steps of ``sampler``."""
    if budget < minimum:
        raise ValueError(
            f"method {method!r} needs a budget of at least {minimum} NFE per sample ({what}, "
            f"with {steps} steps of {sampler!r}); got budget={budget}"
        )


@dataclass
class SearchResult:
    """What :func:`reverie.search.run` returns.

    ``samples``: ``[n, *shape]`` clean samples. ``rewards``: ``[n]`` (float64) their rewards.
    ``nfe``: the most network evaluations spent on any returned sample (never above
    ``budget``). ``nfe_total``: all network evaluations of the run (batch rows), at most
    ``n * budget``. ``info``: method-specific diagnostics (particles, resampling counts, ...).
    """

    samples: Tensor
    rewards: Tensor
    nfe: int
    nfe_total: int
    method: str
    budget: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered search method. ``tilted``: it targets ``p(x) exp(r(x)/T)`` (otherwise it
    maximises the reward). ``sampler``: its default sampler; ``needs_stochastic``: it branches
    on the sampler's Gaussian kernel, so a deterministic sampler is refused."""

    name: str
    fn: Callable[..., tuple[Tensor, Tensor, Tensor, dict[str, Any]]]
    description: str
    tilted: bool
    sampler: str
    needs_stochastic: bool
    deterministic_only: bool = False
    sampler_options: Callable[[DenoiserBase], dict[str, Any]] | None = None
    # one population per returned sample that run(distributed=True) splits over the ranks
    particles: bool = False

    @property
    def options(self) -> dict[str, Any]:
        """The method's own keyword options and their defaults."""
        sig = inspect.signature(self.fn)
        return {
            k: p.default for k, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


#: All search methods by name; ``list(METHODS)`` gives the names.
METHODS: Registry[Method] = Registry("search method", "METHODS")


def register(
    name: str,
    *,
    description: str,
    tilted: bool,
    sampler: str,
    needs_stochastic: bool,
    deterministic_only: bool = False,
    sampler_options: Callable[[DenoiserBase], dict[str, Any]] | None = None,
    particles: bool = False,
) -> Callable:
    def wrap(fn: Callable) -> Callable:
        METHODS.add(Method(name, fn, description, tilted, sampler, needs_stochastic,
                           deterministic_only, sampler_options, particles))
        return fn

    return wrap


# ---------------------------------------------------------------------------------------------
# Random numbers: one shared generator, or one generator per returned sample
# ---------------------------------------------------------------------------------------------


class Rng:
    """Random numbers for rows that belong to groups (one group per returned sample).

    With one ``torch.Generator`` (or ``None``) every draw is one call; with a list of ``n``
    generators, row ``r`` of group ``g`` draws from ``generators[g]`` alone, so a returned
    sample does not depend on the others."""

    def __init__(self, generator: Any, n: int):
        if generator is None or isinstance(generator, torch.Generator):
            self.single: torch.Generator | None = generator
            self.gens: list[torch.Generator] | None = None
        elif isinstance(generator, (list, tuple)):
            if len(generator) != n or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(
                    f"generator must be one torch.Generator or a list of n={n} of them "
                    f"(one per returned sample); got a list of {len(generator)}"
                )
            self.single, self.gens = None, list(generator)
        else:
            raise TypeError(
                f"generator must be None, a torch.Generator or a list of them, "
                f"got {type(generator).__name__}"
            )

    def row_generators(self, groups: Tensor) -> Any:
        """What a sampler transition takes as ``generator`` for these rows."""
        if self.gens is None:
            return self.single
        return [self.gens[g] for g in groups.tolist()]

    def randn(self, groups: Tensor, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device | str = "cpu") -> Tensor:
        """Standard normal ``[len(groups), *shape]``."""
        full = (groups.numel(), *shape)
        return _randn_rows(full, self.row_generators(groups), dtype=dtype, device=device)

    def uniform(self, groups: Tensor, width: int) -> Tensor:
        """Uniform numbers ``[len(groups), width]`` (float64), row ``r`` from its group's
        generator."""
        if self.gens is None:
            return torch.rand(groups.numel(), width, generator=self.single, dtype=torch.float64)
        return torch.stack([torch.rand(width, generator=self.gens[g], dtype=torch.float64)
                            for g in groups.tolist()])

    def gumbel(self, groups: Tensor, width: int) -> Tensor:
        """Standard Gumbel noise ``[len(groups), width]`` (for sampling by ``argmax``)."""
        u = self.uniform(groups, width).clamp(1e-300, 1.0 - 1e-16)
        return -torch.log(-torch.log(u))


# ---------------------------------------------------------------------------------------------
# Counting, chunked denoiser
# ---------------------------------------------------------------------------------------------


class CountingDenoiser(DenoiserBase):
    """Calls the wrapped denoiser on at most ``chunk`` rows at a time (bounded activation
    memory however many particles there are) and counts the rows it evaluated."""

    def __init__(self, inner: DenoiserBase, chunk: int, bar: Any = None):
        self.inner = inner
        self.process = inner.process
        self.chunk = chunk
        self.rows = 0
        self.bar = bar if bar is not None else progress_bar(0, False, "")

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        b = x.shape[0]
        self.rows += b
        self.bar.update(b)
        if b <= self.chunk:
            return self.inner(x, t, **cond)
        outs = []
        for lo in range(0, b, self.chunk):
            sl = slice(lo, min(lo + self.chunk, b))
            t_c = t[sl] if isinstance(t, Tensor) and t.ndim == 1 and t.shape[0] == b else t
            c_c = {k: (v[sl] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == b else v)
                   for k, v in cond.items()}
            outs.append(self.inner(x[sl], t_c, **c_c))
        return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# The context every method runs in
# ---------------------------------------------------------------------------------------------


class Context:
    """Everything a method needs: the counted denoiser, the checked reward, the sampler and
    its schedule, the sample shape, the budget, temperature and random numbers."""

    def __init__(
        self,
        *,
        denoiser: DenoiserBase,
        reward: Reward,
        method: Method,
        budget: int,
        n: int,
        temperature: float,
        rng: Rng,
        shape: tuple[int, ...],
        sampler: Sampler,
        sampler_options: dict[str, Any],
        steps: int,
        grid: Any,
        chunk: int,
        dtype: torch.dtype,
        device: torch.device,
        bar: Any,
    ):
        self.model = CountingDenoiser(denoiser, chunk, bar)
        self.user_reward = reward
        self.method = method
        self.budget = budget
        self.n = n
        self.temperature = temperature
        self.rng = rng
        self.shape = shape
        self.sampler = sampler
        self.sampler_options = sampler_options
        g = resolve_grid(sampler, denoiser.process, steps, grid)
        self.schedule = Schedule.build(denoiser.process, g)
        self.steps = self.schedule.steps
        self.chunk = chunk
        self.dtype = dtype
        self.device = device
        self.reward_calls = 0
        self.split = False  # run(distributed=True): particle populations split over the ranks

    # ---- costs --------------------------------------------------------------------------------
    def step_cost(self, i: int) -> int:
        """Network evaluations of the transition at grid index ``i`` (the last one costs one)."""
        return self.sampler.nfe_per_step if i < self.steps - 1 else 1

    def cost(self, start: int, stop: int | None = None) -> int:
        """Network evaluations of walking the grid from index ``start`` to ``stop`` (default: the
        clean end)."""
        stop = self.steps if stop is None else stop
        return sum(self.step_cost(i) for i in range(start, stop))

    @property
    def trajectory_nfe(self) -> int:
        return self.cost(0)

    def need(self, minimum: int, what: str) -> None:
        """Refuse a budget below ``minimum`` with a message saying why."""
        need_budget(self.budget, minimum, what, self.method.name, self.steps, self.sampler.name)

    def group_chunks(self, rows_per_group: int) -> Iterator[Tensor]:
        """Groups (returned samples) processed together so that at most ``chunk`` rows (or one
        group) are alive at once."""
        per = max(1, self.chunk // max(1, rows_per_group))
        for lo in range(0, self.n, per):
            yield torch.arange(lo, min(lo + per, self.n))

    # ---- sampling -----------------------------------------------------------------------------
    def prior(self, groups: Tensor) -> Tensor:
        """Starting points ``x_{t_0} = sigma(t_0) z`` for rows of ``groups``."""
        z = self.rng.randn(groups, self.shape, self.dtype, self.device)
        return z * self.schedule.sigma[0]

    def transition(self, state: State, groups: Tensor) -> Transition:
        """The sampler's transition at ``state`` (rows of ``groups``), without gradients."""
        with torch.no_grad():
            return self.sampler.transition(
                self.model, state, self.schedule, generator=self.rng.row_generators(groups),
                cond={}, **self.sampler_options,
            )

    def draw(self, tr: Transition, state: State, groups: Tensor, pop: Population | None = None
             ) -> State:
        """``x_{i+1} = mean + std z``: a draw from the transition's Gaussian kernel (not
        checked for NaN / inf: :meth:`walk` checks, other callers use :meth:`check_finite`).
        With a population split over ranks (``pop``), ``groups`` are the whole population's
        and ``z`` is drawn for all of it, then cut to this rank's rows."""
        x = tr.mean
        std = tr.std

        def noise() -> Tensor:
            z = self.rng.randn(groups, x.shape[1:], x.dtype, x.device)
            return z if pop is None else pop.local(z)

        if isinstance(std, Tensor):
            nonzero = bool((std != 0).any())
            if nonzero if pop is None else pop.any(nonzero):  # every rank draws, or none
                x = x + bcast(std, x).to(x.dtype) * noise()
        elif std != 0:
            x = x + std * noise()
        return State(x, state.i + 1, tr.memory, state.nfe + tr.nfe)

    @property
    def name(self) -> str:
        return f"search {self.method.name!r}"

    def check_finite(self, x: Tensor, i: int) -> None:
        """:class:`~reverie.samplers.NonFiniteError` if ``x`` (after step ``i``) is not finite."""
        check_finite(x, self.name, i, self.schedule)

    def walk(self, state: State, step: Callable[[State], State], stop: int | None = None) -> State:
        """The core sampler loop (:func:`reverie.samplers.walk`) from ``state`` to ``stop``."""
        return walk(self.schedule, state, step, name=self.name, stop=stop)

    def trajectory(
        self, x: Tensor, groups: Tensor, start: int = 0, stop: int | None = None,
        memory: tuple[Tensor, ...] = (),
    ) -> tuple[State, Transition | None]:
        """Walk the grid from index ``start`` to ``stop`` (default the clean end). Returns the
        final state and the last transition (its ``x0`` is the newest data prediction)."""
        last: list[Transition] = []

        def step(state: State) -> State:
            last[:] = [self.transition(state, groups)]
            return self.draw(last[0], state, groups)

        state = self.walk(State(x, start, memory), step, stop)
        return state, (last[0] if last else None)

    # ---- rewards ------------------------------------------------------------------------------
    def reward(self, x: Tensor) -> Tensor:
        """The user's reward on ``x`` (in chunks), checked: shape ``[B]``, finite; float64."""
        with torch.no_grad():
            outs = [self._checked(x[lo:lo + self.chunk]) for lo in range(0, x.shape[0], self.chunk)]
        return torch.cat(outs).to(torch.float64)

    def reward_with_grad(self, x: Tensor) -> Tensor:
        """The user's reward with gradients (for DITTO); checked like :meth:`reward`."""
        r = self._checked(x)
        if not r.requires_grad:
            raise TypeError(
                f"method {self.method.name!r} backpropagates through the reward, but the reward "
                "returned a tensor without gradient; pass a differentiable torch reward"
            )
        return r

    def _checked(self, x: Tensor) -> Tensor:
        self.reward_calls += 1
        r = self.user_reward(x)
        b = x.shape[0]
        if not isinstance(r, Tensor):
            raise TypeError(f"the reward must return a torch.Tensor of shape [{b}], got "
                            f"{type(r).__name__}")
        if r.shape != (b,):
            raise ValueError(
                f"the reward must return one value per sample, shape [{b}]; got shape "
                f"{tuple(r.shape)} for samples of shape {tuple(x.shape)}"
            )
        bad = ~torch.isfinite(r.detach())
        if bool(bad.any()):
            kinds = "NaN" if bool(torch.isnan(r.detach()).any()) else "inf"
            raise ValueError(
                f"the reward returned {kinds} for {int(bad.sum())} of {b} samples; rewards "
                "must be finite"
            )
        return r


# ---------------------------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------------------------


def std_rows(std: float | Tensor, index: Tensor) -> float | Tensor:
    """The rows ``index`` of a transition's ``std`` (a number is shared by all rows)."""
    return std[index] if isinstance(std, Tensor) and std.ndim > 0 else std


def select_transition(tr: Transition, index: Tensor) -> Transition:
    """The rows ``index`` of a transition (to resample particles together with their kernel),
    mirroring :meth:`reverie.samplers.State.select`."""
    std = std_rows(tr.std, index)
    return Transition(tr.mean[index], std, tr.x0[index], tuple(m[index] for m in tr.memory), tr.nfe)


def is_deterministic(tr: Transition) -> bool:
    std = tr.std
    return bool((std == 0).all()) if isinstance(std, Tensor) else std == 0


def renoise(x: Tensor, sch: Schedule, i: int, j: int, z: Tensor) -> Tensor:
    """Forward-noise ``x_{t_i}`` to the noisier grid point ``j < i`` with the exact forward
    kernel ``q(x_{t_j} | x_{t_i}) = N((a_j/a_i) x, (s_j^2 - (a_j/a_i)^2 s_i^2) I)``."""
    ratio = sch.alpha[j] / sch.alpha[i]
    var = max(sch.sigma[j] ** 2 - (ratio * sch.sigma[i]) ** 2, 0.0)
    return ratio * x + math.sqrt(var) * z


def group_argmax(values: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """For each group ``0..n_groups-1``, the row index of its largest value (first on ties)."""
    best = torch.full((n_groups,), -math.inf, dtype=values.dtype)
    best = best.scatter_reduce(0, groups, values, reduce="amax")
    is_best = values == best[groups]
    rows = torch.arange(values.numel())
    big = torch.full((n_groups,), values.numel(), dtype=torch.long)
    return big.scatter_reduce(0, groups[is_best], rows[is_best], reduce="amin")


def logmeanexp(v: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``log mean exp`` over the entries of ``v`` where ``mask`` is true."""
    v = v.masked_fill(~mask, -math.inf)
    count = mask.sum(dim).clamp(min=1)
    return torch.logsumexp(v, dim) - torch.log(count.to(v.dtype))

"""A step-by-step walk of a registered token sampler over particles, for the methods that act
between steps (posterior sampling, reward search): the canvas of every particle, one model call
per step, the sampler's decision function, and the resampling of particles with their carry.

One block covers the generated positions and the times follow the grid ``t_j = 1 - j / S``,
so a step is ``SAMPLERS[name].decide`` on a :class:`~reverie.discrete.StepContext` exactly as
:func:`reverie.discrete.generate` builds it (the same schedule ``count`` for confidence
samplers). A constraint (regex, JSON schema, automaton) restricts the decision function
through :func:`~reverie.discrete.constraints.prepare_constraint` /
:func:`~reverie.discrete.constraints.constrain_sampler`, as ``generate(constraint=...)`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, positive_int
from reverie.discrete._sampling import uniform
from reverie.discrete.denoiser import TokenDenoiserBase
from reverie.discrete.generate import _counts
from reverie.discrete.samplers import SAMPLERS, Commit, StepContext, TokenSampler

__all__ = ["Walker", "select_rows", "fill_argmax", "edit_scores"]


def select_rows(value: Any, idx: Tensor, n: int) -> Any:
    """``value`` with every per-row tensor (first dimension ``n``) indexed by ``idx``: tensors,
    lists/tuples and dataclasses are walked (a sampler's or a constraint's carry)."""
    if isinstance(value, Tensor):
        return value[idx] if value.ndim >= 1 and value.shape[0] == n else value
    if isinstance(value, list):
        return [select_rows(v, idx, n) for v in value]
    if isinstance(value, tuple):
        return tuple(select_rows(v, idx, n) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: select_rows(getattr(value, f.name), idx, n)
                  for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    return value


def fill_argmax(x: Tensor, logp: Tensor, mask_id: int) -> Tensor:
    """The data estimate of a canvas: each masked position filled with its most likely token
    under ``logp`` (the quantised expectation of the prediction, APS; the ``x0`` on which FK
    potentials are taken)."""
    return torch.where(x == mask_id, logp.argmax(-1), x)


def edit_scores(score: Callable[[Tensor], Tensor], anchor: Tensor, vocab_size: int) -> Tensor:
    """``score(anchor with position i set to v) - score(anchor)`` for every position and token,
    ``[B, L, V]`` (``B L V`` extra calls of ``score`` on rows of ``anchor`` ``[B, L]``): the
    first-order difference of a sequence score around an anchor, exact for additive scores."""
    b, n = anchor.shape
    v = vocab_size
    base = score(anchor)
    edits = anchor.repeat_interleave(n * v, 0).reshape(b, n, v, n)
    idx = torch.arange(n)
    edits[:, idx, :, idx] = torch.arange(v).expand(n, b, v)  # [pos, batch, value]
    out = score(edits.reshape(-1, n)).reshape(b, n, v)
    return out - base[:, None, None]


class Walker:
    """Walk ``steps`` steps (default: one per position to decode) of ``sampler`` for
    masked-diffusion ``model`` on canvases of ``length`` positions, the last
    ``length - prompt_length`` generated. ``constraint`` (a
    ``Regex``, ``JsonSchema`` or ``TokenAutomaton``) restricts the sampler's decisions.
    ``generator``: one ``torch.Generator`` (or ``None``) for all draws. ``revising=True``
    admits samplers that mask again or change decided tokens (``rcr``, ``rdm``): a decided
    token is then not final (MDPO's rollouts)."""

    def __init__(
        self,
        model: TokenDenoiserBase,
        length: int,
        steps: int | None = None,
        sampler: str | TokenSampler = "ancestral",
        *,
        prompt: Tensor | None = None,
        constraint: Any = None,
        temperature: float = 1.0,
        options: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        revising: bool = False,
    ):
        if not isinstance(model, TokenDenoiserBase):
            raise TypeError(f"model must be a token denoiser, got {type(model).__name__}")
        if model.process.kind != "masked" or model.mask_id is None:
            raise ValueError("this method needs a masked-diffusion token denoiser (with mask_id)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        positive_int("length", length)
        info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
        if not isinstance(info, TokenSampler):
            raise TypeError(f"sampler must be a name or a TokenSampler, got {type(sampler)}")
        if (info.revises and not revising) or "masked" not in info.processes:
            raise ValueError(f"sampler {info.name!r} cannot be walked here (it revises decided "
                             "tokens or does not sample masked diffusion)")
        opts = dict(options or {})
        check_options("sampler", info.name, opts, info.options)
        self.prompt = (torch.zeros(0, dtype=torch.long) if prompt is None
                       else torch.as_tensor(prompt, dtype=torch.long).flatten())
        self.gen_length = length - self.prompt.numel()
        if self.gen_length < 1:
            raise ValueError(f"length {length} leaves no position after the prompt of "
                             f"{self.prompt.numel()} tokens")
        # the generated positions start masked, or hold a JSON scaffold's skeleton
        self.template = torch.full((self.gen_length,), model.mask_id, dtype=torch.long)
        if constraint is not None:
            from reverie.discrete.constraints import constrain_sampler, prepare_constraint

            layout = prepare_constraint(model, constraint, self.gen_length)
            self.template = layout.template.clone()
            info = constrain_sampler(info, layout)
        self.constrained = constraint is not None
        if info.revises and constraint is not None:
            raise ValueError(f"sampler {info.name!r} revises decided tokens and cannot take a "
                             "constraint")
        self.free = int((self.template == model.mask_id).sum())
        steps = max(self.free, 1) if steps is None else positive_int("steps", steps)
        rule = info.steps_rule
        if rule == "tokens" and steps != self.free:
            raise ValueError(f"sampler {info.name!r} commits one token per step: steps must be "
                             f"{self.free} (the positions to decode), got {steps}")
        if rule == "at_most_tokens" and steps > self.free:
            raise ValueError(f"sampler {info.name!r} commits at least one token per step: steps "
                             f"must be at most {self.free}, got {steps}")
        self.model, self.info, self.length, self.steps = model, info, length, steps
        self.options = {**info.options, **opts}
        self.temperature = float(temperature)
        self.generator = generator
        self.rows = 0  # rows the network processed

    # ---- model calls and random numbers -----------------------------------------------------
    def call(self, x: Tensor, t: Tensor) -> Tensor:
        """``log p(x0 | x_t)`` (one network evaluation per row). The walk's bookkeeping stays
        on the CPU; the network runs on the model's ``device`` (as in ``generate``)."""
        self.rows += x.shape[0]
        dev = torch.device(getattr(self.model, "device", "cpu"))
        return self.model(x.to(dev), t.float().to(dev)).cpu()

    def uniform(self, n: int, *shape: int) -> Tensor:
        """``U[0, 1)`` ``[n, length, *shape]`` (what a decision function draws)."""
        return uniform((n, self.length, *shape), self.generator)

    def rand(self, *shape: int) -> Tensor:
        """``U[0, 1)`` of any shape from the walk's generator (resampling, selection)."""
        return uniform(shape, self.generator)

    # ---- the walk ----------------------------------------------------------------------------
    def start(self, n: int) -> Tensor:
        """``n`` canvases: the prompt, then masks (or a scaffold's skeleton)."""
        x = torch.full((n, self.length), self.model.mask_id, dtype=torch.long)
        x[:, : self.prompt.numel()] = self.prompt
        x[:, self.prompt.numel():] = self.template
        return x

    def times(self, j: int, n: int) -> tuple[Tensor, Tensor]:
        t = 1.0 - j / self.steps
        s = max(1.0 - (j + 1) / self.steps, 0.0)
        return (torch.full((n,), t, dtype=torch.float64), torch.full((n,), s, dtype=torch.float64))

    def step(self, x: Tensor, j: int, logp: Tensor, carry: Any,
             decide: Callable[[StepContext], Commit] | None = None) -> tuple[Tensor, Any]:
        """Step ``j`` from canvases ``x`` whose prediction is ``logp``: the sampler's decision
        (or ``decide``, e.g. a guided one) written into the canvas; returns it and the carry."""
        n = x.shape[0]
        t, s = self.times(j, n)
        active = x == self.model.mask_id
        rows = SimpleNamespace(start_masked=torch.full((n,), self.free, dtype=torch.long))
        z = torch.zeros(n, dtype=torch.long)
        ctx = StepContext(
            x=x, logp=logp, t=t, s=s, active=active,
            block_start=z + self.prompt.numel(), block_end=z + self.length,
            step=z + j, steps=z + self.steps, new_block=torch.full((n,), j == 0),
            count=_counts(self.model.process, rows, active, s),
            temperature=self.temperature, options=self.options,
            model=self._raw, uniform=lambda *shape: self.uniform(n, *shape),
            process=self.model.process, mask_id=self.model.mask_id, denoiser=self.model,
            carry=carry, decided=self._decided(active), uniform_rows=None,
        )
        commit = (decide or self.info.decide)(ctx)
        out = torch.where(commit.positions & active, commit.tokens, x)
        if commit.revise is not None and ctx.decided is not None:  # a revising sampler
            out = torch.where(commit.revise & ctx.decided, commit.tokens, out)
        if j == self.steps - 1 and bool((out == self.model.mask_id).any()):
            raise RuntimeError(f"sampler {self.info.name!r} left masked positions at s = 0")
        return out, commit.carry

    def _decided(self, active: Tensor) -> Tensor | None:
        """The generated positions already decided (for samplers that revise them)."""
        if not self.info.revises:
            return None
        gen = torch.zeros(self.length, dtype=torch.bool)
        gen[self.prompt.numel():] = True
        return gen[None, :] & ~active

    def _raw(self, x: Tensor, t: Tensor) -> Tensor:
        """Calls made inside a decision function (multi-stage samplers)."""
        return self.call(x, t)

    @property
    def nfe_per_step(self) -> int:
        return self.info.nfe_per_step

    @property
    def trajectory_nfe(self) -> int:
        """Network evaluations of one particle from all-masked to clean (the last step of a
        multi-call sampler makes one call)."""
        return self.nfe_per_step * (self.steps - 1) + 1

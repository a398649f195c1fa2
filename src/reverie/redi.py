"""ReDi: Zhang, Yang, Wang & Li (ICML 2023), "ReDi: efficient learning-free diffusion inference via
trajectory retrieval" (arXiv:2302.02285; code ``zkx06111/ReDiffusion``).

A knowledge base holds, for a few full sampling runs, the state at an early grid step
(``key_step``: the key) and at a later one (``value_step``: the value). A new run walks only
to the key step, retrieves the ``top`` nearest keys, fits the query key by least squares on
them (``w = pinv(K) q``, the released ``retrieve_redi.py``), starts from the same combination of
their values at the value step and walks on to the end: the steps between are skipped.

    base = reverie.redi.build(den, noise_kb, sampler="dpmpp_2m", steps=20, key_step=4,
                              value_step=12)
    out = reverie.redi.sample(base, den, noise)     # out.x0, out.nfe
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.denoisers import DenoiserBase
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid, walk

__all__ = ["KnowledgeBase", "RediOutput", "build", "sample"]


@dataclass(frozen=True)
class KnowledgeBase:
    """Keys and values of ``len(keys)`` trajectories of ``sampler`` on ``grid``, with what
    identifies the model they came from (its process, the sample shape, and its output on a
    fixed probe: a base built for another model or shape is refused by :func:`sample`)."""

    keys: Tensor
    values: Tensor
    grid: Tensor
    key_step: int
    value_step: int
    sampler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    process: str = ""
    probe: Tensor | None = None
    probe_out: Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.keys.shape[1:])


@dataclass(frozen=True)
class RediOutput:
    """The samples, the model calls used (retrieval skips those between the key and value
    steps; the model check costs one), and each sample's least-squares fit error of its key."""

    x0: Tensor
    nfe: int
    key_error: Tensor


def _walk(den, x, sch, info, start: int, stop: int, generator, cond, options) -> State:
    def step(state: State) -> State:
        return info.step(den, state, sch, generator=generator, cond=cond, **options)

    return walk(sch, State(x, start), step, name=f"redi/{info.name}", stop=stop)


def _probe_time(grid: Tensor, key_step: int) -> float:
    return float(grid[key_step])


def build(denoiser: DenoiserBase, noise: Tensor, *, sampler: str = "dpmpp_2m", steps: int = 20,
          key_step: int = 4, value_step: int = 12, grid: str | Tensor | None = None,
          generator=None, cond: Mapping[str, Any] | None = None,
          **options: Any) -> KnowledgeBase:
    """Run ``sampler`` from every row of ``noise`` (standard normal, batch first) over its grid
    of ``steps`` steps and keep the states at grid steps ``key_step`` and ``value_step``
    (``0 < key_step < value_step < steps``); the runs stop at the value step."""
    info = SAMPLERS[sampler]
    positive_int("steps", steps)
    if not 0 < key_step < value_step < steps:
        raise ValueError(f"need 0 < key_step < value_step < steps, got key_step={key_step}, "
                         f"value_step={value_step}, steps={steps}")
    proc = denoiser.process
    g = resolve_grid(info, proc, steps, grid)
    sch = Schedule.build(proc, g)
    x = noise * float(proc.sigma(g[0]))
    cond = dict(cond or {})

    def step(state: State) -> State:
        return info.step(denoiser, state, sch, generator=generator, cond=cond, **options)

    with torch.no_grad():
        key = walk(sch, State(x), step, name=f"redi/{info.name}", stop=key_step)
        value = walk(sch, key, step, name=f"redi/{info.name}", stop=value_step)
        probe = torch.randn((1, *noise.shape[1:]), generator=torch.Generator().manual_seed(0),
                            dtype=noise.dtype)
        t = _probe_time(g, key_step)
        probe_out = denoiser(probe * float(proc.sigma(t)), t, **cond)
    return KnowledgeBase(key.x, value.x, g, key_step, value_step, info.name, dict(options),
                         repr(proc), probe, probe_out)


def sample(base: KnowledgeBase, denoiser: DenoiserBase, noise: Tensor, *, top: int = 1,
           generator=None, cond: Mapping[str, Any] | None = None) -> RediOutput:
    """ReDi sampling: walk ``noise`` to the base's key step, retrieve the ``top`` nearest keys
    (Euclidean), fit the query key by least squares on them and take the same combination of
    their values; walk on from the value step to the clean end. Raises ``ValueError`` when the
    base was built for another process, sample shape or model (the model's output on the
    base's probe differs)."""
    if not isinstance(base, KnowledgeBase):
        raise TypeError(f"base must be a reverie.redi.KnowledgeBase, got {type(base).__name__}")
    proc = denoiser.process
    if tuple(noise.shape[1:]) != base.shape:
        raise ValueError(f"the knowledge base holds samples of shape {base.shape}, the noise "
                         f"has {tuple(noise.shape[1:])}: build a base for this shape")
    if repr(proc) != base.process:
        raise ValueError(f"the knowledge base was built for the process {base.process}, the "
                         f"denoiser's is {proc!r}")
    if not 1 <= top <= len(base.keys):
        raise ValueError(f"top must be in [1, {len(base.keys)}] (the base's size), got {top}")
    info = SAMPLERS[base.sampler]
    sch = Schedule.build(proc, base.grid)
    cond = dict(cond or {})
    with torch.no_grad():
        t = _probe_time(base.grid, base.key_step)
        out = denoiser(base.probe * float(proc.sigma(t)), t, **cond)
        if not torch.allclose(out.to(base.probe_out), base.probe_out, rtol=1e-4, atol=1e-5):
            raise ValueError("the knowledge base was built with another model: its output on "
                             "the base's probe differs; build a base for this model")
        x = noise * float(proc.sigma(base.grid[0]))
        key = _walk(denoiser, x, sch, info, 0, base.key_step, generator, cond, base.options)
        q = key.x.reshape(len(x), -1)
        keys = base.keys.reshape(len(base.keys), -1).to(q)
        idx = torch.cdist(q, keys).topk(top, largest=False).indices  # [batch, top]
        nbrs = keys[idx]  # [batch, top, d]
        # w = pinv(K) q: the least-squares fit of the query key by its neighbours' keys
        w = torch.linalg.lstsq(nbrs.transpose(1, 2), q.unsqueeze(-1)).solution  # [batch, top, 1]
        fit_err = (nbrs.transpose(1, 2) @ w).squeeze(-1) - q
        vals = base.values.reshape(len(base.values), -1).to(q)[idx]
        start = (w * vals).sum(1).reshape(x.shape)
        end = _walk(denoiser, start, sch, info, base.value_step, sch.steps, generator, cond,
                    base.options)
    nfe = 1 + key.nfe + end.nfe
    return RediOutput(end.x, nfe, fit_err.norm(dim=-1))

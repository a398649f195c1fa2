"""LD-Pruner: task-agnostic structured pruning of a denoiser (Castells, Song, Kim & Choi 2024,
"LD-Pruner: Efficient Pruning of Latent Diffusion Models using Task-Agnostic Insights", paper 2).

The algorithm (their Section 3):

1. generate the model's own samples (its latent outputs) from fixed noise;
2. for each prunable unit, regenerate them from the same noise with the unit removed and score
   the unit by the change of the output statistics, ``S = |mean(o) - mean(o')|_2 +
   |var(o) - var(o')|_2`` over the batch (their task-agnostic latent-space metric: the sum of
   the changes of the latent mean and variance);
3. remove the ``ratio`` lowest-scoring units (keeping the remaining weights), then
4. fine-tune briefly by distillation to the unpruned model's outputs on noised samples.

Prunable units here are the channel groups of the residual blocks of reverie's
:class:`~reverie.nets.mlp.MLP` (``h <- h + W2 silu(W1 LN(h) + E emb)``): a group is ``width /
groups`` inner channels of one block (rows of ``W1`` and ``E``, columns of ``W2``); a block whose
groups are all removed contributes nothing. The pruned network is physically smaller (fewer
parameters, less time per call).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reverie.accelerate.distill import (
    _batches,
    _coef,
    _ddim_chain,
    _freeze,
    _positive,
    _step,
    _trainable_copy,
)
from reverie.denoisers import Denoiser
from reverie.grids import make_grid

__all__ = ["PruneResult", "ld_prune", "ld_score", "prunable_units"]


@dataclass
class PruneResult:
    """``denoiser`` (the pruned, fine-tuned copy), ``removed`` (the ``(block, group)`` units),
    ``scores`` (every unit's LD score, or ``None`` for random pruning), ``params`` (before,
    after) and ``history`` (fine-tuning: iterations, last loss, seconds)."""

    denoiser: Denoiser
    removed: list[tuple[int, int]]
    scores: dict[tuple[int, int], float] | None
    params: tuple[int, int]
    history: list[dict[str, Any]] = field(default_factory=list)


def _net(den: Denoiser) -> nn.Module:
    net = getattr(den.fn, "net", None)
    if not all(hasattr(net, a) for a in ("lin1", "emb", "lin2")):
        raise TypeError("ld_prune prunes reverie MLP denoisers (blocks lin1 / emb / lin2, e.g. "
                        f"load('two-moons').denoiser), got a {type(net).__name__}")
    return net


def prunable_units(den: Denoiser, groups: int = 8) -> dict[tuple[int, int], Tensor]:
    """The units ``(block, group) -> inner channel indices`` of a reverie MLP denoiser."""
    net = _net(den)
    _positive("groups", groups)
    units = {}
    for b, l2 in enumerate(net.lin2):
        for g, idx in enumerate(torch.arange(l2.in_features).chunk(groups)):
            units[(b, g)] = idx
    return units


def ld_score(ref: Tensor, out: Tensor) -> float:
    """LD-Pruner's metric between two output batches ``[n, ...]``: ``|mean - mean'|_2 +
    |var - var'|_2`` (statistics over the batch, per coordinate)."""
    ref, out = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
    return float((ref.mean(0) - out.mean(0)).norm() + (ref.var(0) - out.var(0)).norm())


def _keep(net: nn.Module, removed: list[tuple[int, int]], units) -> nn.Module:
    """A copy of ``net`` whose blocks keep only the channels of the units not removed."""
    net = copy.deepcopy(net)
    for b in range(len(net.lin2)):
        gone = [units[u] for u in removed if u[0] == b]
        drop = torch.cat(gone) if gone else torch.empty(0, dtype=torch.long)
        keep = torch.tensor([i for i in range(net.lin2[b].in_features) if i not in set(
            drop.tolist())], dtype=torch.long)
        for name, dim in (("lin1", 0), ("emb", 0), ("lin2", 1)):
            old = getattr(net, name)[b]
            w = old.weight.detach().index_select(dim, keep)
            with warnings.catch_warnings():  # a block with every group removed is empty
                warnings.simplefilter("ignore", UserWarning)
                new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None)
            with torch.no_grad():
                new.weight.copy_(w)
                if old.bias is not None:
                    new.bias.copy_(old.bias if dim == 1 else old.bias[keep])
            getattr(net, name)[b] = new
    return net


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def ld_prune(den: Denoiser, ratio: float, *, groups: int = 8, samples: int = 1000,
             steps: int = 10, iters: int = 200, batch: int = 256, lr: float = 1e-4,
             grid: str = "karras", random: bool = False, seed: int = 0) -> PruneResult:
    """LD-Pruner (paper 2): remove the fraction ``ratio`` in [0, 1) of the channel-group units
    (:func:`prunable_units`) of a reverie MLP denoiser with the lowest LD score
    (:func:`ld_score` between the ``samples`` ``steps``-step DDIM outputs with and without the
    unit, from the same noise), then fine-tune ``iters`` Adam iterations on ``|D'(z, t) - D(z,
    t)|^2`` at the model's own samples noised to grid times. ``random=True``: remove a random
    set of the same size instead (the baseline)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
    _trainable_copy(den)  # checks it is a Denoiser around an nn.Module
    net = _net(den)
    units = prunable_units(den, groups)
    names = list(units)
    n_remove = int(round(ratio * len(names)))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, *_shape(den)), generator=gen)
    g = make_grid(den.process, steps, grid)
    with torch.no_grad():
        ref = _ddim_chain(den, noise, g)  # (1) the model's own outputs
    scores = None
    if random:
        order = [names[i] for i in torch.randperm(len(names), generator=gen).tolist()]
    else:
        scores = {}
        for u in names:  # (2) one unit off at a time: zero its output columns
            w = net.lin2[u[0]].weight
            saved = w.detach()[:, units[u]].clone()
            with torch.no_grad():
                w[:, units[u]] = 0
                scores[u] = ld_score(ref, _ddim_chain(den, noise, g))
                w[:, units[u]] = saved
        order = sorted(names, key=scores.__getitem__)
    removed = sorted(order[:n_remove])  # (3) the least significant units
    student = copy.copy(den)
    student.fn = den.fn.with_net(_keep(net, removed, units))
    student, params = _trainable_copy(student)
    opt = torch.optim.Adam(params, lr=lr)
    times = make_grid(den.process, 64, grid)[:-1]
    data = _batches(ref, batch, gen)
    t0, loss_v = time.perf_counter(), float("nan")
    for _ in range(iters):  # (4) distil the unpruned model's outputs into the pruned one
        x = next(data)
        t = times[torch.randint(0, len(times), (x.shape[0],), generator=gen)]
        a, s = _coef(den.process, t, x)
        z = a * x + s * torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            target = den(z, t)
        loss = ((student(z, t) - target) ** 2).mean()
        loss_v = _step(opt, loss)
    _freeze(student.fn)
    history = [{"iters": iters, "loss": loss_v, "seconds": time.perf_counter() - t0}]
    return PruneResult(student, removed, scores, (_count(net), _count(student.fn.net)), history)


def _shape(den: Denoiser) -> tuple[int, ...]:
    """The sample shape of a reverie MLP denoiser: ``(dim,)``."""
    return (_net(den).inp.in_features,)


def _register() -> None:
    from reverie.accelerate import register

    register("ld_pruner", ld_prune, "prune", "LD-Pruner, Castells et al. 2024 (paper 2)",
             "remove the channel groups whose removal changes the output mean / variance "
             "least, then distil the unpruned outputs into the pruned network")


_register()

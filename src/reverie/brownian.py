"""Brownian-tree noise: one seeded Brownian path ``W(t)`` over a process's whole time interval,
queried at any times, so an SDE sampler's step noise ``(W(t_i) - W(t_{i+1})) / sqrt(|t_i -
t_{i+1}|)`` comes from the same path whatever the grid (k-diffusion's ``BrownianTreeNoiseSampler``;
Li et al. 2020, "Scalable gradients for SDEs", the Brownian tree of torchsde).

The tree is built by recursive bisection with the Brownian bridge (Levy's construction): on an
interval ``[a, b]`` with known ``W(a), W(b)`` the midpoint is

    W((a + b) / 2) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) * z_node,

where ``z_node`` is a unit normal drawn from a generator seeded by ``(seed, node)``. Nothing is
stored: a query walks from the root to a leaf of width ``(t1 - t0) / 2^depth`` (``W`` is linear
inside a leaf), so ``W`` is a pure function of ``(seed, t)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn_like

__all__ = ["BrownianTree", "NOISE_SAMPLERS", "step_noise"]

#: The values of the SDE samplers' ``noise_sampler`` option (or a :class:`BrownianTree`).
NOISE_SAMPLERS = ("gaussian", "brownian_tree")

_MASK = (1 << 63) - 1
# the last few W(t) computed, by (seed, interval, depth, shape, t): a sampler queries each grid
# point twice (end of one step, start of the next), and DPM++ SDE t_i twice in a step
_CACHE: OrderedDict[tuple, Tensor] = OrderedDict()
_CACHE_SIZE = 6


def _node_seed(seed: int, node: int) -> int:
    """A 63-bit seed for ``node`` (heap index: root 1, children 2k and 2k + 1) of tree ``seed``."""
    h = (seed * 0x9E3779B97F4A7C15 + node * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 31
    return (h * 0x94D049BB133111EB) & _MASK


class BrownianTree:
    """A standard Brownian motion ``W`` on ``[t0, t1]`` with ``W(t0) = 0``, one independent path
    per seed: ``seed`` is an int (one path shared by the batch) or one int per batch row (row
    ``k`` from ``seed[k]`` alone, so a sample does not depend on its batch)."""

    def __init__(self, seed: int | Sequence[int], t0: float, t1: float, depth: int = 24):
        if not t1 > t0:
            raise ValueError(f"BrownianTree needs t0 < t1, got [{t0}, {t1}]")
        self.seed = seed if isinstance(seed, int) else [int(s) for s in seed]
        self.t0, self.t1, self.depth = float(t0), float(t1), int(depth)

    def __repr__(self) -> str:
        return f"BrownianTree(seed={self.seed}, t0={self.t0}, t1={self.t1})"

    def _normal(self, node: int, like: Tensor) -> Tensor:
        """The unit normal of ``node``, shaped like ``like`` (drawn in float32, 5x faster than
        float64 on a CPU; returned as float64, on the CPU)."""
        if isinstance(self.seed, int):
            g = torch.Generator().manual_seed(_node_seed(self.seed, node))
            return torch.randn(like.shape, generator=g).double()
        if len(self.seed) != like.shape[0]:
            raise ValueError(f"BrownianTree has {len(self.seed)} seeds for a batch of "
                             f"{like.shape[0]}; pass one seed per sample or a single int")
        rows = [torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(
                    _node_seed(s, node))) for s in self.seed]
        return torch.stack(rows).double()

    def _value(self, t: float, like: Tensor) -> Tensor:
        """``W(t)`` (float64, CPU), through a small cache of recent queries."""
        t = min(max(t, self.t0), self.t1)  # the sampler's end points may lie a rounding outside
        seed = self.seed if isinstance(self.seed, int) else tuple(self.seed)
        key = (seed, self.t0, self.t1, self.depth, tuple(like.shape), t)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        w = _CACHE[key] = self._bisect(t, like)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return w

    def _bisect(self, t: float, like: Tensor) -> Tensor:
        """``W(t)``: bisect from the root to the leaf holding ``t``."""
        a, b = self.t0, self.t1
        w_a = torch.zeros(like.shape, dtype=torch.float64)
        w_b = math.sqrt(b - a) * self._normal(1, like)  # W(t1) ~ N(0, t1 - t0)
        node = 1
        for _ in range(self.depth):
            if t == a:
                return w_a
            if t == b:
                return w_b
            mid = 0.5 * (a + b)
            # the Brownian bridge's midpoint: mean of the ends, variance (b - a) / 4
            w_mid = 0.5 * (w_a + w_b) + math.sqrt(0.25 * (b - a)) * self._normal(2 * node, like)
            if t < mid:
                b, w_b, node = mid, w_mid, 2 * node
            else:
                a, w_a, node = mid, w_mid, 2 * node + 1
        return w_a + (t - a) / (b - a) * (w_b - w_a)  # linear inside a leaf

    def __call__(self, t: float, like: Tensor) -> Tensor:
        """``W(t)`` shaped like ``like``, in its dtype and on its device."""
        return self._value(float(t), like).to(like.device, like.dtype)

    def increment(self, s: float, t: float, like: Tensor) -> Tensor:
        """The unit normal ``(W(t) - W(s)) / sqrt(|t - s|)`` (sign from the order of the times:
        a reverse-time sampler going from ``s`` down to ``t`` gets ``W(s) - W(t)`` when
        ``t < s``, as k-diffusion's noise sampler)."""
        s, t = float(s), float(t)
        if s == t:
            raise ValueError(f"BrownianTree.increment needs two different times, got {s} twice")
        lo, hi = min(s, t), max(s, t)
        dw = self._value(hi, like) - self._value(lo, like)
        return (dw / math.sqrt(hi - lo)).to(like.device, like.dtype)

    @classmethod
    def from_generator(cls, generator: Generators, t0: float, t1: float) -> BrownianTree:
        """The tree a sampler uses for ``noise_sampler="brownian_tree"``: seeded by the
        generator's seed (``torch.Generator.initial_seed()``, not its state, so the path is
        the same however many numbers were drawn before; one seed per generator of a list;
        ``torch.initial_seed()`` without one), as ComfyUI seeds its tree with the sampler's
        seed."""
        if generator is None:
            seed: int | list[int] = torch.initial_seed()
        elif isinstance(generator, torch.Generator):
            seed = generator.initial_seed()
        else:
            seed = [g.initial_seed() for g in generator]
        return cls(seed, t0, t1)


def step_noise(
    noise_sampler: Any, x: Tensor, generator: Generators, schedule: Any, i: int, t_to: float,
    *, inner: bool = False,
) -> Tensor | None:
    """The unit normal a stochastic step from grid point ``i`` to time ``t_to`` adds.

    ``noise_sampler="gaussian"``: ``None`` for the step's own noise (the sampler loop draws it
    from ``generator``), a fresh draw for noise inside a step (``inner=True``);
    ``"brownian_tree"``: the increment of the tree seeded by ``generator`` over the process's
    time interval; a :class:`BrownianTree`: its increment."""
    if isinstance(noise_sampler, BrownianTree):
        tree = noise_sampler
    elif noise_sampler == "gaussian":
        return randn_like(x, generator) if inner else None
    elif noise_sampler == "brownian_tree":
        proc = schedule.process
        lo, hi = sorted((float(proc.t_clean), float(proc.t_max)))
        tree = BrownianTree.from_generator(generator, lo, hi)
    else:
        raise ValueError(f"noise_sampler must be one of {', '.join(NOISE_SAMPLERS)} or a "
                         f"reverie.BrownianTree, got {noise_sampler!r}")
    return tree.increment(schedule.t[i], t_to, x)

"""Randomness only from explicit generators; one generator per sample makes a sample
independent of the batch it was drawn in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None

__all__ = ["Generators", "randn", "randn_like", "seeded_generators", "split_generators"]


def seeded_generators(
    seed: int, n: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """``n`` generators seeded ``seed, seed + 1, ...``: sample ``k`` depends on ``seed + k``."""
    return [torch.Generator(device).manual_seed(seed + k) for k in range(n)]


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row ``k`` comes from
    ``generator[k]`` alone."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
        return out.to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(
            f"got {len(gens)} generators for a batch of {shape[0]}; pass one generator per sample"
        )
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in gens]
    return torch.stack(rows).to(device)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (see :func:`randn`)."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def split_generators(generator: Generators, index: Tensor | Sequence[int]) -> Generators:
    """The generators of a sub-batch (a single shared generator is returned as is)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    idx = index.tolist() if isinstance(index, Tensor) else list(index)
    return [gens[i] for i in idx]

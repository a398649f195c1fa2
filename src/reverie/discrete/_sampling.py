"""Randomness for token samplers: uniforms from explicit generators and categorical draws in
float64.

Categorical draws use the inverse CDF in float64 with one uniform per position. This is the
precision that Gumbel-max sampling needs and lacks in float32/bfloat16 (Zheng et al. 2024,
"Masked diffusion models are secretly time-agnostic masked models and exploit inaccurate
categorical sampling": truncated Gumbel noise lowers the temperature); it draws exactly
the same law as Gumbel-max at the same temperature and costs one random number per position
instead of one per vocabulary entry. A position consumes its uniform whether or not it is
sampled, so a row's draws never depend on what the other rows or positions did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reverie._random import Generators

__all__ = ["uniform", "sample_categorical", "check_generator"]


def check_generator(generator: Generators, n: int) -> None:
    """``generator`` must be ``None``, one ``torch.Generator`` or ``n`` of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)) or not all(
        isinstance(g, torch.Generator) for g in generator
    ):
        raise TypeError(
            f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}"
        )
    if len(generator) != n:
        raise ValueError(
            f"got {len(generator)} generators for n = {n} samples; pass one per sample"
        )


def uniform(
    shape: Sequence[int], generator: Generators = None, *, device: str | torch.device = "cpu"
) -> Tensor:
    """``U[0, 1)`` in float64; with a list of generators row ``k`` comes from ``generator[k]``."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, dtype=torch.float64, device=gdev).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.rand(shape[1:], generator=g, dtype=torch.float64, device=g.device) for g in gens]
    return torch.stack(rows).to(device)


def sample_categorical(
    logp: Tensor,
    u: Tensor,
    temperature: float = 1.0,
    where: Tensor | None = None,
) -> Tensor:
    """Draw one token per position from ``softmax(logp / temperature)`` by the inverse CDF in
    float64, using the given uniforms ``u`` (``logp.shape[:-1]``). ``temperature = 0`` is the
    argmax. ``where`` (bool, ``logp.shape[:-1]``) restricts the work to those positions (the
    others get the argmax, which callers ignore). Returns a LongTensor ``logp.shape[:-1]``."""
    out = logp.argmax(-1)
    if temperature == 0:
        return out
    sel = torch.ones(out.shape, dtype=torch.bool, device=out.device) if where is None else where
    if not bool(sel.any()):
        return out
    lp = logp[sel].double() / temperature
    p = torch.softmax(lp, dim=-1)
    cdf = p.cumsum(-1)
    target = (u[sel].to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(p.shape[-1] - 1)
    out = out.clone()
    out[sel] = idx
    return out

"""Small tensor helpers shared across the package (internal: no public API promise)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as64", "bcast", "time_tensor"]


def as64(t: float | Tensor) -> Tensor:
    """``t`` as a float64 tensor (a number becomes a 0-d tensor)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64)


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or ``[batch]`` tensor against ``like`` (batch first)."""
    v = v.to(like.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def time_tensor(t: float | Tensor, x: Tensor) -> Tensor:
    """``t`` as a ``[batch]`` tensor; float64 for float64 states, float32 otherwise."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    elif t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t

"""Point clouds ``[B, N, 3]``: synthetic primitives (sphere, cube and cylinder surfaces
sampled uniformly by area), orthographic 2-D views and the Chamfer distance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import positive_int

__all__ = ["PRIMITIVES", "primitive", "check_points", "project", "chamfer"]


def check_points(x: Tensor, name: str = "points", dim: int = 3) -> Tensor:
    """Raise ``ValueError`` unless ``x`` is ``[B, N, dim]``; returns ``x``."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [B, N, {dim}] tensor, got {got}")
    return x


def _sphere(u: Tensor) -> Tensor:
    z = 2 * u[..., 0] - 1  # Archimedes: z uniform on [-1, 1] is uniform on the sphere
    phi = 2 * math.pi * u[..., 1]
    r = (1 - z**2).clamp(min=0).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def _cube(u: Tensor) -> Tensor:
    face = (u[..., 2] * 6).long().clamp(max=5)  # six faces of equal area
    side = torch.where(face % 2 == 1, -1.0, 1.0)  # +1 or -1 on the face's axis
    p = torch.stack([side, 2 * u[..., 0] - 1, 2 * u[..., 1] - 1], -1)  # a face on axis 0
    axis = (face // 2)[..., None]  # roll the fixed coordinate onto axis 0, 1 or 2
    return torch.where(axis == 0, p, torch.where(axis == 1, p.roll(1, -1), p.roll(2, -1)))


def _cylinder(u: Tensor) -> Tensor:
    # radius 1, height 2: side area 4 pi, caps 2 pi together -> side with probability 2/3
    phi = 2 * math.pi * u[..., 0]
    side = u[..., 2] < 2 / 3
    r = torch.where(side, torch.ones_like(phi), u[..., 1].sqrt())
    z = torch.where(side, 2 * u[..., 1] - 1, torch.where(u[..., 2] < 5 / 6, 1.0, -1.0))
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


PRIMITIVES = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder}


def primitive(name: str, batch: int, n: int, generator: torch.Generator | None = None,
              scale: float | Tensor = 1.0) -> Tensor:
    """``[batch, n, 3]`` points uniform on the surface of a centred primitive of half-size
    ``scale`` (a number or one per shape)."""
    if name not in PRIMITIVES:
        raise ValueError(f"unknown primitive {name!r}; expected one of {', '.join(PRIMITIVES)}")
    u = torch.rand(positive_int("batch", batch), positive_int("n", n), 3, generator=generator)
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1, 1)
    return PRIMITIVES[name](u) * s


def project(x: Tensor, drop: int = 2) -> Tensor:
    """The orthographic 2-D view ``[B, N, 2]``: the points with coordinate ``drop`` removed
    (a stand-in for an image of the shape)."""
    check_points(x)
    keep = [i for i in range(3) if i != drop]
    return x[..., keep]


def chamfer(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance ``[B]``: mean squared distance from each point to the other
    set's nearest point, both ways."""
    check_points(a, "a", a.shape[-1]), check_points(b, "b", a.shape[-1])
    d = torch.cdist(a.to(torch.float64), b.to(torch.float64)) ** 2
    return d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)

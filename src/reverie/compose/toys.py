"""Exact 2-D toy models for composition demos and checks (the ``reverie compose`` and
``reverie likelihood`` commands): small Gaussian mixtures whose products and unions are exact
(:func:`reverie.reference.mixture_product`, :func:`reverie.reference.mixture_union`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from reverie.reference.gaussian import GaussianMixture

__all__ = ["TOYS", "toy"]


def _ring() -> GaussianMixture:
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(torch.stack([2 * ang.cos(), 2 * ang.sin()], 1), 0.03)


def _grid() -> GaussianMixture:
    v = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    return GaussianMixture(torch.cartesian_prod(v, v), 0.05)


def _half(mean: tuple[float, float], var: tuple[float, float]) -> Callable[[], GaussianMixture]:
    return lambda: GaussianMixture([list(mean)], torch.tensor([list(var)], dtype=torch.float64))


#: name -> (description, constructor)
TOYS: dict[str, tuple[str, Callable[[], GaussianMixture]]] = {
    "ring": ("8 Gaussians on a circle of radius 2", _ring),
    "grid": ("3 x 3 grid of Gaussians, spacing 2", _grid),
    "left": ("broad Gaussian on the left, N((-1.5, 0), diag(1, 3))",
             _half((-1.5, 0.0), (1.0, 3.0))),
    "right": ("broad Gaussian on the right, N((1.5, 0), diag(1, 3))",
              _half((1.5, 0.0), (1.0, 3.0))),
    "top": ("broad Gaussian at the top, N((0, 1.5), diag(3, 1))", _half((0.0, 1.5), (3.0, 1.0))),
    "bottom": ("broad Gaussian at the bottom, N((0, -1.5), diag(3, 1))",
               _half((0.0, -1.5), (3.0, 1.0))),
}


def toy(name: str) -> GaussianMixture:
    """The exact toy mixture ``name`` (see :data:`TOYS`)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy model {name!r}; expected one of {', '.join(TOYS)}")
    return TOYS[name][1]()

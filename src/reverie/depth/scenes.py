"""Synthetic metric-depth scenes with exact depth (numpy ray casting), sparse depth
points, the interpolation baselines and the depth errors.

A scene is what a forward-looking pinhole camera at height ``h`` sees: a floor plane, a back
wall at distance ``z_wall`` and up to two fronto-parallel boxes (rectangles at depth
``z_box``); the depth of a pixel is the nearest surface its ray meets, in metres. Pixel
centres have normalised coordinates ``(u, v)`` in ``[-1, 1]`` (``v`` down).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["pixel_grid", "render_scenes", "render_photos", "sparse_points", "interpolate",
           "depth_errors", "DEPTH_RANGE"]

#: Metric range (metres) of every rendered depth: (near, far).
DEPTH_RANGE = (0.5, 20.0)
_TAN = 0.6  # tan of the half field of view


def pixel_grid(size: int) -> Tensor:
    """Normalised pixel centres ``[size * size, 2]`` (``u`` across, ``v`` down), row-major."""
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)


def render_scenes(n: int, size: int = 16, seed: int = 0) -> Tensor:
    """``n`` exact depth maps ``[n, size, size]`` (metres, float64) of random scenes."""
    return render_photos(n, size, seed)[0]


def render_photos(n: int, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The scenes of :func:`render_scenes` (same seed, same depth) with a grey-level photo of
    each: ``(depth [n, size, size], image [n, size, size] in [0, 1])``. A pixel's grey is its
    surface's albedo (floor 0.9, wall 0.55, boxes 0.3 / 0.4) times a world-space checker of
    0.5 m tiles on the hit point (``(x, z)`` on the floor, ``(x, y)`` on the vertical
    surfaces): the image-conditional task's input, from which depth follows through
    perspective (tile size, the horizon, where boxes stand), never pixel by pixel."""
    rng = np.random.default_rng(seed)
    uv = pixel_grid(size).numpy()
    u, v = uv[:, 0], uv[:, 1]
    out, photo = np.empty((n, size * size)), np.empty((n, size * size))
    for i in range(n):
        h, z_wall = rng.uniform(1.0, 2.0), rng.uniform(6.0, 15.0)
        horizon = rng.uniform(-0.3, 0.2)  # camera pitch moves the horizon row
        below = v - horizon
        # floor y = -h: the ray (u tan, v' tan, 1) reaches it at z = h / (v' tan)
        z = np.where(below > 1e-6, h / np.maximum(below, 1e-6) / _TAN, np.inf)
        albedo = np.where(z < z_wall, 0.9, 0.55)  # floor, else the wall
        z = np.minimum(z, z_wall)
        for k in range(rng.integers(0, 3)):  # boxes: rectangles at one depth, standing on it
            zb = rng.uniform(1.5, min(6.0, z_wall - 0.5))
            u0, width = rng.uniform(-1, 0.7), rng.uniform(0.2, 0.8)
            top = horizon + rng.uniform(-0.6, 0.1)
            foot = horizon + h / (zb * _TAN)  # the row where the box meets the floor
            inside = (u >= u0) & (u <= u0 + width) & (v >= top) & (v <= foot) & (zb < z)
            albedo = np.where(inside, 0.3 + 0.1 * k, albedo)
            z = np.where(inside, zb, z)
        out[i] = np.clip(z, *DEPTH_RANGE)
        x, y = u * _TAN * out[i], (horizon - v) * _TAN * out[i]  # world x, height above eye
        second = np.where(albedo == 0.9, out[i], y)  # z on the floor, y on vertical surfaces
        checker = (np.floor(x / 0.5) + np.floor(second / 0.5)) % 2
        photo[i] = albedo * (0.7 + 0.3 * checker)
    return (torch.from_numpy(out.reshape(n, size, size)),
            torch.from_numpy(photo.reshape(n, size, size)))


def sparse_points(depth: Tensor, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` random pixels of each map (no repeats): their normalised coordinates
    ``[B, count, 2]`` and exact depths ``[B, count]`` -- unstructured sparse conditioning."""
    _check_maps(depth, "depth")
    b, size = depth.shape[0], depth.shape[-1]
    if not 1 <= count <= size * size:
        raise ValueError(f"count must be in [1, {size * size}], got {count}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(size * size, generator=gen)[:count] for _ in range(b)])
    uv = pixel_grid(size)[idx]
    return uv, torch.gather(depth.reshape(b, -1), 1, idx)


def interpolate(uv: Tensor, depth: Tensor, size: int, method: str = "linear") -> Tensor:
    """Baseline depth maps ``[B, size, size]`` from sparse points: ``"nearest"`` neighbour or
    ``"linear"`` (Delaunay barycentric inside the points' convex hull, nearest outside)."""
    from scipy.interpolate import griddata

    if method not in ("nearest", "linear"):
        raise ValueError(f"method must be 'nearest' or 'linear', got {method!r}")
    _check_points(uv, depth)
    grid = pixel_grid(size).numpy()
    maps = []
    for p, d in zip(uv.numpy(), depth.numpy()):
        near = griddata(p, d, grid, method="nearest")
        z = near if method == "nearest" else griddata(p, d, grid, method="linear")
        maps.append(np.where(np.isnan(z), near, z))
    return torch.from_numpy(np.stack(maps).reshape(-1, size, size))


def depth_errors(pred: Tensor, true: Tensor) -> dict[str, float]:
    """The standard metric-depth errors over all pixels: ``abs_rel`` = mean |d - d*| / d*,
    ``rmse`` = sqrt(mean (d - d*)^2) in metres."""
    _check_maps(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have one shape, got {list(pred.shape)} and "
                         f"{list(true.shape)}")
    p, t = pred.to(torch.float64), true.to(torch.float64)
    return {"abs_rel": float(((p - t).abs() / t).mean()),
            "rmse": float(((p - t) ** 2).mean().sqrt())}


def _check_maps(depth: Tensor, name: str) -> None:
    if not isinstance(depth, Tensor) or depth.ndim != 3 or depth.shape[1] != depth.shape[2]:
        got = list(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"{name} must be square depth maps [B, H, H], got {got}")
    if not bool((depth > 0).all()):
        raise ValueError(f"{name} must be positive (metric depth in metres)")


def _check_points(uv: Tensor, depth: Tensor) -> None:
    if uv.ndim != 3 or uv.shape[-1] != 2 or depth.shape != uv.shape[:2]:
        raise ValueError(f"need points uv [B, K, 2] and depths [B, K], got {list(uv.shape)} "
                         f"and {list(depth.shape)}")
    if not bool((uv.abs() <= 1).all()):
        raise ValueError("point coordinates must be normalised to [-1, 1]")
    if not bool((depth > 0).all()):
        raise ValueError("point depths must be positive (metres)")

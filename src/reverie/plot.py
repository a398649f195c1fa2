"""Pictures: image grids and 2-D scatter plots / sampling trajectories (matplotlib).

matplotlib is imported inside the functions and only its object-oriented API with the Agg
canvas is used (no pyplot, no global backend change), so this works on headless machines and
inside other applications. Every function returns a ``matplotlib.figure.Figure``; pass
``path`` to also write it (atomically: a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "mosaic", "scatter", "trajectories", "save_figure", "FIGURE_SUFFIXES"]

#: File suffixes a figure can be written to.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib (pip install matplotlib)") from err
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) via a temporary file and a rename,
    so an error never leaves a half-written file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise ValueError(
            f"cannot write a figure to {path}: expected one of {', '.join(FIGURE_SUFFIXES)}"
        )
    from reverie._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(
            tmp, format=suffix.lstrip(".").replace("jpg", "jpeg"), dpi=dpi, bbox_inches="tight"
        )
    return path


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def mosaic(
    images: Tensor | np.ndarray,
    ncol: int | None = None,
    pad: int = 1,
    value_range: tuple[float, float] = (-1.0, 1.0),
    pad_value: float = 0.0,
) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images (C = 1 or 3) into one ``[rows*(H+pad)-pad, ...]`` array in
    [0, 1] (``[.., .., 3]`` for colour). ``value_range`` is mapped to [0, 1] and clipped."""
    x = _numpy(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(x.shape)}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    nrow = math.ceil(n / ncol)
    out = np.full((c, nrow * (h + pad) - pad, ncol * (w + pad) - pad), pad_value)
    for k in range(n):
        r, q = divmod(k, ncol)
        out[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = x[k]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def image_grid(
    images: Tensor | np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    ncol: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    cmap: str = "gray_r",
    title: str | None = None,
    scale: float = 0.6,
) -> Any:
    """A grid of ``[N, C, H, W]`` images (model space, ``value_range`` -> [0, 1]).

    Grey images use ``cmap`` (``gray_r``: high values dark, like ink on paper, as scikit-learn
    shows its digits). ``ncol`` defaults to a square grid; each image is ``scale`` inches wide.
    """
    grid = mosaic(
        images, ncol=ncol, value_range=value_range, pad_value=0.0 if cmap == "gray_r" else 1.0
    )
    h, w = grid.shape[:2]
    x = _numpy(images)
    cell = x.shape[-1] + 1
    fig = _figure(max(1.5, scale * w / cell), max(1.5, scale * h / cell) + (0.3 if title else 0))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        grid, cmap=cmap if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        save_figure(fig, path)
    return fig


def _check_points(points: Tensor | np.ndarray, name: str = "points") -> np.ndarray:
    p = _numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2], got {tuple(p.shape)}")
    return p


def scatter(
    points: Tensor | np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    labels: Tensor | np.ndarray | Sequence[int] | None = None,
    reference: Tensor | np.ndarray | None = None,
    title: str | None = None,
    size: float = 4.0,
) -> Any:
    """A scatter plot of 2-D ``points [N, 2]``, coloured by ``labels`` if given, over grey
    ``reference`` points (e.g. the training data) if given."""
    p = _check_points(points)
    fig = _figure(size, size)
    ax = fig.add_subplot(1, 1, 1)
    if reference is not None:
        r = _check_points(reference, "reference")
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8", label="data", rasterized=True)
    if labels is not None:
        lab = _numpy(labels).astype(int).reshape(-1)
        if lab.shape[0] != p.shape[0]:
            raise ValueError(f"got {lab.shape[0]} labels for {p.shape[0]} points")
        for c in np.unique(lab):
            m = lab == c
            ax.scatter(p[m, 0], p[m, 1], s=3, label=f"class {c}", rasterized=True)
        ax.legend(loc="best", fontsize=7, markerscale=3)
    else:
        ax.scatter(p[:, 0], p[:, 1], s=3, c="C0", rasterized=True)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        save_figure(fig, path)
    return fig


def trajectories(
    paths: Tensor | np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    max_paths: int = 200,
    reference: Tensor | np.ndarray | None = None,
    title: str | None = None,
    size: float = 4.0,
) -> Any:
    """Sampling trajectories ``[T, N, 2]`` (grid points x particles x 2): a line per particle
    from its start (light) to its end (dark dot), at most ``max_paths`` of them."""
    tr = _numpy(paths)
    if tr.ndim != 3 or tr.shape[2] != 2 or tr.shape[0] < 2:
        raise ValueError(f"paths must have shape [T >= 2, N, 2], got {tuple(tr.shape)}")
    fig = _figure(size, size)
    ax = fig.add_subplot(1, 1, 1)
    if reference is not None:
        r = _check_points(reference, "reference")
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.85", rasterized=True)
    k = min(max_paths, tr.shape[1])
    for j in range(k):
        ax.plot(tr[:, j, 0], tr[:, j, 1], lw=0.5, alpha=0.5, c="C0")
    ax.scatter(tr[0, :k, 0], tr[0, :k, 1], s=3, c="C1", label="start")
    ax.scatter(tr[-1, :k, 0], tr[-1, :k, 1], s=4, c="k", label="end")
    ax.legend(loc="best", fontsize=7, markerscale=3)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        save_figure(fig, path)
    return fig

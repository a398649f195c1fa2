"""Tiled generation: a window-sized denoiser run on overlapping windows of a larger canvas,
its predictions fused per step (MultiDiffusion, Bar-Tal et al. 2023, "MultiDiffusion: fusing
diffusion paths for controlled image generation", eq. 5), with wrap-around windows for
panoramas and randomly shifted non-overlapping tiles (Any-Size-Diffusion's Fast Seamless Tiled
Diffusion, Zheng et al. 2024).

MultiDiffusion fuses the windows' next states by a weighted least-squares average,
``Psi(J) = sum_i F_i^-1(W_i * Phi(F_i(J))) / sum_i F_i^-1(W_i)``. Every reverie sampler's step
is affine in the data prediction at fixed ``x, t``, so fusing the windows' data predictions
the same way is that average for first-order steps and makes the fusion a denoiser
combinator: ``reverie.sample(tiled(den, 64, 16), noise_of_any_size, ...)`` with any sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase

__all__ = ["Tiled", "tiled", "WEIGHTS", "rotating", "Rotating"]

#: Blending profiles along one axis of a window of ``n`` entries (combined as outer products).
WEIGHTS = {
    "uniform": lambda n: torch.ones(n, dtype=torch.float64),  # MultiDiffusion
    # Mixture of Diffusers (Jimenez 2023): a Gaussian bump, std a quarter of the window
    "gaussian": lambda n: torch.exp(-0.5 * ((torch.arange(n) - (n - 1) / 2) / (n / 4)) ** 2),
    # a pyramid falling linearly to 1/ceil(n/2) at the edges
    "linear": lambda n: torch.minimum(torch.arange(1, n + 1), torch.arange(n, 0, -1)).double(),
}


def _per_axis(name: str, value: int | Sequence[int], k: int | None = None) -> tuple[int, ...]:
    vals = (value,) if isinstance(value, int) else tuple(value)
    if k is not None and len(vals) == 1:
        vals = vals * k
    for v in vals:
        integer(name, v, 0)
    if k is not None and len(vals) != k:
        raise ValueError(f"{name} must have one entry per tiled axis ({k}), got {list(vals)}")
    return vals


def window_starts(size: int, tile: int, stride: int, wrap: bool, offset: int = 0) -> list[int]:
    """Start indices of the windows along one axis of ``size`` entries. Without ``wrap`` the
    windows cover ``[0, size)``: starts ``0, offset + k stride, ...``, plus a last window flush
    with the end; with ``wrap`` they step around the ring from ``offset``."""
    if wrap:
        return [(offset + k * stride) % size for k in range(math.ceil(size / stride))]
    starts = {0, size - tile} | set(range(offset, size - tile + 1, stride))
    return sorted(starts)


class Tiled(DenoiserBase):
    """The fused denoiser of :func:`tiled` (MultiDiffusion, Bar-Tal et al. 2023, eq. 5)."""

    def __init__(self, denoiser: DenoiserBase, tile: int | Sequence[int],
                 overlap: int | Sequence[int] = 0, *, weights: str = "uniform",
                 wrap: bool | Sequence[bool] = False, shift: bool = False,
                 generator: torch.Generator | None = None, max_batch: int | None = None):
        if not isinstance(denoiser, DenoiserBase):
            raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
        self.tile = _per_axis("tile", tile)
        k = len(self.tile)
        if min(self.tile) < 1:
            raise ValueError(f"tile must be positive, got {list(self.tile)}")
        self.overlap = _per_axis("overlap", overlap, k)
        for t, o in zip(self.tile, self.overlap):
            if o >= t:
                raise ValueError(f"overlap must be smaller than the tile (it cannot fit): "
                                 f"tile {list(self.tile)}, overlap {list(self.overlap)}")
        if weights not in WEIGHTS:
            raise ValueError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
        self.wrap = (wrap,) * k if isinstance(wrap, bool) else tuple(bool(w) for w in wrap)
        if len(self.wrap) != k:
            raise ValueError(f"wrap must have one entry per tiled axis ({k}), got {list(wrap)}")
        self.denoiser, self.process = denoiser, denoiser.process
        self.weights, self.shift, self.generator = weights, bool(shift), generator
        self.stride = tuple(t - o for t, o in zip(self.tile, self.overlap))
        self.max_batch = max_batch
        self.calls = 0  # windows evaluated per sample, summed over calls (the cost)

    def starts(self, canvas: Sequence[int], offset: Sequence[int] | None = None) -> list[list[int]]:
        """The window starts along each tiled axis of a ``canvas`` (its trailing shape)."""
        canvas = tuple(canvas)
        if len(canvas) != len(self.tile):
            raise ValueError(f"a canvas with {len(self.tile)} tiled axes expected, got "
                             f"{list(canvas)}")
        for n, t in zip(canvas, self.tile):
            if t > n:
                raise ValueError(f"the tile {list(self.tile)} is larger than the output "
                                 f"{list(canvas)}")
        off = offset or (0,) * len(canvas)
        return [window_starts(n, t, s, w, o) for n, t, s, w, o in
                zip(canvas, self.tile, self.stride, self.wrap, off)]

    def _index(self, canvas: tuple[int, ...], starts: list[list[int]]) -> Tensor:
        """Flat canvas indices of every window, ``[windows, prod(tile)]`` (row-major)."""
        axes = []
        for n, t, s in zip(canvas, self.tile, starts):
            axes.append((torch.tensor(s)[:, None] + torch.arange(t)) % n)  # [n_windows_a, t]
        idx = torch.zeros((1, 1), dtype=torch.long)
        for n, ax in zip(canvas, axes):
            # (windows so far) x (windows on this axis), (entries so far) x (entries on this axis)
            idx = idx[:, None, :, None] * n + ax[None, :, None, :]
            idx = idx.reshape(idx.shape[0] * idx.shape[1], -1)
        return idx

    def _blend(self) -> Tensor:
        w = torch.ones((), dtype=torch.float64)
        for t in self.tile:
            w = w[..., None] * WEIGHTS[self.weights](t).to(torch.float64)
        return w.reshape(-1)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        k = len(self.tile)
        if x.ndim < k + 1:
            raise ValueError(f"x must be [batch, ..., {k} tiled axes], got {list(x.shape)}")
        t = time_tensor(t, x)
        lead, canvas = x.shape[:-k], tuple(x.shape[-k:])
        offset = None
        if self.shift:  # a random offset of the tile grid per call (FSTD's implicit overlap)
            offset = [int(torch.randint(s, (1,), generator=self.generator)) for s in self.stride]
        idx = self._index(canvas, self.starts(canvas, offset)).to(x.device)
        nw, b = idx.shape[0], x.shape[0]
        xf = x.reshape(*lead, -1)
        w = self._blend().to(x)
        acc, norm = torch.zeros_like(xf), torch.zeros(xf.shape[-1], dtype=x.dtype, device=x.device)
        chunk = nw if self.max_batch is None else max(1, self.max_batch // b)
        for lo in range(0, nw, chunk):
            sub = idx[lo: lo + chunk]
            m = sub.shape[0]
            win = xf[..., sub]  # [*lead, m, P]
            win = win.movedim(-2, 0).reshape(m * b, *lead[1:], *self.tile)
            cond_m = {key: _repeat(v, m, b) for key, v in cond.items()}
            pred = self.denoiser(win, t.repeat(m), **cond_m)
            pred = pred.reshape(m, *lead, -1).movedim(0, -2)  # [*lead, m, P]
            acc.index_add_(-1, sub.reshape(-1), (pred * w).reshape(*lead, -1))
            norm.index_add_(0, sub.reshape(-1), w.repeat(m))
        self.calls += nw
        return (acc / norm).reshape(x.shape)

    def __repr__(self) -> str:
        return (f"Tiled(tile={list(self.tile)}, overlap={list(self.overlap)}, "
                f"weights={self.weights!r}, wrap={list(self.wrap)}, shift={self.shift}, "
                f"{self.denoiser!r})")


def _repeat(v: Any, m: int, b: int) -> Any:
    """A conditioning tensor with the batch first, repeated once per window."""
    if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == b:
        return v.repeat(m, *(1,) * (v.ndim - 1))
    return v


def tiled(denoiser: DenoiserBase, tile: int | Sequence[int], overlap: int | Sequence[int] = 0,
          *, weights: str = "uniform", wrap: bool | Sequence[bool] = False, shift: bool = False,
          generator: torch.Generator | None = None, max_batch: int | None = None) -> Tiled:
    """Run ``denoiser`` on windows of ``tile`` (the trailing axes of the canvas) overlapping by
    ``overlap`` and fuse their data predictions per entry with the ``weights`` profile
    (``"uniform"``: MultiDiffusion; ``"gaussian"``, ``"linear"``: smoother blends). The
    canvas is whatever ``x`` the sampler passes, of any size at least the tile.

    ``wrap=True`` (per axis) lets windows run across the edge (a 360-degree panorama: the
    canvas is a ring). ``shift=True`` draws a random offset of the window grid at every call
    from ``generator``; with ``overlap=0`` that is the implicit overlap of Any-Size-Diffusion's
    Fast Seamless Tiled Diffusion (no window overlaps, the seams move every step), and with
    ``wrap`` it is PanoDiffusion's per-step rotation of the panorama. ``max_batch`` bounds the
    windows x samples of one model call. Raises ``ValueError`` when the tile is larger than
    the canvas or an overlap does not fit in the tile."""
    return Tiled(denoiser, tile, overlap, weights=weights, wrap=wrap, shift=shift,
                 generator=generator, max_batch=max_batch)


class Rotating(DenoiserBase):
    """The denoiser of :func:`rotating`."""

    def __init__(self, denoiser: DenoiserBase, step: int | Sequence[int], dims: Sequence[int]):
        self.denoiser, self.process = denoiser, denoiser.process
        self.step = _per_axis("step", step, len(dims))
        self.dims = tuple(dims)
        self.calls = 0

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        shifts = tuple(s * self.calls % x.shape[d] for s, d in zip(self.step, self.dims))
        self.calls += 1
        out = self.denoiser(torch.roll(x, shifts, self.dims), t, **cond)
        return torch.roll(out, tuple(-s for s in shifts), self.dims)


def rotating(denoiser: DenoiserBase, step: int | Sequence[int], dims: Sequence[int] = (-1,)
             ) -> Rotating:
    """PanoDiffusion's progressive camera rotation (Wu et al. 2024, sec. 3.3): at the ``k``-th
    call the panorama is rolled by ``k * step`` along ``dims`` before the model sees it and
    rolled back after, so the model's left-right seam lands somewhere else at every step and
    the two ends of the panorama are denoised together."""
    return Rotating(denoiser, step, dims)

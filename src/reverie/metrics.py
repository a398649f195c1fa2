"""Distances between sample sets and exact distributions (used by tests and benchmarks), and
reference image metrics (:func:`ssim`; PSNR is :func:`reverie.inverse.psnr`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._random import Generators

__all__ = [
    "sliced_wasserstein", "SlicedWasserstein", "mode_weights", "mode_weight_error",
    "sliced_wasserstein_floor", "ssim",
]


def _quantiles(v: Tensor, n: int) -> Tensor:
    """``n`` evenly spaced empirical quantiles of each column of ``v`` (sorted, interpolated)."""
    v = v.sort(dim=0).values
    if v.shape[0] == n:
        return v
    pos = (torch.arange(n, dtype=v.dtype) + 0.5) / n * v.shape[0] - 0.5
    pos = pos.clamp(0, v.shape[0] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=v.shape[0] - 1)
    w = (pos - lo).unsqueeze(1)
    return (1 - w) * v[lo] + w * v[hi]


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int = 256, generator: Generators = None, p: int = 2
) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(E_u W2^2(u.x, u.y))`` over random unit directions
    ``u`` (Rabin et al. 2011), between two sample sets ``[n, D]`` and ``[m, D]``.

    ``p = 1`` gives the mean over directions of the 1-Wasserstein distance ``E_u W1(u.x, u.y)``
    (the convention of the MCGdiff Gaussian-mixture benchmark, Cardoso et al. 2024)."""
    return SlicedWasserstein(y, projections, generator, p)(x)


class SlicedWasserstein:
    """:func:`sliced_wasserstein` to a fixed reference set ``y``: the directions and the sorted
    projections of ``y`` are computed once, so comparing many sample sets with one large
    reference costs one sort of each sample set. ``SlicedWasserstein(y, ...)(x)`` equals
    ``sliced_wasserstein(x, y, ...)`` with the generator in the same state."""

    def __init__(
        self, y: Tensor, projections: int = 256, generator: Generators = None, p: int = 2
    ) -> None:
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p}")
        self.y = y.reshape(y.shape[0], -1).to(torch.float64)
        g = generator if isinstance(generator, torch.Generator) else None
        u = torch.randn(self.y.shape[1], projections, generator=g, dtype=torch.float64)
        self.u, self.p = u / u.norm(dim=0, keepdim=True), p
        self._sorted = (self.y @ self.u).sort(dim=0).values
        self._cache: dict[int, Tensor] = {}

    def _reference(self, n: int) -> Tensor:
        if n not in self._cache:
            self._cache[n] = _quantiles(self._sorted, n)
        return self._cache[n]

    def __call__(self, x: Tensor) -> float:
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.y.shape[1]:
            raise ValueError(f"dimensions differ: {x.shape[1]} vs {self.y.shape[1]}")
        n = max(x.shape[0], self.y.shape[0])
        px, py = _quantiles(x @ self.u, n), self._reference(n)
        if self.p == 1:
            return float((px - py).abs().mean())
        return math.sqrt(float(((px - py) ** 2).mean()))


def sliced_wasserstein_floor(
    sampler, n: int, repeats: int = 5, projections: int = 256, generator: Generators = None
) -> float:
    """Mean sliced-W2 between two independent exact sample sets of size ``n``: the sampling
    noise floor against which a method's distance is judged. ``sampler(n) -> [n, D]``."""
    vals = [
        sliced_wasserstein(sampler(n), sampler(n), projections, generator) for _ in range(repeats)
    ]
    return sum(vals) / len(vals)


def mode_weights(x: Tensor, mixture) -> Tensor:
    """Fraction of samples assigned to each mixture component (most probable component)."""
    comp = mixture.classify(x.reshape(x.shape[0], -1))
    return torch.bincount(comp, minlength=mixture.n_components).to(torch.float64) / x.shape[0]


def mode_weight_error(x: Tensor, mixture) -> float:
    """Total variation between the empirical mode weights and the exact ones (well-separated
    modes: the assignment by most probable component is then exact up to overlap)."""
    return 0.5 * float((mode_weights(x, mixture) - mixture.weights).abs().sum())


def ssim(
    x: Tensor, ref: Tensor, data_range: float = 2.0, sigma: float = 1.5,
    kernel_size: int | None = None, k1: float = 0.01, k2: float = 0.03,
    return_map: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-sample structural similarity of images ``x`` and ``ref`` ``[B, C, H, W]`` (Wang,
    Bovik, Sheikh & Simoncelli, IEEE TIP 2004, eq. 13), in torchmetrics' convention: local
    statistics under a Gaussian window of std ``sigma`` (``2 int(3.5 sigma + 0.5) + 1`` taps),
    or a uniform ``kernel_size`` window when ``kernel_size`` is given, on reflect-padded images;
    the SSIM map is averaged over channels and pixels. ``data_range`` is the value range
    (2 for images in [-1, 1]). With ``return_map`` also the map ``[B, C, H, W]``."""
    if not isinstance(x, Tensor) or not isinstance(ref, Tensor) or x.shape != ref.shape:
        got = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in (x, ref)]
        raise ValueError(f"ssim needs two image tensors of one shape [B, C, H, W], got {got}")
    if x.ndim != 4:
        raise ValueError(f"ssim needs images [B, C, H, W], got shape {tuple(x.shape)}")
    if not data_range > 0 or not sigma > 0:
        raise ValueError(f"data_range and sigma must be > 0, got {data_range}, {sigma}")
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    c = x.shape[1]
    if kernel_size is None:  # Gaussian window
        size = 2 * int(3.5 * sigma + 0.5) + 1
        r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-0.5 * (r / sigma) ** 2)
        w = g[:, None] * g[None, :]
    else:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        size, w = kernel_size, torch.ones(kernel_size, kernel_size, dtype=torch.float64)
    if size // 2 >= min(x.shape[-2:]):
        raise ValueError(f"a window of {size} taps needs images larger than {size // 2} pixels "
                         f"(reflect padding), got {tuple(x.shape[-2:])}; pass a smaller sigma")
    w = (w / w.sum()).expand(c, 1, size, size)

    def local_mean(v: Tensor) -> Tensor:  # window average around each pixel
        p = size // 2
        v = torch.nn.functional.pad(v, (p, p, p, p), mode="reflect")
        return torch.nn.functional.conv2d(v, w, groups=c)

    mx, mr = local_mean(x), local_mean(ref)
    vx = (local_mean(x * x) - mx**2).clamp(min=0)  # local variances and covariance
    vr = (local_mean(ref * ref) - mr**2).clamp(min=0)
    cov = local_mean(x * ref) - mx * mr
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = (2 * mx * mr + c1) * (2 * cov + c2) / ((mx**2 + mr**2 + c1) * (vx + vr + c2))
    score = smap.reshape(x.shape[0], -1).mean(1)
    return (score, smap) if return_map else score

"""Pixel-level metric depth with ray conditioning: GRIN (Guizilini et al. 2024, "GRIN:
Zero-Shot Metric Depth with Pixel-Level Diffusion") in miniature, on scenes with an exact law.

GRIN's diffusion runs on *unstructured sets of pixels* (trained on the sparse pixels that have
depth labels, not on dense maps) and conditions every pixel on a 3-D geometric positional
encoding, the camera ray through it from the intrinsics: that is what makes the predicted depth
*metric* across cameras. Here:

* :func:`rays` -- the ray ``((u - cx) / fx, (v - cy) / fy, 1)`` of pixels ``(u, v)`` under
  intrinsics ``(fx, fy, cx, cy)``;
* :class:`PlaneScenes` -- ground-plane scenes: a plane ``n . X = h`` in camera coordinates has
  inverse depth ``w = 1 / Z = a . r`` along the ray ``r`` (``a = n / h``: its normal over the
  camera height), so with ``a ~ N(m, S)`` the inverse depths at *any* set of pixels are jointly
  Gaussian, ``N(R m, R S R^T + noise^2 I)`` (``R`` the rays). :meth:`PlaneScenes.denoiser` is
  the exact pixel-set denoiser for given rays (any number of pixels, any camera);

Sampling the inverse depths at a set of query pixels from noise with this denoiser is GRIN's
zero-shot metric depth in the exact case: the depth law depends on the intrinsics only through
the rays. Not implemented: image features (GRIN's global and local conditioning on a vision
backbone), the learned pixel-level network and its training on sparse labels, depth
completion from sparse measurements (reverie's posterior samplers on the joint pixel set were
tried and are far from the exact posterior here, which is nearly singular: three plane
parameters and a small noise), real data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference import Gaussian

__all__ = ["rays", "PlaneScenes"]


def rays(pixels: Tensor, intrinsics: Sequence[float]) -> Tensor:
    """Rays ``[N, 3]`` (unit depth) of pixels ``[N, 2]`` (``u, v``) under ``(fx, fy, cx, cy)``."""
    pixels = torch.as_tensor(pixels, dtype=torch.float64)
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        raise ValueError(f"pixels must be [N, 2] (u, v), got {list(pixels.shape)}")
    if len(intrinsics) != 4 or min(intrinsics[0], intrinsics[1]) <= 0:
        raise ValueError(f"intrinsics must be (fx, fy, cx, cy) with positive focal lengths, got "
                         f"{tuple(intrinsics)}")
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return torch.stack([(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy,
                        torch.ones(len(pixels), dtype=torch.float64)], 1)


class PlaneScenes:
    """Planar scenes with inverse-depth coefficients ``a ~ N(mean, cov)`` (``[3]``, ``[3, 3]``)
    and sensor noise ``noise`` on the inverse depth. Default: a ground plane seen by a camera
    about 1.5 m above it (``a_y ~ 1 / 1.5``; ``y`` points down), slightly pitched and rolled;
    pixels below the horizon (``v`` well above ``cy``) see it at a few metres."""

    def __init__(self, mean: Sequence[float] = (0.0, 0.667, 0.02), cov: Tensor | None = None,
                 noise: float = 0.005):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = (torch.diag(torch.tensor([0.03, 0.08, 0.02], dtype=torch.float64)) ** 2
                    if cov is None else torch.as_tensor(cov, dtype=torch.float64))
        if self.mean.shape != (3,) or self.cov.shape != (3, 3):
            raise ValueError(f"mean must be [3] and cov [3, 3], got {list(self.mean.shape)} and "
                             f"{list(self.cov.shape)}")
        self.noise = float(noise)

    def law(self, r: Tensor) -> Gaussian:
        """The exact law of the inverse depths at pixels with rays ``r`` ``[N, 3]``."""
        if r.ndim != 2 or r.shape[1] != 3:
            raise ValueError(f"rays must be [N, 3], got {list(r.shape)}")
        cov = r @ self.cov @ r.T + self.noise**2 * torch.eye(len(r), dtype=torch.float64)
        return Gaussian(r @ self.mean, cov)

    def denoiser(self, process: GaussianProcess, r: Tensor) -> Denoiser:
        """The exact denoiser of the inverse depths ``[B, N]`` at the pixels with rays ``r``."""
        law = self.law(r)

        def fn(x: Tensor, t: Tensor) -> Tensor:
            if x.shape[-1] != len(r):
                raise ValueError(f"the denoiser is for {len(r)} pixels, got x of shape "
                                 f"{list(x.shape)}")
            return law.denoise_at(x, process.alpha(t).flatten()[0],
                                  process.sigma(t).flatten()[0]).to(x)

        return Denoiser(fn, process, "x0")

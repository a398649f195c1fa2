"""Metric depth from sparse points: GRIN in miniature (pixel-level diffusion, unstructured
sparse conditioning, log-depth metric scale) on synthetic scenes with exact depth.

* :func:`render_scenes`, :func:`sparse_points` -- floor / wall / box scenes ray-cast with
  numpy, and random sparse metric-depth points of them.
* :func:`interpolate` -- the baselines (nearest neighbour, linear), :func:`depth_errors`.
* :class:`GRINNet`, :func:`train_grin`, :func:`grin_denoiser`, :func:`predict_depth` -- the
  model and its sampling pipeline; :class:`LogDepth` the metric encoding.
* :class:`PlaneLogDepth` -- an exact Gaussian scene prior with its conditional denoiser.
* :func:`render_photos` -- the same scenes with a grey-level photo each, and
  :mod:`reverie.depth.onestep`: image-conditional (Marigold-style) diffusion for depth, its
  fixed one-step estimate and end-to-end fine-tuning (Garcia Martin et al. 2025).

See docs/depth.md.
"""

from reverie.depth.grin import (
    GRINNet,
    LogDepth,
    PlaneLogDepth,
    grin_denoiser,
    predict_depth,
    train_grin,
)
from reverie.depth.scenes import (
    DEPTH_RANGE,
    depth_errors,
    interpolate,
    pixel_grid,
    render_photos,
    render_scenes,
    sparse_points,
)

__all__ = [
    "DEPTH_RANGE",
    "GRINNet",
    "LogDepth",
    "PlaneLogDepth",
    "depth_errors",
    "grin_denoiser",
    "interpolate",
    "pixel_grid",
    "predict_depth",
    "render_photos",
    "render_scenes",
    "sparse_points",
    "train_grin",
]

"""Point clouds ``[B, N, 3]``.

* :mod:`reverie.pointclouds.data` -- sphere / cube / cylinder surface samples, orthographic
  2-D views, the Chamfer distance.
* :mod:`reverie.pointclouds.bdm` -- Bayesian Diffusion Models' per-step product of a prior's
  and a reconstruction's Gaussian beliefs (exact in the Gaussian case).
* :mod:`reverie.pointclouds.gecco` -- a GECCO-style set-equivariant denoiser conditioned on a
  2-D view at each point's projection.

See docs/graphs.md (point clouds section).
"""

from reverie.pointclouds.bdm import BayesianFusion, GaussianPointPrior, fuse
from reverie.pointclouds.data import PRIMITIVES, chamfer, check_points, primitive, project
from reverie.pointclouds.gecco import PointDenoiserNet, draw, posed_shapes, train_gecco

__all__ = ["PRIMITIVES", "BayesianFusion", "GaussianPointPrior", "PointDenoiserNet", "chamfer",
           "check_points", "draw", "fuse", "posed_shapes", "primitive", "project",
           "train_gecco"]

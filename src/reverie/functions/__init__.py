"""Functions as data: a sample is a set of ``(x, y)`` pairs at arbitrary locations.

* :class:`GP`, :class:`Kernel` -- Gaussian-process data (squared exponential, Matern,
  periodic) with exact samples, posteriors and denoisers at any locations.
* :class:`NDPNet` -- the Neural Diffusion Process network (bi-dimensional attention,
  exchangeable in the points), :func:`train_ndp`, :func:`load_ndp` (the bundled model).
* :func:`condition` -- NDP's conditional sampling given observed points (RePaint-style).
* :func:`gaussian_errors` -- mean / covariance errors of samples against an exact Gaussian law.

See docs/functions.md.
"""

from reverie.functions.conditional import condition
from reverie.functions.gp import GP, KERNELS, GPDenoiser, Kernel
from reverie.functions.metrics import gaussian_errors
from reverie.functions.net import (
    BUNDLED_NDP,
    BiDimensionalAttention,
    NDPNet,
    load_ndp,
    ndp_denoiser,
    save_ndp,
    train_ndp,
)

__all__ = [
    "BUNDLED_NDP",
    "GP",
    "KERNELS",
    "BiDimensionalAttention",
    "GPDenoiser",
    "Kernel",
    "NDPNet",
    "condition",
    "gaussian_errors",
    "load_ndp",
    "ndp_denoiser",
    "save_ndp",
    "train_ndp",
]

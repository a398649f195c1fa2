"""Exact reference models: closed-form answers that samplers and solvers are tested against.

* :class:`GaussianMixture`, :class:`Gaussian` -- continuous data whose denoiser, score and
  density are exact under every Gaussian process.
* :func:`mixture_product`, :func:`mixture_union` -- exact products and unions of mixtures
  (targets for :mod:`reverie.compose`).
"""

from reverie.reference.gaussian import Gaussian, GaussianMixture
from reverie.reference.operations import mixture_product, mixture_union

__all__ = ["Gaussian", "GaussianMixture", "mixture_product", "mixture_union"]

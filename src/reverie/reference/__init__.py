"""Exact reference models: closed-form answers that samplers and solvers are tested against.

* :class:`GaussianMixture`, :class:`Gaussian` -- continuous data whose denoiser, score and
  density are exact under every Gaussian process.
* :func:`linear_gaussian_posterior` -- the exact posterior (again a mixture) of a mixture prior
  under a linear-Gaussian measurement.
"""

from reverie.reference.gaussian import Gaussian, GaussianMixture
from reverie.reference.posterior import linear_gaussian_posterior

__all__ = ["Gaussian", "GaussianMixture", "linear_gaussian_posterior"]

"""Exact reference models: closed-form answers that samplers and solvers are tested against.

* :class:`GaussianMixture`, :class:`Gaussian` -- continuous data whose denoiser, score and
  density are exact under every Gaussian process.
* :class:`TiltedMixture` -- a mixture tilted by a linear reward, ``p(x) exp(r(x)/T)``, with its
  exact soft value ``V_t``.
"""

from reverie.reference.gaussian import Gaussian, GaussianMixture
from reverie.reference.tilted import TiltedMixture

__all__ = ["Gaussian", "GaussianMixture", "TiltedMixture"]

"""Exact reference models: closed-form answers that samplers and solvers are tested against.

* :class:`GaussianMixture`, :class:`Gaussian` -- continuous data whose denoiser, score and
  density are exact under every Gaussian process.
"""

from reverie.reference.gaussian import Gaussian, GaussianMixture

__all__ = ["Gaussian", "GaussianMixture"]
from reverie.reference.sequence import HiddenMarkovModel, MarkovChain  # noqa: E402

__all__ += ["HiddenMarkovModel", "MarkovChain"]

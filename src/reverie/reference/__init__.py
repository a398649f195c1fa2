"""Exact reference models: closed-form answers that samplers and solvers are tested against.

* :class:`GaussianMixture`, :class:`Gaussian` -- continuous data whose denoiser, score and
  density are exact under every Gaussian process.
* :func:`linear_gaussian_posterior` -- the exact posterior (again a mixture) of a mixture prior
  under a linear-Gaussian measurement.
* :class:`TiltedMixture` -- a mixture tilted by a linear reward, ``p(x) exp(r(x)/T)``, with its
  exact soft value ``V_t``.
* :class:`LabelledMixture` -- a mixture with a class per component: exact class-conditional
  laws, time-dependent classifier and CFG targets (for :mod:`reverie.guidance`).
* :func:`mixture_product`, :func:`mixture_union` -- exact products and unions of mixtures
  (targets for :mod:`reverie.compose`).
* :class:`MarkovChain`, :class:`HiddenMarkovModel` -- small sequence models with exact
  conditionals of any masked pattern (token denoisers for :mod:`reverie.discrete`).
"""

from reverie.reference.gaussian import Gaussian, GaussianMixture
from reverie.reference.labelled import LabelledMixture
from reverie.reference.operations import mixture_product, mixture_union
from reverie.reference.posterior import linear_gaussian_posterior
from reverie.reference.sequence import HiddenMarkovModel, MarkovChain
from reverie.reference.tilted import TiltedMixture

__all__ = [
    "Gaussian",
    "GaussianMixture",
    "HiddenMarkovModel",
    "LabelledMixture",
    "MarkovChain",
    "TiltedMixture",
    "linear_gaussian_posterior",
    "mixture_product",
    "mixture_union",
]

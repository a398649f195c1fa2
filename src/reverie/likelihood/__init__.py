"""Likelihoods of data under diffusion models.

* :func:`log_likelihood` -- ``log p_0(x)`` by the probability-flow ODE (Song et al. 2021,
  eq. D.2), exact or Hutchinson divergence, adaptive Runge-Kutta (:mod:`.ode`);
  :func:`bits_per_dim` converts nats to bits per dimension.
* :func:`ito_log_density` -- SuperDiff's Ito density estimator (Skreta et al. 2025): tracks
  ``log q_t(x_t)`` along a reverse-SDE sample without any divergence; :func:`ito_increment`
  is its one-step update.
* :func:`pointwise_information` -- ``log p(x | y) - log p(x)`` from denoising errors (the
  pointwise I-MMSE relation, Kong et al. 2024); :func:`pixel_information` (its per-pixel
  decomposition), :func:`mutual_information`, :func:`mmse_gap`
  (:mod:`.information`).
* :func:`clid_score` -- CLiD membership inference by the conditional likelihood discrepancy
  (Zhai et al. 2024); :func:`roc_auc` (:mod:`.membership`).
"""

from reverie.likelihood.flow import (
    DIVERGENCES,
    PROBES,
    LikelihoodResult,
    bits_per_dim,
    gaussian_prior,
    log_likelihood,
)
from reverie.likelihood.information import (
    MmseGap,
    mmse_gap,
    mutual_information,
    pixel_information,
    pointwise_information,
)
from reverie.likelihood.ito import ItoTrace, ito_increment, ito_log_density
from reverie.likelihood.membership import clid_score, roc_auc
from reverie.likelihood.ode import TABLEAUS, OdeSolution, solve_ode

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "TABLEAUS",
    "ItoTrace",
    "LikelihoodResult",
    "MmseGap",
    "OdeSolution",
    "bits_per_dim",
    "clid_score",
    "gaussian_prior",
    "ito_increment",
    "ito_log_density",
    "log_likelihood",
    "mmse_gap",
    "mutual_information",
    "pixel_information",
    "pointwise_information",
    "roc_auc",
    "solve_ode",
]

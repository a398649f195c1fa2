"""Time series: TSDiff (Kollovieh et al. 2023, "Predict, Refine, Synthesize: Self-Guiding
Diffusion Models for Probabilistic Time Series Forecasting") on series with an exactly known
law. See docs/timeseries.md.

* :mod:`reverie.timeseries.data` -- :class:`SeasonalGP`, seasonal Gaussian-process series with
  exact mean, covariance, denoiser and conditional laws;
* :mod:`reverie.timeseries.tsdiff` -- self-guided :func:`forecast` / :func:`impute` (the
  guidance method ``self_guidance``), :func:`refine` (maximum likelihood and Langevin on the
  denoising-loss energy), base forecasters;
* :mod:`reverie.timeseries.metrics` -- distances of samples to an exact Gaussian law;
* :mod:`reverie.timeseries.dgm2` -- DGM² (Wu et al. 2021) in miniature: forecasting sparse
  multivariate series through a gated dynamic Gaussian mixture of latent clusters, on hidden
  regime series with an exact forecast law;
* :mod:`reverie.timeseries.scotch` -- SCOTCH (Wang et al. 2024) in miniature: structure
  learning with a graph-masked SDE drift and a Bernoulli graph posterior, on linear SDEs with
  a known graph observed at irregular times.
"""

from reverie.timeseries.data import SeasonalGP, check_mask, forecast_mask
from reverie.timeseries.metrics import crps_gaussian, gaussian_errors
from reverie.timeseries.tsdiff import (
    REFINE_METHODS,
    denoising_energy,
    forecast,
    impute,
    linear_forecast,
    refine,
    seasonal_naive,
    self_guided,
)

__all__ = [
    "REFINE_METHODS",
    "SeasonalGP",
    "check_mask",
    "crps_gaussian",
    "denoising_energy",
    "forecast",
    "forecast_mask",
    "gaussian_errors",
    "impute",
    "linear_forecast",
    "refine",
    "seasonal_naive",
    "self_guided",
]

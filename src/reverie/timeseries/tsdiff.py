"""TSDiff's inference on reverie's API (Kollovieh et al. 2023, "Predict, Refine, Synthesize:
Self-Guiding Diffusion Models for Probabilistic Time Series Forecasting").

* **Predict** (sec. 3.1): :func:`forecast` and :func:`impute` sample an *unconditional* model
  guided by the observed entries: the registered guidance method ``self_guidance``
  (:mod:`reverie.guidance.self_guidance`; MSE or quantile likelihood) walked by any sampler.
* **Refine** (sec. 3.2): :func:`refine` improves the forecasts of a base forecaster by treating
  the model's denoising loss as an energy, regularised by the observation:
  ``E(x) = L_denoise(x) + scale * R(x[mask], y)``; ``method="ml"`` descends it (maximum
  likelihood, the paper's most-likely refinement), ``method="langevin"`` samples
  ``exp(-E)`` with the unadjusted Langevin algorithm (energy-based sampling).
  :func:`denoising_energy` is ``L_denoise``: at a fixed time ``t`` the paper's denoising loss
  ``|eps - eps_hat(x_t)|^2``, halved; with ``t=None`` that loss integrated over the log-SNR
  (uniform draws, stratified), the continuous-time diffusion ELBO (Kingma et al. 2021,
  "Variational Diffusion Models"), which for Gaussian data with the exact denoiser is
  ``-log p(x)`` up to a constant, so ML refinement converges to the exact conditional mode,
  and Langevin (as its step size shrinks; the energy's gradient is a Monte Carlo estimate
  whose noise adds to the injected noise) to the exact conditional law of ``y`` observed with
  noise variance ``1 / scale``.
* Baselines: :func:`seasonal_naive` and :func:`linear_forecast` (least-squares AR on the
  context), the base forecasters the paper refines.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive, positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.guidance import Guided, guide
from reverie.guidance.self_guidance import LIKELIHOODS, observation_loss
from reverie.timeseries.data import check_mask

__all__ = [
    "REFINE_METHODS",
    "denoising_energy",
    "forecast",
    "impute",
    "linear_forecast",
    "refine",
    "seasonal_naive",
    "self_guided",
]

#: refinement variants (sec. 3.2): maximum likelihood and energy-based (Langevin) sampling
REFINE_METHODS = ("ml", "langevin")


def _resolve(model: Any) -> tuple[DenoiserBase, int | None]:
    """``(denoiser, series length or None)`` of a denoiser or a loaded model
    (:class:`reverie.hub.LoadedModel`, whose sample shape gives the length)."""
    shape = getattr(model, "sample_shape", None)
    den = getattr(model, "denoiser", model)
    if not isinstance(den, DenoiserBase):
        raise TypeError(f"expected a reverie denoiser or a loaded model, got "
                        f"{type(model).__name__}")
    if shape is not None and len(shape) != 1:
        raise ValueError(f"a series model has samples of shape [L]; this one has "
                         f"{list(shape)}")
    return den, None if shape is None else int(shape[0])


def _series(y: Any, length: int, name: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(y).__name__}")
    if y.shape[-1] != length or y.ndim > 2:
        raise ValueError(f"{name} must have shape [{length}] or [B, {length}], got "
                         f"{tuple(y.shape)}")
    if not bool(torch.isfinite(torch.where(torch.isnan(y), 0.0, y)).all()):
        raise ValueError(f"{name} contains inf")
    return y


def self_guided(
    denoiser: DenoiserBase | Any,
    observation: Tensor,
    mask: Tensor,
    scale: float = 4.0,
    *,
    likelihood: str = "mse",
    quantiles: float | Tensor | None = None,
) -> Guided:
    """The unconditional ``denoiser`` (or loaded model) self-guided towards ``observation``
    (``[L]`` or ``[B, L]``) where ``mask`` (a ``[L]`` bool tensor) is true: the guidance
    method ``self_guidance`` at ``scale`` (:mod:`reverie.guidance.self_guidance`)."""
    den, length = _resolve(denoiser)
    if length is None:
        if not isinstance(observation, Tensor) or observation.ndim not in (1, 2):
            raise ValueError("observation must be a [L] or [B, L] tensor")
        length = int(observation.shape[-1])
    mask = check_mask(mask, length)
    observation = _series(observation, length, "observation")
    if bool(torch.isnan(observation[..., mask]).any()):
        raise ValueError("observation is NaN at an observed entry (mask true); NaN may only "
                         "mark the entries to fill in")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of "
                         f"{', '.join(LIKELIHOODS)}")
    return guide(den, "self_guidance", scale, observation=torch.nan_to_num(observation),
                 mask=mask, likelihood=likelihood, quantiles=quantiles)


def impute(
    denoiser: DenoiserBase | Any,
    observation: Tensor,
    mask: Tensor,
    n: int,
    *,
    scale: float = 4.0,
    likelihood: str = "mse",
    quantiles: float | Tensor | None = None,
    sampler: str = "euler_ancestral",
    steps: int = 200,
    generator: Generators = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Tensor:
    """``n`` samples ``[n, L]`` of the series given its values where ``mask`` is true
    (``observation [L]``), by self-guidance (sec. 3.1) of a denoiser or loaded model walked by
    ``sampler`` (``scale`` 4 and 200 ancestral steps: see docs/timeseries.md). The observed
    entries of the output are the model's, not overwritten: how well they match ``y`` is part
    of the measurement."""
    positive_int("n", n)
    guided = self_guided(denoiser, observation, mask, scale, likelihood=likelihood,
                         quantiles=quantiles)
    from reverie.samplers import sample

    noise = randn((n, mask.numel()), generator, dtype=dtype)
    return sample(guided, noise, sampler=sampler, steps=steps, generator=generator, **options)


def forecast(
    denoiser: DenoiserBase | Any,
    context: Tensor,
    horizon: int,
    n: int,
    **kwargs: Any,
) -> Tensor:
    """``n`` forecasts ``[n, horizon]`` of the ``horizon`` steps after ``context`` by
    self-guidance; the series length is the model's (a loaded model) or
    ``len(context) + horizon`` (a bare denoiser); ``kwargs`` as in :func:`impute`."""
    _, length = _resolve(denoiser)
    positive_int("horizon", horizon)
    if not isinstance(context, Tensor) or context.ndim != 1:
        raise ValueError(f"context must be a 1-D tensor of past values, got "
                         f"{tuple(context.shape) if isinstance(context, Tensor) else context!r}")
    length = length or context.numel() + horizon
    if horizon >= length:
        raise ValueError(f"the forecast horizon ({horizon}) must be shorter than the series "
                         f"the model was trained on ({length} steps)")
    if context.shape != (length - horizon,):
        raise ValueError(f"context must have shape [{length - horizon}] (series length {length} "
                         f"minus horizon {horizon}), got {tuple(context.shape)}")
    mask = torch.arange(length) < length - horizon
    y = torch.cat([context, context.new_zeros(horizon)])
    return impute(denoiser, y, mask, n, **kwargs)[:, length - horizon:]


# ---------------------------------------------------------------------------------------------
# Refine
# ---------------------------------------------------------------------------------------------


def denoising_energy(
    denoiser: DenoiserBase | Any,
    x: Tensor,
    *,
    t: float | None = None,
    draws: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The denoising loss of clean series ``x [B, L]`` as an energy, per row (differentiable
    in ``x``, through the noised input and the target as in the authors' refiner).

    ``t`` a process time: ``(1/2) E_eps |eps - eps_hat(alpha x + sigma eps)|^2`` at ``t``
    (the paper's fixed-time energy). ``t=None``: ``(1/2) int |eps - eps_hat|^2 d lambda`` over
    the process's log-SNR range, estimated with ``draws`` stratified log-SNR draws (the
    diffusion ELBO; ``-log p(x)`` up to a constant for Gaussian data and the exact denoiser).
    ``eps - eps_hat = (alpha / sigma) (D(x_t) - x)`` for the data prediction ``D``."""
    positive_int("draws", draws)
    denoiser, _ = _resolve(denoiser)
    proc = denoiser.process
    b = x.shape[0]
    if t is None:
        lo = float(proc.log_snr(torch.tensor(proc.t_max, dtype=torch.float64)))
        hi = float(proc.log_snr(torch.tensor(proc.t_clean if proc.t_clean > 0 else proc.t_min,
                                             dtype=torch.float64)))
        u = torch.rand(b, 1, generator=generator, dtype=torch.float64)
        lam = lo + (hi - lo) * (torch.arange(draws, dtype=torch.float64)[None] + u) / draws
        times = proc.t_from_log_snr(lam).reshape(-1)  # [B * draws], row-major per series
        weight = 0.5 * (hi - lo)
    else:
        proc.check_time(t)
        times = torch.full((b * draws,), float(t), dtype=torch.float64)
        weight = 0.5
    xs = x.repeat_interleave(draws, 0)
    eps = randn(xs.shape, generator, dtype=x.dtype).to(x.device)
    a = proc.alpha(times).to(x.dtype).to(x.device)[:, None]
    s = proc.sigma(times).to(x.dtype).to(x.device)[:, None]
    d = denoiser(a * xs + s * eps, times.to(x.device))
    err = ((a / s) * (d - xs)) ** 2  # |eps - eps_hat|^2 per entry
    return weight * err.sum(1).reshape(b, draws).mean(1)


def refine(
    denoiser: DenoiserBase | Any,
    init: Tensor,
    observation: Tensor,
    mask: Tensor,
    *,
    method: str = "ml",
    scale: float = 1.0,
    likelihood: str = "mse",
    quantiles: float | Tensor | None = None,
    iterations: int = 20,
    step_size: float = 0.1,
    noise_scale: float = 1.0,
    t: float | None = None,
    draws: int = 16,
    generator: torch.Generator | None = None,
    return_energy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Refine series ``init [B, L]`` (a base forecast, with the observed entries) with the
    diffusion model as prior (sec. 3.2): energy ``E(x) = L_denoise(x) + scale * R(x)`` with
    ``L_denoise`` = :func:`denoising_energy` (``t``, ``draws``) and ``R`` the observation's
    negative log-likelihood on ``mask`` (``likelihood="mse"``: ``|x - y|^2 / 2`` summed, so
    ``y`` counts as observed with noise variance ``1 / scale``; ``"quantile"``: the pinball
    loss at ``quantiles``).

    ``method="ml"``: ``iterations`` gradient steps ``x <- x - step_size grad E`` (maximum
    likelihood; the authors use SGD, lr 0.1). ``method="langevin"``: the unadjusted Langevin
    algorithm ``x <- x - step_size grad E + noise_scale sqrt(2 step_size) z``, which samples
    ``exp(-E)`` as the step size shrinks (``noise_scale=1``; the authors' default is 0.1).
    Returns the refined series, and with ``return_energy`` the energies ``[iterations + 1, B]``
    along the way (each a fresh stochastic estimate)."""
    if method not in REFINE_METHODS:
        raise ValueError(f"unknown refinement method {method!r}; expected one of "
                         f"{', '.join(REFINE_METHODS)}")
    if not isinstance(init, Tensor) or init.ndim != 2:
        raise ValueError(f"init must be a [B, L] tensor of series, got "
                         f"{tuple(init.shape) if isinstance(init, Tensor) else type(init)}")
    denoiser, length = _resolve(denoiser)
    if length is not None and init.shape[1] != length:
        raise ValueError(f"init has series of {init.shape[1]} steps; the model's have {length}")
    mask = check_mask(mask, init.shape[1])
    observation = _series(observation, init.shape[1], "observation")
    positive_int("iterations", iterations)
    positive("step_size", step_size)
    scale = float(scale)
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    reg = observation_loss(observation.to(init.dtype), mask, likelihood, quantiles)

    def energy(x: Tensor) -> Tensor:
        return denoising_energy(denoiser, x, t=t, draws=draws, generator=generator) + scale * reg(x)

    x = init.detach().clone()
    trace = []
    for _ in range(iterations):
        with torch.enable_grad():
            xr = x.requires_grad_(True)
            e = energy(xr)
            (grad,) = torch.autograd.grad(e.sum(), xr)
        trace.append(e.detach())
        x = x.detach() - step_size * grad  # descend the energy
        if method == "langevin":  # ULA: sqrt(2 h) noise makes exp(-E) the stationary law
            z = randn(x.shape, generator, dtype=x.dtype).to(x.device)
            x = x + noise_scale * (2 * step_size) ** 0.5 * z
    if not return_energy:
        return x
    with torch.enable_grad():
        trace.append(energy(x.requires_grad_(True)).detach())
    return x.detach(), torch.stack(trace)


# ---------------------------------------------------------------------------------------------
# Base forecasters
# ---------------------------------------------------------------------------------------------


def seasonal_naive(context: Tensor, horizon: int, period: int) -> Tensor:
    """Repeat the last season: ``x_{T + h} = x_{T + h - period k}`` (``context [..., T]`` ->
    ``[..., horizon]``)."""
    positive_int("horizon", horizon)
    period = positive_int("period", period)
    if context.shape[-1] < period:
        raise ValueError(f"the context ({context.shape[-1]} steps) is shorter than a season "
                         f"({period})")
    last = context[..., context.shape[-1] - period:]
    reps = -(-horizon // period)
    return last.repeat(*([1] * (context.ndim - 1)), reps)[..., :horizon]


def linear_forecast(context: Tensor, horizon: int, lags: int = 12) -> Tensor:
    """A linear autoregression on ``lags`` past values with an intercept, fitted by least
    squares on the context itself and rolled forward ``horizon`` steps (``context [T]``)."""
    positive_int("horizon", horizon)
    lags = positive_int("lags", lags)
    c = context.to(torch.float64).reshape(-1)
    if c.numel() <= 2 * lags:
        raise ValueError(f"a linear forecast with {lags} lags needs more than {2 * lags} "
                         f"context steps, got {c.numel()}")
    rows = torch.stack([c[i:i + lags] for i in range(c.numel() - lags)])
    design = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, c[lags:, None]).solution[:, 0]
    hist = c.tolist()
    for _ in range(horizon):
        hist.append(float(torch.tensor(hist[-lags:], dtype=torch.float64) @ coef[:-1] + coef[-1]))
    return torch.tensor(hist[c.numel():], dtype=context.dtype)

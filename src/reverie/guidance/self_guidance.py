"""TSDiff's observation self-guidance (Kollovieh et al. 2023, "Predict, Refine, Synthesize:
Self-Guiding Diffusion Models for Probabilistic Time Series Forecasting", sec. 3.1).

An *unconditional* model is conditioned at inference on the observed part ``y`` of a series
(the context of a forecast, or the non-missing values) through Bayes' rule on scores,

    grad log p(x_t | y) = grad log p(x_t) + w grad_{x_t} log p(y | x_t),

with ``p(y | x_t)`` approximated through the model's own data prediction ``D(x_t)``:

* ``likelihood="mse"``: ``p(y | x_t) = N(y; D(x_t)[mask], I)`` (the paper's Gaussian), so the
  term is ``-w grad (1/2) |y - D(x_t)[mask]|^2``;
* ``likelihood="quantile"``: the asymmetric Laplace ``p(y | x_t) ∝ exp(-sum_mask
  rho_q(y - D(x_t)))`` with the pinball loss ``rho_q(e) = max(q e, (q - 1) e)``; each row of the
  batch gets its own level ``q`` (``quantiles``; default the authors' ``q_k = k / (B + 1)``,
  ``k = 1..B``), so the batch fans out over the quantiles of the forecast.

The score term moves the data prediction by ``w sigma^2 / alpha`` times it (as every method of
the gradient family): with an eps-model this is the paper's DDIM guidance
``eps - w sqrt(1 - abar) grad log p(y | x_t)``. The authors' code sums ``(y - D)^2`` without
the ``1/2``: its scale ``s`` is ``w = 2 s`` here. ``observation`` is one series (the shape of
a sample, values where ``mask`` is false are ignored) or one per row; ``mask`` is true where
observed, the shape of one sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reverie.guidance import Call, register
from reverie.guidance.gradient import _loss_gradient, _shift

__all__ = ["LIKELIHOODS", "observation_loss", "self_guidance"]

#: the observation likelihoods of self-guidance
LIKELIHOODS = ("mse", "quantile")


def observation_loss(
    observation: Tensor,
    mask: Tensor,
    likelihood: str = "mse",
    quantiles: float | Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """``x0 -> -log p(observation | x0)`` per row (up to a constant) on the entries where
    ``mask`` is true: ``(1/2) |y - x0|^2`` (``"mse"``) or ``sum rho_q(y - x0)``
    (``"quantile"``, levels ``quantiles``: a float, one per row, or ``None`` for
    ``k / (B + 1)``, ``k = 1..B``)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of "
                         f"{', '.join(LIKELIHOODS)}")
    if not isinstance(observation, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("observation and mask must be tensors, got "
                        f"{type(observation).__name__} and {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (true = observed), got dtype {mask.dtype}")
    if observation.shape != mask.shape and observation.shape[1:] != mask.shape:
        raise ValueError(f"observation must have the mask's shape {tuple(mask.shape)} (one "
                         f"series) or [B, {', '.join(map(str, mask.shape))}] (one per row); got "
                         f"{tuple(observation.shape)}")
    if quantiles is not None and likelihood != "quantile":
        raise ValueError("quantiles= is an option of likelihood='quantile'")

    def loss(x0: Tensor) -> Tensor:
        if x0.shape[1:] != mask.shape:
            raise ValueError(f"the mask has the shape {tuple(mask.shape)} of one sample, but "
                             f"the samples have shape {tuple(x0.shape[1:])}")
        y = observation.to(device=x0.device, dtype=x0.dtype)
        if y.shape == mask.shape:
            y = y.expand_as(x0)
        elif y.shape[0] != x0.shape[0]:
            raise ValueError(f"{y.shape[0]} observations for a batch of {x0.shape[0]}")
        m = mask.to(x0.device)
        err = torch.where(m, y - x0, torch.zeros_like(x0)).reshape(x0.shape[0], -1)
        if likelihood == "mse":  # -log N(y; x0[mask], I), up to a constant
            return 0.5 * (err**2).sum(1)
        q = _levels(quantiles, x0)  # [B, 1]
        return torch.maximum(q * err, (q - 1) * err).sum(1)  # pinball loss (asymmetric Laplace)

    return loss


def _levels(quantiles: float | Tensor | None, x0: Tensor) -> Tensor:
    b = x0.shape[0]
    if quantiles is None:  # the authors' levels k / (B + 1), k = 1..B
        q = torch.arange(1, b + 1, dtype=x0.dtype, device=x0.device) / (b + 1)
    else:
        q = torch.as_tensor(quantiles, dtype=x0.dtype).to(x0.device).reshape(-1)
        if q.numel() == 1:
            q = q.expand(b)
        if q.shape != (b,) or not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"quantiles must be one level in (0, 1) or one per row ({b}), got "
                             f"{q.tolist()}")
    return q[:, None]


@register("self_guidance", family="gradient", needs=(),
          options={"observation": None, "mask": None, "likelihood": "mse", "quantiles": None},
          paper="Kollovieh et al. 2023 (TSDiff: Predict, Refine, Synthesize), sec. 3.1",
          description="TSDiff observation self-guidance: condition an unconditional model on "
          "observed entries (observation=, mask= true where observed) through its own data "
          "prediction: score + w grad log p(y | D(x_t)), likelihood 'mse' (Gaussian) or "
          "'quantile' (asymmetric Laplace, one level per row); or a ready loss=")
def self_guidance(call: Call, w: float, observation: Tensor | None, mask: Tensor | None,
                  likelihood: str, quantiles: float | Tensor | None) -> Tensor:
    if observation is None or mask is None:
        if call.guided.loss is None:
            raise ValueError("self_guidance needs observation= (the series) and mask= (true "
                             "where observed), or a ready loss=")
        loss = call.guided.loss
    else:
        loss = observation_loss(observation, mask, likelihood, quantiles)
    if w == 0:
        return call.conditional()
    d, grad = _loss_gradient(call, loss)
    return _shift(call, d, -grad, w)

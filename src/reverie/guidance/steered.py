"""Steered Diffusion (Nair et al. 2023, "Steered Diffusion: a generalized framework for
plug-and-play conditional image synthesis"; their released ``conditional_sample``).

An unconditional model is steered by a loss of its data prediction, ``L(D(x_t))`` (the
energy ``V1`` of the paper: a pretrained inverse model's loss against the condition); several
conditions at once are a weighted sum of losses, :func:`weighted_losses`. Two forms:

* ``steered``: the step ``x_t -> x_{t'}`` is taken with the model, then moved against the
  loss gradient: ``x_{t'} -= w grad_{x_t} L(D(x_t))`` (a step hook; DDPM / DDIM steps, one
  model call per step);
* ``steered_implicit``: the implicit (DDIM) form of the released code, which moves the data
  prediction itself, ``x0 = D(x_t) - w sigma_t grad_{x_t} L(D(x_t))``, and lets any sampler
  take its step with it (the code's step factor ``sqrt(1 - abar)`` is ``sigma_t`` on a VP).

The paper's repeated steps at one time (re-noising ``N`` times per step) are a sampler loop
that reverie's step hooks cannot express; they are not implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import Tensor

from reverie.guidance import Call, register
from reverie.guidance.gradient import _loss_gradient, _rows

__all__ = ["steered", "steered_implicit", "weighted_losses"]


def weighted_losses(losses: Sequence[Callable[[Tensor], Tensor]],
                    weights: Sequence[float] | None = None) -> Callable[[Tensor], Tensor]:
    """Several conditions at once: ``x0 -> sum_i weights[i] losses[i](x0)`` per row (weights 1
    unless given), to pass as ``loss=``."""
    losses = list(losses)
    if not losses or not all(callable(f) for f in losses):
        raise TypeError("losses must be a non-empty sequence of callables x0 -> loss per row")
    weights = [1.0] * len(losses) if weights is None else [float(v) for v in weights]
    if len(weights) != len(losses):
        raise ValueError(f"got {len(weights)} weights for {len(losses)} losses")

    def loss(x0: Tensor) -> Tensor:
        return sum(v * _rows(f(x0), x0, "loss") for v, f in zip(weights, losses))

    return loss


def _steered_hook(guided):
    """After the step from grid index ``i``, subtract ``w grad_{x_t} L`` computed there."""

    def hook(state, schedule):
        last = guided.memory.get("steered_last")
        i = state.i - 1
        if last is None or last[0] != schedule.t[i]:
            return None
        return replace(state, x=state.x - last[1].to(state.x.dtype))

    return hook


@register("steered", family="gradient", needs=("loss",), hook=_steered_hook,
          samplers=("ddpm", "ddim"),
          paper="Nair et al. 2023 (Steered Diffusion: a generalized framework for plug-and-play "
          "conditional image synthesis)",
          description="steered diffusion: after each model step, x_t' -= w grad_x L(D(x_t)) "
          "for a loss of the data prediction (weighted_losses for several conditions; a step "
          "hook, DDPM / DDIM)")
def steered(call: Call, w: float) -> Tensor:
    if w == 0:  # no step for the hook to move (its record is of another time)
        return call.conditional()
    d, grad = _loss_gradient(call, call.guided.loss)
    call.memory["steered_last"] = (float(call.t.reshape(-1)[0]), w * grad)
    return d


@register("steered_implicit", family="gradient", needs=("loss",),
          paper="Nair et al. 2023 (Steered Diffusion), the implicit (DDIM) form of the "
          "released code",
          description="implicit steered diffusion: the data prediction moved against the loss "
          "gradient, D(x) - w sigma_t grad_x L(D(x)); any sampler")
def steered_implicit(call: Call, w: float) -> Tensor:
    if w == 0:
        return call.conditional()
    d, grad = _loss_gradient(call, call.guided.loss)
    _, s = call.coefs()
    return d - (w * s) * grad.to(d.dtype)

"""The gradient family: add ``w`` times a gradient of a log-likelihood to the score.

A score term ``g = grad_x log p(c | x_t)`` moves the data prediction by ``sigma^2 / alpha``
times it (``score = (alpha D - x) / sigma^2``), so every method here returns
``D + w (sigma^2 / alpha) g``; at ``w = 1`` with the exact classifier and the exact denoiser
this is the exact conditional denoiser (Bayes' rule on scores). ``w = 0`` is the plain model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reverie.guidance import Call, register

__all__ = ["classifier", "universal", "reward"]


def _rows(value: Tensor, x: Tensor, what: str) -> Tensor:
    """Check that ``what`` returned one number per row of ``x``."""
    if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"the {what} must return one value per row, shape ({x.shape[0]},); "
                         f"got {shape}")
    return value


def _shift(call: Call, d: Tensor, grad: Tensor, w: float) -> Tensor:
    """``D + w (sigma^2 / alpha) grad``: a score term ``w grad`` as a data prediction. Where
    ``alpha = 0`` (a flow's pure-noise end) a score term has no finite data prediction and the
    plain ``D`` is returned (the guidance acts from the next step on)."""
    a, s = call.coefs()
    if not isinstance(a, float):
        return d + torch.where(a == 0, 0.0, w * s**2 / a.clamp_min(1e-300)) * grad.to(d.dtype)
    if a == 0.0:
        return d
    return d + (w * s**2 / a) * grad.to(d.dtype)


@register("classifier", family="gradient", needs=("classifier",),
          paper="Dhariwal & Nichol 2021 (Diffusion models beat GANs), sec. 4",
          description="classifier guidance with a time-dependent classifier (x, t) -> "
          "log p(c | x_t) per row: score + w grad log p(c | x_t)")
def classifier(call: Call, w: float) -> Tensor:
    d = call.conditional()
    with torch.enable_grad():
        x = call.x.detach().requires_grad_(True)
        logp = _rows(call.guided.classifier(x, call.t), x, "classifier")
        (grad,) = torch.autograd.grad(logp.sum(), x)
    return _shift(call, d, grad, w)


def _loss_gradient(call: Call, loss: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """``(D(x), grad_x loss(D(x)))``, the gradient through the denoiser."""
    with torch.enable_grad():
        x = call.x.detach().requires_grad_(True)
        d = call.guided.denoiser(x, call.t, **call.cond)
        if not d.requires_grad:
            raise ValueError(f"guidance method {call.guided.method.name!r} differentiates "
                             "through the denoiser, but its output carries no gradient (a "
                             "model without autograd support, or one run under no_grad)")
        value = _rows(loss(d), x, "loss")
        (grad,) = torch.autograd.grad(value.sum(), x)
    return d.detach(), grad


def _universal_loss(call: Call) -> Callable[[Tensor], Tensor]:
    guided = call.guided
    if guided.loss is not None:
        return guided.loss
    t_clean = torch.full_like(call.t, float(call.process.t_clean))
    return lambda x0: -guided.classifier(x0, t_clean)  # the classifier on clean data


@register("universal", family="gradient", needs=("loss|classifier",),
          paper="Bansal et al. 2024 (Universal guidance for diffusion models), forward "
          "guidance",
          description="forward universal guidance: score - w grad_x loss(D(x_t)), through the "
          "data prediction; loss= any differentiable x0 -> loss per row, or classifier= "
          "evaluated on clean data (loss = -log p(c | x0))")
def universal(call: Call, w: float) -> Tensor:
    d, grad = _loss_gradient(call, _universal_loss(call))
    return _shift(call, d, -grad, w)


@register("reward", family="gradient", needs=("loss",),
          paper="reward guidance through the data prediction (as in universal guidance; "
          "Bansal et al. 2024)",
          description="ascend a differentiable reward of the data prediction, given as "
          "reward= (x0 -> reward per row): score + w grad_x reward(D(x_t))")
def reward(call: Call, w: float) -> Tensor:
    d, grad = _loss_gradient(call, call.guided.loss)
    return _shift(call, d, -grad, w)

"""Dreamguider (Nair & Patel 2024, "Dreamguider: improved training-free diffusion-based
conditional generation"): loss guidance without backpropagation through the network.

Universal / steered guidance differentiate ``L(D(x_t))`` with respect to ``x_t``, through the
denoiser. Dreamguider takes the gradient with respect to the data prediction only,
``grad_{x0} L(x0)`` at ``x0 = D(x_t)`` (no graph through ``D``: it works with a model run
without autograd), and regulates it by a time-varying factor: here ``sigma_t`` (the step
factor ``sqrt(1 - abar_t)`` of the authors' Steered Diffusion code), so
``x0 = D(x_t) - w sigma_t grad_{x0} L(D(x_t))``: strong while the sample is noisy, vanishing
at the clean end. With ``normalize`` (the paper's gradient-dependent scale, in our reading of
the abstract) the gradient is rescaled per sample to the root-mean-square size of the data
prediction's change it asks for, ``|grad| -> sqrt(D)``, so one ``w`` suits losses of any
size. The paper's augmentation of the loss input (DiffuseAugment, image transforms) is the
loss's business and is not part of the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.guidance import Call, register
from reverie.guidance.gradient import _rows

__all__ = ["dreamguider"]


@register("dreamguider", family="gradient", needs=("loss",), options={"normalize": False},
          paper="Nair & Patel 2024 (Dreamguider: improved training-free diffusion-based "
          "conditional generation)",
          description="loss guidance without backpropagation through the denoiser: "
          "D(x) - w sigma_t grad_x0 L(x0) at x0 = D(x) (a time-varying factor); normalize= "
          "rescales each gradient to unit root-mean-square")
def dreamguider(call: Call, w: float, normalize: bool) -> Tensor:
    d = call.conditional().detach()
    if w == 0:
        return d
    with torch.enable_grad():
        x0 = d.clone().requires_grad_(True)
        value = _rows(call.guided.loss(x0), x0, "loss")
        (grad,) = torch.autograd.grad(value.sum(), x0)
    if normalize:  # unit root-mean-square per sample
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        grad = grad / rms.view(-1, *[1] * (grad.ndim - 1))
    _, s = call.coefs()
    return d - (w * s) * grad.to(d.dtype)

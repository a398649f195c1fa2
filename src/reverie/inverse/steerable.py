"""Steerable conditional diffusion: test-time adaptation of the network to the measurement.

Barbano, Denker, Chung, Roh, Arridge, Maass, Jin & Ye, "Steerable Conditional Diffusion for
Out-of-Distribution Adaptation in Imaging Inverse Problems" (2023). When the measured image lies
outside the prior's training distribution, the denoiser is adapted *during* sampling to the
one measurement ``y``: low-rank adapters (LoRA, Hu et al. 2022) ``W + up @ down`` on the
network's linear layers (``up = 0`` at the start, so sampling starts from the pretrained
network) are trained by a few Adam steps per sampling step on the data consistency of the data
prediction,

    min_{up, down}  1/2 |y - A(D_theta(x_t))|^2,

and the sampler then steps with the adapted prediction made data-consistent as in DDS (Chung,
Lee & Ye 2024, on which the paper builds): ``x0 <- argmin |y - A x|^2 + gamma |x - x0|^2``
(closed form or conjugate gradients; linear operators only), followed by the DDIM step
(``eta``). The adapters persist from step to step. Only ``torch.nn.Linear`` layers get adapters (a
convolution is not adapted; the paper adapts the U-Net's attention and convolutions).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import Denoiser
from reverie.inverse.guidance import Fixed
from reverie.inverse.operators import LinearOperator
from reverie.samplers import SAMPLERS, Schedule, State, resolve_grid

__all__ = ["LoRALinear", "add_lora", "steerable_solve"]


class LoRALinear(torch.nn.Module):
    """``base(x) + (x @ down^T) @ up^T`` with the ``base`` layer frozen; ``up`` starts at 0."""

    def __init__(self, base: torch.nn.Linear, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        std = 1 / math.sqrt(base.in_features)
        down = torch.randn(rank, base.in_features, generator=generator, dtype=kw["dtype"]) * std
        self.down = torch.nn.Parameter(down.to(kw["device"]))
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank, **kw))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.down.T) @ self.up.T


def add_lora(net: torch.nn.Module, rank: int = 4,
             generator: torch.Generator | None = None) -> tuple[torch.nn.Module, list[Tensor]]:
    """A copy of ``net`` with every ``torch.nn.Linear`` wrapped in a :class:`LoRALinear` of
    ``rank``, everything else frozen; returns the copy and the adapter parameters."""
    positive_int("rank", rank)
    net = copy.deepcopy(net).requires_grad_(False)
    params: list[Tensor] = []

    def swap(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                lora = LoRALinear(child, rank, generator)
                setattr(module, name, lora)
                params.extend([lora.down, lora.up])
            else:
                swap(child)

    if isinstance(net, torch.nn.Linear):
        raise TypeError("add_lora needs a network containing linear layers, not one layer")
    swap(net)
    if not params:
        raise ValueError(f"{type(net).__name__} has no torch.nn.Linear layer to adapt")
    return net, params


def steerable_solve(
    denoiser: Denoiser, operator, y: Tensor, *, n: int = 1, steps: int = 50,
    adapt_steps: int = 3, lr: float = 1e-2, rank: int = 4, eta: float = 0.0,
    gamma: float | None = 0.1, shape: tuple[int, ...] | None = None, generator: Generators = None,
) -> Tensor:
    """Steerable conditional diffusion (Barbano et al. 2023; module docstring): ``n`` samples
    for the one measurement ``y`` of ``operator`` (a :class:`~reverie.inverse.LinearOperator`
    or a differentiable function), adapting LoRA adapters of ``rank`` on the network of the
    reverie :class:`~reverie.Denoiser` ``denoiser`` by ``adapt_steps`` Adam steps (``lr``) on
    ``1/2 |y - A(D(x_t))|^2``, then the proximal data step of weight ``gamma`` (``None``: none;
    it needs a linear operator) and the DDIM step (``eta``). ``adapt_steps = 0`` is DDS with
    the pretrained network, which is never modified."""
    if not isinstance(denoiser, Denoiser) or not isinstance(denoiser.fn, torch.nn.Module):
        raise TypeError("steerable_solve adapts the network: pass a reverie.Denoiser whose fn "
                        f"is a torch.nn.Module, got {type(denoiser).__name__}")
    positive_int("n", n)
    positive_int("steps", steps)
    if not isinstance(adapt_steps, int) or adapt_steps < 0:
        raise ValueError(f"adapt_steps must be an integer >= 0, got {adapt_steps!r}")
    forward = getattr(operator, "A", operator)
    if gamma is not None and not isinstance(operator, LinearOperator):
        raise TypeError("the data step (gamma) needs a LinearOperator; pass gamma=None for a "
                        "non-linear operator")
    if shape is None:
        shape = getattr(operator, "in_shape", None)
        if shape is None:
            raise ValueError("a non-linear operator needs shape= (the shape of one sample)")
    g = generator if isinstance(generator, torch.Generator) else None
    net, params = add_lora(denoiser.fn, rank, g)
    adapted = Denoiser(net, denoiser.process, denoiser.prediction, dtype=denoiser.dtype,
                       output_transform=denoiser.output_transform)
    opt = torch.optim.Adam(params, lr=lr)
    proc, ddim = denoiser.process, SAMPLERS["ddim"]
    sch = Schedule.build(proc, resolve_grid(ddim, proc, steps, proc.default_grid))
    dtype = y.dtype
    yb = y.unsqueeze(0).expand(n, *y.shape)
    state = State(sch.sigma[0] * randn((n, *shape), generator, dtype=dtype))
    for i in range(sch.steps):
        t = sch.t[i]
        for _ in range(adapt_steps):  # adapt the network to the measurement
            with torch.enable_grad():
                loss = 0.5 * ((yb - forward(adapted(state.x, t))) ** 2).sum()
                opt.zero_grad()
                loss.backward()
            opt.step()
        with torch.no_grad():
            x0 = adapted(state.x, t)
            if gamma is not None:  # DDS data consistency: (A^T A + gamma I)^-1 proximal step
                x0 = x0 + operator.normal_solve(operator.AT(yb - operator.A(x0)), 1.0, gamma)
            state = ddim.step(Fixed(x0, proc), state, sch, generator=generator, eta=eta)
    return state.x

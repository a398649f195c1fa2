"""CDDB: consistent direct diffusion bridges for inverse problems.

Chung, Kim & Ye, "Direct Diffusion Bridge using Data Consistency for Inverse Problems"
(NeurIPS 2023). A direct diffusion bridge (DDB: I2SB, InDI, BBDM) walks from the degraded image
``x_1 = source`` (e.g. ``A^+ y``) to the clean one with a bridge denoiser ``D(x_t, t, source)``,
but nothing keeps its predictions consistent with the measurement ``y = A x + n``. CDDB
(Alg. 1) corrects each data prediction by one gradient step on ``1/2 |y - A x0|^2`` before the
bridge's posterior step:

    x0_hat = D(x_t, t, source)
    x0_hat <- x0_hat + step_size * A^T (y - A x0_hat)         (data consistency)
    x_s    ~  q(x_s | x_t, x0_hat, source)                      (the bridge step)

Here the bridge is reverie's Brownian bridge (:mod:`reverie.bridge`, BBDM's form of the DDB
family) and the sampler is :func:`reverie.bridge.bridge_sample` with the corrected denoiser.
The correction needs only ``A`` and ``A^T`` (no backpropagation through the network; the
paper's "CDDB-deep" variant is not implemented).
"""

from __future__ import annotations

from torch import Tensor

from reverie._random import Generators
from reverie.bridge import BridgeDenoiser, BrownianBridge, bridge_sample
from reverie.inverse.operators import LinearOperator

__all__ = ["ConsistentBridgeDenoiser", "cddb"]


class ConsistentBridgeDenoiser:
    """``D(x_t, t, source) + step_size * A^T (y - A D(x_t, t, source))``: a bridge denoiser
    with CDDB's data-consistency step (module docstring)."""

    def __init__(self, denoiser: BridgeDenoiser, operator: LinearOperator, y: Tensor,
                 step_size: float):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"CDDB needs a LinearOperator, got {type(operator).__name__}")
        if not step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.denoiser, self.operator, self.y, self.step_size = denoiser, operator, y, step_size

    def __call__(self, x: Tensor, t: Tensor, source: Tensor) -> Tensor:
        x0 = self.denoiser(x, t, source)
        resid = self.y.to(x0.dtype) - self.operator.A(x0)  # y - A x0_hat
        return x0 + self.step_size * self.operator.AT(resid).to(x0.dtype)  # gradient step


def cddb(denoiser: BridgeDenoiser, source: Tensor, bridge: BrownianBridge,
         operator: LinearOperator, y: Tensor, *, steps: int = 100, step_size: float = 1.0,
         eta: float = 1.0, generator: Generators = None) -> Tensor:
    """Consistent direct diffusion bridge (Chung et al. 2023, Alg. 1): bridge from
    ``source [B, ...]`` (the degraded images) to clean images with measurements ``y``
    ``[B, *out_shape]``; ``step_size = 0`` is the uncorrected bridge (DDB)."""
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"CDDB needs a LinearOperator, got {type(operator).__name__}")
    operator.check_input(source, "source")
    want = (source.shape[0], *operator.out_shape)
    if not isinstance(y, Tensor) or tuple(y.shape) != want:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must have shape {want} (batch, *operator.out_shape), got {got}")
    fixed = ConsistentBridgeDenoiser(denoiser, operator, y, step_size)
    return bridge_sample(fixed, source, bridge, steps, eta=eta, generator=generator)

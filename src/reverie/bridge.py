"""Brownian-bridge diffusion between a data point and a given end point.

BBDM (Li et al. 2023, "BBDM: Image-to-image Translation with Brownian Bridge Diffusion
Models"), the process behind EBDM (Lee et al. 2024, "Exemplar-guided Image
Translation with Brownian-bridge Diffusion Models"): the forward process pins both ends, the
target ``x0`` at ``t = 0`` and the source (structure control) ``y`` at ``t = 1``:

    x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps,   m_t = t,
    delta_t = 2 s (m_t - m_t^2)

(``s`` scales the variance; BBDM's default ``s = 1`` has the largest variance ``1/2`` at
``t = 1/2``). Sampling starts *at the source* ``x_1 = y`` -- no noise prior -- and walks back
with the Gaussian posterior ``q(x_s | x_t, x0, y)`` of the bridge with the predicted ``x0``
plugged in (BBDM's sampling algorithm; ``eta`` scales its noise as in DDIM: ``eta = 1`` is the
ancestral posterior, ``eta = 0`` deterministic). A model is a *bridge denoiser*
``D(x_t, t, y) = E[x0 | x_t, y]``; BBDM's network predicts ``x_t - x0`` (its "grad" target
``m_t (y - x0) + sqrt(delta_t) eps``), so ``D = x_t - net``. Training:
:func:`reverie.train.interpolants.bridge_loss`.

EBDM's exemplar conditioning, in miniature: the bridge runs from the structure control ``y``
and the denoiser is *also* conditioned on a style exemplar ``e``, ``D(x_t, t, y, e)``
(``bridge_sample(..., exemplar=e)``); :class:`ExemplarBridgeReference` is exact for Gaussian
targets ``x0 | y, e ~ N(A y + E e + b, S)``, and
:class:`reverie.train.interpolants.ExemplarConditioned` is the network side (a global encoder of
the exemplar whose code is concatenated to the input; EBDM's exemplar network and exemplar
attention over image features are not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn_like
from reverie._tensor import as64, bcast

__all__ = ["BrownianBridge", "ExemplarBridgeReference", "GaussianBridgeReference",
           "bridge_sample"]

BridgeDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, t [B], y) -> x0


class BrownianBridge:
    """The BBDM bridge ``x_t = (1 - t) x0 + t y + sqrt(2 s t (1 - t)) eps``, ``t`` in
    ``[0, 1]`` (module docstring)."""

    def __init__(self, s: float = 1.0):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ValueError(f"the variance scale s must be a positive number, got {s!r}")
        self.s = float(s)

    def m(self, t: float | Tensor) -> Tensor:
        return as64(t).clone()

    def delta(self, t: float | Tensor) -> Tensor:
        """Variance ``delta_t = 2 s (m_t - m_t^2)``."""
        m = self.m(t)
        return 2.0 * self.s * (m - m**2)

    def add_noise(self, x0: Tensor, y: Tensor, eps: Tensor, t: float | Tensor) -> Tensor:
        """``x_t`` given both end points (``t`` a scalar or ``[batch]``)."""
        _check_end(y, x0)
        m = bcast(self.m(t), x0).to(x0.dtype)
        d = bcast(self.delta(t), x0).to(x0.dtype)
        return (1 - m) * x0 + m * y + d.sqrt() * eps

    def posterior_std(self, t: float, s: float) -> float:
        """Std of ``q(x_s | x_t, x0, y)`` for ``s < t``: ``delta_s delta_{t|s} / delta_t`` with
        ``delta_{t|s} = delta_t - delta_s (1 - m_t)^2 / (1 - m_s)^2`` (the bridge's
        transition and the Gaussian conditioning of ``(x_s, x_t)``)."""
        dt, ds = float(self.delta(t)), float(self.delta(s))
        mt, ms = float(self.m(t)), float(self.m(s))
        if ds == 0:
            return 0.0
        if dt == 0:  # t = 1: x_t = y carries no information on x_s beyond (x0, y)
            return math.sqrt(ds)
        d_ts = dt - ds * (1 - mt) ** 2 / (1 - ms) ** 2
        return math.sqrt(max(ds * d_ts / dt, 0.0))

    def __repr__(self) -> str:
        return f"BrownianBridge(s={self.s})"


def _check_end(y: Tensor | None, like: Tensor) -> None:
    if y is None:
        raise ValueError("a Brownian bridge needs its end point y (the source, shaped like the "
                         "samples); got None")
    if not isinstance(y, Tensor) or y.shape != like.shape:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"the end point y must be a tensor of shape {tuple(like.shape)}, "
                         f"got {got}")


def bridge_sample(denoiser: BridgeDenoiser, y: Tensor, bridge: BrownianBridge,
                  steps: int = 100, *, eta: float = 1.0, generator: Generators = None,
                  exemplar: Tensor | None = None) -> Tensor:
    """Translate sources ``y [B, ...]`` into targets: start at ``x_1 = y`` and step down a
    uniform grid with ``x_s = (1 - m_s) x0_hat + m_s y + sqrt(delta_s - c^2) eps_hat + c z``,
    ``c = eta * posterior_std`` (BBDM's sampler in DDIM form; ``eta = 1`` samples the exact
    posterior ``q(x_s | x_t, x0_hat, y)``). ``denoiser(x_t, t [B], y)`` returns ``x0_hat``;
    with an ``exemplar [B, ...]`` (EBDM) it is called ``denoiser(x_t, t, y, exemplar)``."""
    positive_int("steps", steps)
    if y is None:
        raise ValueError("bridge_sample needs the end point y (the sources to translate); "
                         "got None")
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise TypeError("y must be a floating-point tensor, batch first")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if exemplar is not None and (not isinstance(exemplar, Tensor)
                                 or exemplar.shape[0] != y.shape[0]):
        raise ValueError(f"exemplar must be a tensor with one exemplar per source "
                         f"({y.shape[0]}), got {getattr(exemplar, 'shape', type(exemplar))}")
    extra = () if exemplar is None else (exemplar,)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = y.clone()
    for t, s in zip(ts[:-1], ts[1:]):
        x0 = denoiser(x, torch.full((x.shape[0],), t, dtype=x.dtype), y, *extra)
        if s == 0.0:
            return x0  # the clean end: the prediction itself
        mt, dt = float(bridge.m(t)), float(bridge.delta(t))
        ms, ds = float(bridge.m(s)), float(bridge.delta(s))
        # predicted noise of the current point (zero at t = 1, where x = y exactly)
        eps = (x - (1 - mt) * x0 - mt * y) / math.sqrt(dt) if dt > 0 else torch.zeros_like(x)
        c = eta * bridge.posterior_std(t, s)
        x = (1 - ms) * x0 + ms * y + math.sqrt(max(ds - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * randn_like(x, generator)
    return x


@dataclass(frozen=True)
class GaussianBridgeReference:
    """Exact bridge denoiser for Gaussian targets given the source: ``x0 | y ~ N(A y + b, S)``.

    Given ``y``, ``x_t ~ N((1 - m)(A y + b) + m y, (1 - m)^2 S + delta I)`` and
    ``E[x0 | x_t, y] = A y + b + (1 - m) S C^{-1} (x_t - mean)``."""

    bridge: BrownianBridge
    A: Tensor
    b: Tensor
    S: Tensor

    @classmethod
    def build(cls, bridge: BrownianBridge, A, b, S) -> GaussianBridgeReference:
        f = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        return cls(bridge, f(A), f(b), f(S))

    def target_mean(self, y: Tensor) -> Tensor:
        return y.to(torch.float64) @ self.A.T + self.b

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        _check_end(y, x)
        tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        m, d = float(self.bridge.m(tt)), float(self.bridge.delta(tt))
        mu0 = self.target_mean(y)
        eye = torch.eye(self.S.shape[0], dtype=torch.float64)
        cov = (1 - m) ** 2 * self.S + d * eye
        mean = (1 - m) * mu0 + m * y.to(torch.float64)
        if d == 0 and m == 1:  # at the source nothing is known beyond y
            return mu0.to(x.dtype)
        gain = (1 - m) * self.S @ torch.linalg.inv(cov)
        return (mu0 + (x.to(torch.float64) - mean) @ gain.T).to(x.dtype)


@dataclass(frozen=True)
class ExemplarBridgeReference(GaussianBridgeReference):
    """Exact EBDM bridge denoiser for Gaussian targets given the structure control ``y`` *and*
    the style exemplar ``e``: ``x0 | y, e ~ N(A y + E e + b, S)``; called
    ``(x_t, t, y, exemplar)``."""

    E: Tensor | None = None

    @classmethod
    def build(cls, bridge: BrownianBridge, A, b, S, E=None) -> ExemplarBridgeReference:
        f = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        return cls(bridge, f(A), f(b), f(S), f(E))

    def __call__(self, x: Tensor, t: Tensor, y: Tensor, exemplar: Tensor | None = None) -> Tensor:
        if exemplar is None:
            raise ValueError("this bridge denoiser is exemplar-conditioned: pass the exemplar "
                             "(bridge_sample(..., exemplar=e))")
        shifted = ExemplarBridgeReference(self.bridge, self.A, self.b, self.S, None)
        offset = exemplar.to(torch.float64) @ self.E.T                  # E e, per sample
        return _with_offset(shifted, x, t, y, offset)


def _with_offset(ref: GaussianBridgeReference, x: Tensor, t: Tensor, y: Tensor,
                 offset: Tensor) -> Tensor:
    """The Gaussian bridge denoiser with a per-sample target mean ``A y + b + offset``: the
    target mean enters the bridge linearly, so shift ``x_t`` by ``(1 - m_t) offset`` and the
    prediction back by ``offset``."""
    tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
    m = float(ref.bridge.m(tt))
    x_shift = x.to(torch.float64) - (1 - m) * offset
    return (GaussianBridgeReference.__call__(ref, x_shift, t, y).to(torch.float64)
            + offset).to(x.dtype)

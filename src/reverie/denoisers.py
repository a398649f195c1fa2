"""Model adapters: every network becomes one *denoiser* (DESIGN.md, idea 2).

A denoiser maps ``(x_t, t, **cond)`` to the data prediction ``E[x0 | x_t]``; ``eps``,
``score`` and the probability-flow ``velocity`` are derived from it. Samplers only ever call
``denoiser(x, t, **cond)``, so they never branch on what the network predicts.

Prediction types (``x_t = alpha x0 + sigma eps``; ``'`` is d/dt):

* ``eps``: the noise; ``x0 = (x - sigma eps) / alpha``
* ``x0``: the clean data itself
* ``v`` (Salimans & Ho): ``alpha eps - sigma x0``;
  ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``
* ``score``: ``grad log p_t(x) = -eps / sigma``; ``x0 = (x + sigma^2 score) / alpha``
* ``flow``: the velocity ``u = alpha' x0 + sigma' eps``;
  ``x0 = (sigma' x - sigma u) / (sigma' alpha - sigma alpha')``

:class:`Converted` runs a model trained on one process as a denoiser of another (the
interpolant conversion of Kim et al. 2025). Combinators (classifier-free guidance here;
guidance, posterior terms and composition in their modules) take a denoiser and return a
denoiser.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import bcast, time_tensor
from reverie.process import GaussianProcess

__all__ = [
    "PREDICTIONS",
    "DenoiserBase",
    "Denoiser",
    "ClassifierFreeGuidance",
    "Converted",
    "to_x0",
    "from_x0",
]

PREDICTIONS = ("eps", "x0", "v", "score", "flow")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}"
        )


_SCALAR_COEFS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _coefs(process: GaussianProcess, t: Tensor, like: Tensor, derivatives: bool = False) -> tuple:
    """``(alpha, sigma, alpha', sigma')`` at ``t``, broadcastable against ``like`` (the
    derivatives are ``None`` unless asked for).

    Samplers call a denoiser at one time for the whole batch; those coefficients are Python
    floats memoised per process, which keeps the per-step overhead to a few tensor operations.
    """
    if t.ndim == 0 or bool((t == t[0]).all()):
        key = float(t.reshape(-1)[0])
        memo = _SCALAR_COEFS.setdefault(process, {})
        coefs = memo.get(key)
        if coefs is None:
            t64 = torch.tensor(key, dtype=torch.float64)
            fns = (process.alpha, process.sigma, process.d_alpha, process.d_sigma)
            coefs = tuple(float(fn(t64)) for fn in fns)
            if len(memo) > 4096:
                memo.clear()
            memo[key] = coefs
        return coefs
    a, s = (bcast(fn(t), like).to(like.dtype) for fn in (process.alpha, process.sigma))
    if not derivatives:
        return a, s, None, None
    da, ds = (bcast(fn(t), like).to(like.dtype) for fn in (process.d_alpha, process.d_sigma))
    return a, s, da, ds


def to_x0(
    output: Tensor, prediction: str, x: Tensor, t: Tensor, process: GaussianProcess
) -> Tensor:
    """Turn a network ``output`` of the given ``prediction`` type at ``(x, t)`` into ``x0``."""
    _check_prediction(prediction)
    if prediction == "x0":
        return output
    a, s, da, ds = _coefs(process, t, x, derivatives=prediction == "flow")
    if prediction in ("eps", "score") and bool(torch.as_tensor(a == 0).any()):
        raise ValueError(
            f"a {prediction!r} prediction does not determine x0 where alpha(t) = 0 "
            f"(t = {float(t.max())} for {process!r}); start sampling at a smaller t_max"
        )
    if prediction == "eps":
        if isinstance(s, float):
            return torch.sub(x, output, alpha=s).div_(a)
        return (x - s * output) / a
    if prediction == "v":
        return (a * x - s * output) / (a**2 + s**2)
    if prediction == "score":
        return (x + s**2 * output) / a
    return (ds * x - s * output) / (ds * a - s * da)


def from_x0(x0: Tensor, prediction: str, x: Tensor, t: Tensor, process: GaussianProcess) -> Tensor:
    """Inverse of :func:`to_x0`: what a network of this ``prediction`` type would output."""
    _check_prediction(prediction)
    if prediction == "x0":
        return x0
    a, s, da, ds = _coefs(process, t, x, derivatives=prediction == "flow")
    eps = (x - a * x0) / s
    if prediction == "eps":
        return eps
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    return da * x0 + ds * eps



class DenoiserBase(ABC):
    """The interface samplers use: ``__call__`` returns the data prediction.

    Subclasses implement :meth:`__call__`; ``eps``, ``score`` and ``velocity`` follow.
    """

    process: GaussianProcess

    @abstractmethod
    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """``E[x0 | x_t = x]``: the data prediction, in ``x``'s dtype."""

    def eps(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Predicted noise ``(x - alpha x0) / sigma``."""
        t = time_tensor(t, x)
        return from_x0(self(x, t, **cond), "eps", x, t, self.process)

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Score ``grad_x log p_t(x) = -(x - alpha x0) / sigma^2``."""
        t = time_tensor(t, x)
        return from_x0(self(x, t, **cond), "score", x, t, self.process)

    def velocity(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Probability-flow ODE velocity ``dx/dt = alpha' x0 + sigma' eps`` in process time."""
        t = time_tensor(t, x)
        return from_x0(self(x, t, **cond), "flow", x, t, self.process)


class Denoiser(DenoiserBase):
    """Wrap any network ``fn(x, t, **cond)`` that predicts ``eps``, ``x0``, ``v``, ``score`` or
    ``flow`` for the noising ``process``.

    ``fn`` receives ``t`` as a ``[batch]`` tensor in the process's own units (the training-step
    index for :class:`~reverie.process.VP`, sigma for EDM/VE, ``t`` in ``[0, 1]`` for flows).
    The input is cast to ``dtype`` (default: the dtype of ``fn``'s parameters when it is an
    ``nn.Module``) and the output back to the solver's dtype, so a half-precision network runs
    under a float32 or float64 solver state. ``output_transform`` may post-process the raw
    network output (e.g. keep the first channels of a learned-variance model).
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        process: GaussianProcess,
        prediction: str = "eps",
        *,
        dtype: torch.dtype | None = None,
        output_transform: Callable[[Tensor], Tensor] | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"process must be a GaussianProcess, got {type(process).__name__}")
        _check_prediction(prediction)
        if dtype is None and isinstance(fn, nn.Module):
            param = next(iter(fn.parameters()), None)
            dtype = param.dtype if param is not None else None
        self.fn = fn
        self.process = process
        self.prediction = prediction
        self.dtype = dtype
        self.output_transform = output_transform

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        x_in = x if self.dtype is None else x.to(self.dtype)
        t_in = t if self.dtype is None or self.dtype == torch.float64 else t.float()
        out = self.fn(x_in, t_in, **cond)
        if hasattr(out, "sample") and not isinstance(out, Tensor):  # diffusers outputs
            out = out.sample
        if self.output_transform is not None:
            out = self.output_transform(out)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model must return a tensor of shape {tuple(x.shape)}, got {got}")
        return to_x0(out.to(x.dtype), self.prediction, x, t, self.process)

    def __repr__(self) -> str:
        return f"Denoiser(prediction={self.prediction!r}, process={self.process!r})"


def both_branches(
    denoiser: DenoiserBase, uncond: Mapping[str, Any], x: Tensor, t: Tensor, cond: Mapping[str, Any]
) -> tuple[Tensor, Tensor]:
    """``(D(x | cond), D(x | uncond))``: the conditional and unconditional predictions, where
    ``uncond`` maps conditioning keywords to their null values. When every value is a tensor
    with the batch first, both run in one batched call (as diffusers' pipelines do)."""
    keys = set(cond) | set(uncond)
    both = {k: (cond.get(k), uncond.get(k)) for k in keys}
    batchable = all(
        isinstance(c, Tensor)
        and isinstance(u, Tensor)
        and c.shape == u.shape
        and c.ndim > 0
        and c.shape[0] == x.shape[0]
        for c, u in both.values()
    )
    if batchable:
        merged = {k: torch.cat([c, u]) for k, (c, u) in both.items()}
        d_c, d_u = denoiser(torch.cat([x, x]), torch.cat([t, t]), **merged).chunk(2)
        return d_c, d_u
    d_c = denoiser(x, t, **cond)
    return d_c, denoiser(x, t, **{k: u for k, (_, u) in both.items() if u is not None})


class ClassifierFreeGuidance(DenoiserBase):
    """Classifier-free guidance (Ho & Salimans 2022) as a denoiser combinator:
    ``D = D(x | uncond) + scale * (D(x | cond) - D(x | uncond))``.

    The combination is taken on the data prediction, which equals the usual combination of
    eps / v / velocity predictions (all are affine in x0 at fixed ``x, t``). ``scale = 1`` is the
    conditional model, ``scale = 0`` the unconditional one. ``uncond`` maps each conditioning
    keyword to its null value (e.g. ``{"class_labels": torch.full((n,), 10)}``); when every
    conditioning value is a tensor with the batch first, both branches run in one batched call.
    ``interval=(t_lo, t_hi)`` applies guidance only for ``t_lo <= t <= t_hi`` (Kynkaanniemi et
    al. 2024, "Applying guidance in a limited interval"); elsewhere the conditional model is used.
    """

    def __init__(
        self,
        denoiser: DenoiserBase,
        scale: float,
        uncond: Mapping[str, Any],
        *,
        interval: tuple[float, float] | None = None,
    ):
        self.denoiser = denoiser
        self.process = denoiser.process
        self.scale = float(scale)
        self.uncond = dict(uncond)
        self.interval = interval

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        active = self.scale != 1.0
        if self.interval is not None:
            lo, hi = self.interval
            active = active and bool(((t >= lo) & (t <= hi)).all())
        if not active:
            return self.denoiser(x, t, **cond)
        d_c, d_u = both_branches(self.denoiser, self.uncond, x, t, cond)
        return d_u + self.scale * (d_c - d_u)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, {self.denoiser!r})"


class Converted(DenoiserBase):
    """A model of one process as a denoiser of another with the same data: the *interpolant
    conversion* of Kim, Yoon, Hwang & Sung (2025, "Inference-Time Scaling for Flow Models via
    Stochastic Generation and Rollover Budget Forcing", Sec. 3.2; their
    ``compute_velocity_transform_scheduler``), e.g. a rectified-flow model sampled as a VP
    model (``Converted(flow_denoiser, VPLinear())``, the paper's VP-SDE).

    Both processes write ``x_t = alpha(t) (x0 + sigma_ve(t) eps)``, so the state of ``process``
    at ``t`` is the source model's state at the time ``s`` of equal log-SNR, rescaled:
    ``x_s = (alpha_src(s) / alpha(t)) x_t``, and the data prediction is unchanged,
    ``D(x_t, t) = D_src(x_s, s)``. (The paper writes the same change for the velocity,
    ``u_t = (c'/c) x_t + c s' u_src(x_t / c, s)`` with ``c = alpha(t) / alpha_src(s)``; in
    data-prediction terms the derivative terms cancel.) One source call per call."""

    def __init__(self, denoiser: DenoiserBase, process: GaussianProcess):
        if not isinstance(denoiser, DenoiserBase):
            raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"process must be a GaussianProcess, got {type(process).__name__}")
        self.source, self.process = denoiser, process

    def source_time(self, t: float | Tensor) -> Tensor:
        """The source process's time with the same log-SNR as ``process`` at ``t`` (float64)."""
        src = self.source.process
        s = src.t_from_log_snr(self.process.log_snr(t))
        return s.clamp(min(src.t_clean, src.t_max), max(src.t_clean, src.t_max))

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        s = self.source_time(t.to(torch.float64))
        scale = self.source.process.alpha(s) / self.process.alpha(t.to(torch.float64))
        x_src = (bcast(scale, x) * x.to(torch.float64)).to(x.dtype)  # the source's state at s
        return self.source(x_src, s.to(t.dtype), **cond)

    def __repr__(self) -> str:
        return f"Converted({self.source!r} -> {self.process!r})"

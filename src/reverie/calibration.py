"""Calibrating a diffusion model: Pang et al. (NeurIPS 2023), "On calibrating diffusion
probabilistic models" (arXiv:2302.10688).

The data score is a martingale of the reverse process and its expectation under each marginal
vanishes, ``E_{q_t}[grad log q_t(x_t)] = 0``, so the exact noise prediction has mean zero at
every time: ``E_{q_t}[eps*(x_t, t)] = 0``. A trained ``eps_theta`` need not; the calibrated
model subtracts its mean,

    eps_cal(x_t, t) = eps_theta(x_t, t) - eta_t,   eta_t = E_{x0 ~ data, eps}[eps_theta(alpha_t x0
                                                                           + sigma_t eps, t)],

which minimises the score-matching loss over constant shifts (their eq. 10 / Thm. 2) and, in
data prediction, is ``x0_cal = x0_theta + (sigma_t / alpha_t) eta_t``. ``eta_t`` is estimated once
per time from data samples (Monte Carlo over the data and one fixed noise draw per sample, with
that noise as a control variate: ``eta_t = E[eps_theta(x_t, t) - eps]``) and cached.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reverie._random import Generators, randn_like
from reverie.denoisers import DenoiserBase

__all__ = ["Calibrated", "calibrated"]


class Calibrated(DenoiserBase):
    """``denoiser`` with its noise prediction centred at each time (:func:`calibrated`).
    ``calls`` counts the model calls spent on the calibration; ``offsets`` maps each time
    (a float) to its ``eta_t``."""

    def __init__(self, denoiser: DenoiserBase, data: Tensor, *, batch_size: int = 4096,
                 generator: Generators = None, cond: dict[str, Any] | None = None):
        if not isinstance(denoiser, DenoiserBase):
            raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
        if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2:
            got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise ValueError(f"data must be a floating-point tensor of samples (batch first, "
                             f"at least 2 dims), got {got}")
        if data.shape[0] < 2:
            raise ValueError(f"calibration needs at least 2 data samples, got {data.shape[0]}")
        self.inner, self.process, self.data = denoiser, denoiser.process, data
        self.batch_size, self.cond = int(batch_size), dict(cond or {})
        # one noise draw per data sample, fixed: eta_t is the same function of t at every call
        self.noise = randn_like(data, generator)
        self.offsets: dict[float, Tensor] = {}
        self.calls = 0

    def offset(self, t: float) -> Tensor:
        """``eta_t``: the mean of the model's noise prediction over ``q_t`` (cached)."""
        if t not in self.offsets:
            a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
            total = torch.zeros_like(self.data[0])
            for k in range(0, self.data.shape[0], self.batch_size):
                x0, z = self.data[k:k + self.batch_size], self.noise[k:k + self.batch_size]
                x_t = a * x0 + s * z  # x_t ~ q_t
                # E[eps_theta] = E[eps_theta - eps] (E[eps] = 0): the drawn noise as a control
                # variate, exact in expectation, and nearly noiseless at high noise levels
                total = total + (self.inner.eps(x_t, t, **self.cond) - z).sum(0)
                self.calls += 1
            self.offsets[t] = total / self.data.shape[0]
        return self.offsets[t]

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if tuple(x.shape[1:]) != tuple(self.data.shape[1:]):
            raise ValueError(f"calibrated on samples of shape {tuple(self.data.shape[1:])}, got "
                             f"x of shape {tuple(x.shape)}")
        x0 = self.inner(x, t, **cond)
        if isinstance(t, Tensor):
            if t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all()):
                raise ValueError("calibrated denoisers take one time per call (a float or a "
                                 "tensor of equal times), got different times in one batch")
            t = float(t.reshape(-1)[0])
        t = float(t)
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        if a == 0 or s == 0 or not math.isfinite(s / a):  # x0 is not defined by eps there
            return x0
        # x0_cal = (x - sigma (eps - eta)) / alpha = x0 + (sigma / alpha) eta
        return x0 + (s / a) * self.offset(t).to(x0)

    def __repr__(self) -> str:
        return f"Calibrated({self.inner!r}, {self.data.shape[0]} data samples)"


def calibrated(denoiser: DenoiserBase, data: Tensor, *, batch_size: int = 4096,
               generator: Generators = None, cond: dict[str, Any] | None = None) -> Calibrated:
    """The calibrated model of Pang et al. (2023): ``denoiser`` with ``eta_t = E_{q_t}[eps]``,
    estimated from ``data`` (samples of the data distribution, batch first) and one fixed noise
    draw per sample (``generator``), subtracted from its noise prediction at every time. Each
    new time costs ``ceil(len(data) / batch_size)`` model calls once (``.calls``), then it is
    cached; ``cond`` goes to those calls (a conditional model is calibrated per condition).
    An exact model is unchanged up to the Monte-Carlo error ``~ 1 / sqrt(len(data))``."""
    return Calibrated(denoiser, data, batch_size=batch_size, generator=generator, cond=cond)

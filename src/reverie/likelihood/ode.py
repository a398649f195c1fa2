"""Adaptive explicit Runge-Kutta integration with embedded error control.

The probability-flow log-likelihood needs an ODE solver whose error is controlled, not a fixed
grid: :func:`solve_ode` integrates ``dy/dt = f(t, y)`` for a batch state ``y`` of shape
``[batch, n]`` with an embedded Runge-Kutta pair (Hairer, Norsett & Wanner, "Solving Ordinary
Differential Equations I", sec. II.4):

* ``"dopri5"`` -- Dormand & Prince (1980) 5(4), first-same-as-last (6 new evaluations a step);
* ``"bosh3"`` -- Bogacki & Shampine (1989) 3(2), first-same-as-last (3 new evaluations a step).

The step is accepted when the scaled error norm ``err <= 1`` and the next step is
``h * clamp(safety * err^(-1/(q+1)), 0.2, 10)`` with ``q`` the order of the embedded
(lower-order) solution (Hairer et al., eq. II.4.13). The scaled norm is the root mean square of
``e_i / (atol + rtol * max(|y0_i|, |y1_i|))`` per batch element (eq. II.4.11), and the largest
of these over the batch: all samples share one step, and the worst one sets it. The first step
is chosen by Hairer's algorithm (sec. II.4, "Starting step size").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TABLEAUS", "Tableau", "OdeSolution", "solve_ode"]


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an embedded pair: nodes ``c``, matrix ``a`` (lower triangular rows),
    weights ``b`` of the propagated solution (order ``order``) and ``b_err = b - b_embedded``
    (the embedded solution has order ``order - 1``)."""

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is ``f(t + h, y_new)``."""
        return self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0


def _pair(name, order, c, a, b, b_low) -> Tableau:
    return Tableau(name, order, tuple(c), tuple(tuple(r) for r in a), tuple(b),
                   tuple(x - y for x, y in zip(b, b_low)))


#: Embedded pairs by name.
TABLEAUS: dict[str, Tableau] = {
    "dopri5": _pair(
        "dopri5", 5,
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        a=(
            (),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
            (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
        ),
        b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
        b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    ),
    "bosh3": _pair(
        "bosh3", 3,
        c=(0.0, 1 / 2, 3 / 4, 1.0),
        a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0.0),
        b_low=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    ),
}


@dataclass(frozen=True)
class OdeSolution:
    """The state at the end time, the right-hand-side evaluations used (``nfe``), the
    accepted and rejected steps."""

    y: Tensor
    nfe: int
    steps: int
    rejected: int


def batch_max(norms: Tensor) -> float:
    """The largest of the per-row norms: one step size for the whole batch."""
    return float(norms.max())


def _error_norm(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float,
                reduce: Callable[[Tensor], float] = batch_max) -> float:
    """Hairer's scaled RMS norm per batch element (eq. II.4.11), maximised over the batch."""
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    return reduce(((err / scale) ** 2).mean(dim=1).sqrt())


def solve_ode(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    safety: float = 0.9,
    reduce: Callable[[Tensor], float] = batch_max,
) -> OdeSolution:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction) with the embedded
    Runge-Kutta pair ``method`` and error control (Hairer et al. 1993, sec. II.4).

    ``y0`` is ``[batch, n]``; ``f`` takes a Python float time and a ``[batch, n]`` tensor. Raises
    ``ValueError`` for bad arguments and ``RuntimeError`` when ``max_steps`` is exhausted or the
    state becomes non-finite. ``reduce`` turns per-row norms into the batch's one norm (a
    process group's maximum over every rank's rows: reverie.distributed.log_likelihood).
    """
    if method not in TABLEAUS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {', '.join(TABLEAUS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if not isinstance(y0, Tensor) or y0.ndim != 2 or not y0.is_floating_point():
        raise ValueError("y0 must be a floating-point tensor of shape [batch, n]")
    tab = TABLEAUS[method]
    span = float(t1) - float(t0)
    if span == 0:
        return OdeSolution(y0, 0, 0, 0)
    direction = math.copysign(1.0, span)
    t, y = float(t0), y0
    k1 = f(t, y)
    nfe = 1
    if first_step is None:
        h, extra = _initial_step(f, t, y, k1, tab.order, rtol, atol, direction, reduce)
        nfe += extra
    else:
        h = abs(float(first_step))
    h = min(h, abs(span))
    exponent = -1.0 / tab.order  # 1 / (q + 1) with q = order - 1, the embedded order
    steps = rejected = 0
    while direction * (float(t1) - t) > 0:
        if steps + rejected >= max_steps:
            raise RuntimeError(
                f"solve_ode: {max_steps} steps were not enough to reach t={t1} (at t={t:.6g}); "
                f"loosen rtol/atol or raise max_steps"
            )
        last = h >= abs(float(t1) - t) * (1 - 1e-12)
        if last:
            h = abs(float(t1) - t)
        hs = direction * h
        ks = [k1]
        for i in range(1, len(tab.c)):
            yi = y + hs * sum(a * k for a, k in zip(tab.a[i], ks) if a != 0.0)
            ti = float(t1) if (last and tab.c[i] == 1.0) else t + tab.c[i] * hs
            ks.append(f(ti, yi))
            nfe += 1
        y_new = y + hs * sum(b * k for b, k in zip(tab.b, ks) if b != 0.0)
        err = hs * sum(e * k for e, k in zip(tab.b_err, ks) if e != 0.0)
        norm = _error_norm(err, y, y_new, rtol, atol, reduce)
        if not math.isfinite(norm):
            if h < 1e-12 * abs(span):
                raise RuntimeError(f"solve_ode: non-finite state at t={t:.6g}")
            h *= 0.2
            rejected += 1
            continue
        if norm <= 1.0:
            t = float(t1) if last else t + hs
            y = y_new
            steps += 1
            if direction * (float(t1) - t) > 0:
                if tab.fsal:
                    k1 = ks[-1]  # the last stage is f(t + h, y_new)
                else:
                    k1 = f(t, y)
                    nfe += 1
        else:
            rejected += 1
        factor = 10.0 if norm == 0 else min(10.0, max(0.2, safety * norm**exponent))
        if norm > 1.0:
            factor = min(factor, 1.0)
        h = h * factor
    return OdeSolution(y, nfe, steps, rejected)


def _initial_step(f, t, y, f0, order, rtol, atol, direction, reduce=batch_max
                  ) -> tuple[float, int]:
    """Hairer et al. (1993) sec. II.4 starting step: one extra evaluation of ``f``."""
    scale = atol + rtol * y.abs()
    d0 = reduce(((y / scale) ** 2).mean(1).sqrt())
    d1 = reduce(((f0 / scale) ** 2).mean(1).sqrt())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = f(t + direction * h0, y + direction * h0 * f0)
    d2 = reduce((((f1 - f0) / scale) ** 2).mean(1).sqrt()) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1), 1

"""E-TSDM: shared time conditions near ``t = 0``.

Yang et al. (2024), "Eliminating Lipschitz Singularities in Diffusion Models": the noise
prediction ``eps(x, t)`` of a diffusion model has an infinite Lipschitz constant in ``t`` as
``t -> 0`` (``d eps / dt ~ sigma' / sigma`` away from the data), which networks cannot fit and
solvers integrate badly. E-TSDM divides ``[0, t_tilde)`` into ``n`` equal sub-intervals and lets
every ``t`` of a sub-interval share one time condition -- its left end -- so the network is
constant in ``t`` there (the paper uses ``t_tilde = 100`` of 1000 DDPM steps and
``n = 5``). Training and sampling are otherwise unchanged: wrap the network with
:class:`SharedTimeConditions` and train it with :func:`reverie.train.train`.

:func:`time_lipschitz` measures ``|| f(x, t') - f(x, t) || / |t' - t|`` along a time grid (the
paper's Fig. 1 and 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reverie._checks import positive_int

__all__ = ["SharedTimeConditions", "time_lipschitz"]


class SharedTimeConditions(nn.Module):
    """``net(x, c(t), ...)`` with ``c(t) = t_start + k w`` for ``t`` in the ``k``-th of ``n``
    sub-intervals of width ``w = (t_tilde - t_start) / n`` of ``[t_start, t_tilde)``, and
    ``c(t) = t`` above ``t_tilde`` (E-TSDM, Yang et al. 2024). ``t`` is whatever time
    the wrapped network takes (the process time under ``time_input="process"``)."""

    def __init__(self, net: nn.Module, t_tilde: float, n: int, t_start: float = 0.0):
        super().__init__()
        positive_int("n", n)
        if not t_tilde > t_start:
            raise ValueError(f"need t_tilde > t_start, got t_tilde={t_tilde}, t_start={t_start}")
        self.net, self.n = net, n
        self.t_tilde, self.t_start = float(t_tilde), float(t_start)

    def condition(self, t: Tensor) -> Tensor:
        """The shared condition ``c(t)`` (same dtype and shape as ``t``)."""
        width = (self.t_tilde - self.t_start) / self.n
        k = torch.floor((t - self.t_start) / width).clamp(0, self.n - 1)
        return torch.where(t < self.t_tilde, self.t_start + k * width, t).to(t.dtype)

    def forward(self, x: Tensor, t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(x, self.condition(t), *args, **kwargs)


def time_lipschitz(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, ts: Tensor) -> Tensor:
    """``K_i = mean_x || fn(x, t_{i+1}) - fn(x, t_i) || / |t_{i+1} - t_i|`` for consecutive
    times of ``ts`` (one value per interval, ``[len(ts) - 1]``), at fixed points ``x``."""
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}"
        )
    with torch.no_grad():
        outs = [fn(x, torch.full((x.shape[0],), float(t), dtype=x.dtype)) for t in ts]
    diffs = [(b - a).reshape(x.shape[0], -1).norm(dim=1).mean() for a, b in zip(outs, outs[1:])]
    return torch.stack(diffs).to(torch.float64) / (ts[1:] - ts[:-1]).abs().to(torch.float64)

"""Inductive moment matching (IMM; Zhou, Ermon & Song 2025, "Inductive Moment Matching",
the method that Song & Zhou 2025, "Ideas in inference-time scaling can benefit generative
pre-training algorithms", paper 84, put forward as an example): a few-step generator trained
from scratch (no teacher) by matching distributions between times.

The model is a *pushforward* ``f(x_t, s, t)`` from time ``t`` to an earlier ``s <= t``: it should
map the marginal ``q_t`` onto ``q_s``. Here ``f`` is the DDIM interpolation towards a data
prediction ``g_theta(x_t, s, t)`` (their DDIM parameterisation):
``f = alpha_s g + sigma_s (x_t - alpha_t g) / sigma_t``, so ``f(x, t, t) = x``.

* :func:`imm_sample` -- the pushforward sampler (their Algorithm 2): from ``x_T = sigma_T
  noise``, ``x <- f(x, t_{i+1}, t_i)`` along ``T = t_0 > ... > t_N = 0``; any callable
  ``f(x, s, t)`` (``s``, ``t``: ``[B]``), e.g. the exact flow map of a Gaussian.
* :func:`imm_train` -- their Algorithm 1: per group of ``M`` particles one ``(s, r, t)``, with
  ``s < r < t``; ``x_t = alpha_t x + sigma_t eps`` and ``x_r = alpha_r x + sigma_r eps`` from the
  same pairs; the loss is the squared MMD between the particles ``f_theta(x_t, s, t)`` and the
  stop-gradient ``f_theta(x_r, s, r)`` with their Laplace kernel
  ``exp(-|a - b| / (D |c_out(s, t)|))``. ``r`` is ``t`` moved down by ``(eta_max - eta_min) /
  2^k`` in ``eta = sigma / alpha`` (their mapping function), not below ``s``.

Simplifications (stated): the loss weight ``w(s, t)`` is 1 (the paper weights by the
noise schedule), ``t`` and ``s`` are drawn uniformly, and ``k`` is fixed (the paper anneals it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.accelerate.distill import _freeze, _step
from reverie.nets.mlp import MLP, SinusoidalEmbedding
from reverie.process import GaussianProcess, RectifiedFlow

__all__ = ["IMM", "IMMNet", "imm_sample", "imm_train", "imm_times", "laplace_mmd"]


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).reshape(-1, *(1,) * (like.ndim - 1))


def imm_times(process: GaussianProcess, steps: int) -> Tensor:
    """``steps + 1`` times from ``t_max`` to the clean end, uniform in time."""
    positive_int("steps", steps)
    return torch.linspace(float(process.t_max), float(process.t_clean), steps + 1,
                          dtype=torch.float64)


def imm_sample(pushforward: Callable[[Tensor, Tensor, Tensor], Tensor], noise: Tensor,
               steps: int, process: GaussianProcess, times: Tensor | None = None) -> Tensor:
    """IMM's pushforward sampler (Algorithm 2): ``x = sigma(t_0) noise``, then ``x <- f(x,
    t_{i+1}, t_i)`` over ``times`` (default :func:`imm_times`, ``steps`` segments)."""
    ts = imm_times(process, steps) if times is None else times.to(torch.float64)
    if ts.ndim != 1 or len(ts) < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"times must decrease from the noisy end, got {ts.tolist()}")
    x = noise * float(process.sigma(ts[0]))  # x_T, with alpha_T x (mean 0 data) dropped
    b = noise.shape[0]
    with torch.no_grad():
        for t, s in zip(ts[:-1], ts[1:]):
            x = pushforward(x, torch.full((b,), float(s), dtype=torch.float64),
                            torch.full((b,), float(t), dtype=torch.float64))
    return x


class IMMNet(nn.Module):
    """``G(x, s, t)``: reverie's residual :class:`~reverie.nets.mlp.MLP` with a second
    sinusoidal embedding for the target time ``s`` added to its time embedding."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 100.0):
        super().__init__()
        self.mlp = MLP(dim, hidden, depth, time_dim, time_scale)
        self.s_embed = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, hidden),
                                     nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        m = self.mlp
        emb = nn.functional.silu(m.time_embed(t * m.time_scale)
                                 + self.s_embed(s * m.time_scale))
        h = m.inp(x)
        for norm, l1, le, l2 in zip(m.norms, m.lin1, m.emb, m.lin2):  # the MLP's blocks
            h = h + l2(nn.functional.silu(l1(norm(h)) + le(emb)))
        return m.out(nn.functional.silu(m.out_norm(h)))


@dataclass
class IMM:
    """A pushforward model ``f(x_t, s, t)`` (call it) around a network ``G(c_in x, s, t)``
    with EDM-style preconditioning of the data prediction ``g = c_skip x + c_out G`` in alpha /
    sigma form (``sigma_data``), and the DDIM step to ``s``; ``history``: training log."""

    net: nn.Module
    process: GaussianProcess
    sigma_data: float = 0.5
    history: list[dict[str, Any]] = field(default_factory=list)

    def coefs(self, s: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_in, c_skip_f, c_out_f, a_t)``: ``f = c_skip_f x + c_out_f G(c_in x, s, t)``."""
        p, sd2 = self.process, self.sigma_data**2
        a_t, s_t = _col(p.alpha(t), like), _col(p.sigma(t), like)
        a_s, s_s = _col(p.alpha(s), like), _col(p.sigma(s), like)
        norm = torch.sqrt(a_t**2 * sd2 + s_t**2)
        skip, out = a_t * sd2 / norm**2, s_t * self.sigma_data / norm  # g = skip x + out G
        lead = a_s - s_s * a_t / s_t  # f = (s_s / s_t) x + lead g
        return 1 / norm, s_s / s_t + lead * skip, lead * out, a_t

    def __call__(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        c_in, c_skip, c_out, _ = self.coefs(s, t, x)
        return c_skip * x + c_out * self.net(c_in * x, s.to(x.dtype), t.to(x.dtype))

    def sample(self, noise: Tensor, steps: int = 1) -> Tensor:
        """:func:`imm_sample` with this model."""
        self.net.eval()
        return imm_sample(self, noise, steps, self.process)


def laplace_mmd(x: Tensor, y: Tensor, scale: Tensor | float) -> Tensor:
    """Squared MMD (the V-statistic, as IMM computes it) between particle groups ``x``,
    ``y`` ``[G, M, D]`` with the Laplace kernel ``exp(-|a - b| / (D scale))``, per group ``[G]``
    (``scale``: ``[G]`` or a number)."""
    d = x.shape[-1]
    h = torch.as_tensor(scale, dtype=x.dtype).reshape(-1, 1, 1) * d

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).clamp(min=1e-8) / h).mean((-1, -2))

    return k(x, x) + k(y, y) - 2 * k(x, y)


def imm_train(data: Tensor, *, process: GaussianProcess | None = None,
              net: nn.Module | None = None, iters: int = 2000, groups: int = 32,
              particles: int = 8, lr: float = 1e-3, k: int = 8, sigma_data: float = 0.5,
              eps_time: float = 1e-3, seed: int = 0) -> IMM:
    """Train an :class:`IMM` pushforward from scratch on clean ``data`` ``[n, D]`` (their
    Algorithm 1, simplifications in the module docstring): ``iters`` Adam steps on ``groups``
    groups of ``particles`` particles; ``r = max(s, eta^-1(eta(t) - (eta_max - eta_min) /
    2^k))``. Default process: OT flow matching (:class:`reverie.RectifiedFlow`, their choice)."""
    positive_int("iters", iters)
    positive_int("groups", groups)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 2:
        raise ValueError(f"particles must be an int >= 2 (an MMD needs pairs), got {particles!r}")
    if data.ndim != 2:
        raise ValueError(f"data must be [n, D] vectors, got {list(data.shape)}")
    proc = process or RectifiedFlow()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = IMM(net or IMMNet(data.shape[1]), proc, sigma_data)
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    t_hi = float(proc.t_max) - eps_time  # keeps eta finite at the noisy end of OT-FM

    def eta(t: Tensor) -> Tensor:
        return proc.sigma(t) / proc.alpha(t)

    eta_lo, eta_hi = float(eta(torch.tensor(eps_time))), float(eta(torch.tensor(t_hi)))
    step_eta = (eta_hi - eta_lo) / 2**k
    t0, loss_v = time.perf_counter(), float("nan")
    model.net.train()
    for _ in range(iters):
        t = eps_time + (t_hi - eps_time) * torch.rand(groups, generator=gen, dtype=torch.float64)
        s = float(proc.t_clean) + (t - float(proc.t_clean)) * torch.rand(
            groups, generator=gen, dtype=torch.float64)
        # r: t moved down by a constant decrement in eta = sigma / alpha (their mapping)
        r = proc.t_from_log_snr(-2 * torch.log((eta(t) - step_eta).clamp(min=1e-6)))
        r = torch.maximum(s, torch.minimum(r, t))
        idx = torch.randint(0, data.shape[0], (groups * particles,), generator=gen)
        x = data[idx].to(torch.float32)
        z = torch.randn(x.shape, generator=gen)
        rep = lambda v: v.repeat_interleave(particles)  # noqa: E731  one time per group
        ts, ss, rs = rep(t), rep(s), rep(r)
        x_t = _col(proc.alpha(ts), x) * x + _col(proc.sigma(ts), x) * z
        x_r = _col(proc.alpha(rs), x) * x + _col(proc.sigma(rs), x) * z  # the same pairs
        y_t = model(x_t, ss, ts)
        with torch.no_grad():
            y_r = model(x_r, ss, rs)
        scale = model.coefs(ss, ts, x)[2].abs().reshape(groups, particles)[:, 0]
        loss = laplace_mmd(y_t.reshape(groups, particles, -1),
                           y_r.reshape(groups, particles, -1), scale.clamp(min=1e-4)).mean()
        loss_v = _step(opt, loss)
    _freeze(model.net)
    model.history.append({"iters": iters, "groups": groups, "particles": particles, "k": k,
                          "loss": loss_v, "seconds": time.perf_counter() - t0})
    return model


def _register() -> None:
    from reverie.accelerate import register

    register("imm", imm_train, "train", "IMM, Zhou, Ermon & Song 2025 (paper 84's example)",
             "inductive moment matching: a pushforward f(x_t, s, t) trained from scratch by "
             "MMD between particles at t and r; 1, 2, 4 ... steps")


_register()

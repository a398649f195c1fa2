"""Conditional diffusion distillation (CoDi; Mei, Delbracio, Talebi, Tu, Patel & Milanfar 2024,
"Conditional Diffusion Distillation", paper 69), in miniature.

An *unconditional* teacher is turned into a *few-step conditional* student in one stage, from
paired data ``(x0, c)`` (e.g. a clean image and its degraded observation):

* *Adapter* (their parameter-efficient PE-CoDi): the teacher's network stays frozen; the
  student's data prediction is ``f(x_t, c, t) = teacher(x_t, t) + sigma(t) A(x_t, c, t)``,
  ``A`` a small MLP whose last layer starts at zero, so training starts from the teacher's prior
  (ControlNet's zero initialisation).
* *Conditional consistency loss*: on an ``N``-point grid, ``f(x_{t_{n+1}}, c, t_{n+1})`` is
  pulled towards the EMA model's ``f^-(x^_{t_n}, c, t_n)``. The unconditional teacher cannot
  take a PF-ODE step of the *conditional* law, so the paper's step ``z_t -> z^_s`` uses the
  conditional model's own signal prediction with the known forward noise:
  ``z_t = alpha_t x + sigma_t eps``, ``z^_s = alpha_s x^(z_t, c, t) + sigma_s eps`` (here
  ``x^`` is the EMA copy, no gradient).
* *Conditional task loss*: ``lam |f(x_t, c, t) - x0|^2`` on the pairs (the "joint learning" of
  the conditional task and the distillation in a single stage).

Sampling is multistep consistency sampling (Song et al. 2023, Algorithm 1) with the
condition. Ours: the adapter is an
MLP on ``(x_t, c, log SNR)``, the metric squared L2, and the weighting ``lam`` is a single
constant; the paper's latent-diffusion / ControlNet specifics are not reproduced.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reverie.accelerate.distill import _coef, _positive, _step
from reverie.denoisers import DenoiserBase
from reverie.grids import make_grid
from reverie.train.loop import ema_update

__all__ = ["CondStudent", "conditional_distill"]


class _Adapted(nn.Module):
    """``teacher(x, t) + sigma(t) adapter([x, c, log SNR(t)])``: the factor ``sigma(t)`` keeps the
    consistency boundary condition (at ``t_min`` the student is the teacher, ~``x``); the
    adapter's last layer starts at 0."""

    def __init__(self, teacher: DenoiserBase, dim: int, cdim: int, hidden: int):
        super().__init__()
        self.teacher = teacher
        self.net = nn.Sequential(nn.Linear(dim + cdim + 1, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        with torch.no_grad():  # the frozen unconditional backbone
            base = self.teacher(x.double(), t).float()
        proc = self.teacher.process
        lsnr = proc.log_snr(t).float().reshape(-1, 1).clamp(-20, 20) / 10
        c_out = proc.sigma(t).float().reshape(-1, 1)  # ~0 at t_min: f(x, c, t_min) ~ teacher
        return base + c_out * self.net(torch.cat([x.float(), c.float(),
                                                  lsnr.expand(len(x), 1)], 1))


@dataclass
class CondStudent:
    """A conditionally distilled few-step model: ``model(x, t, c)`` (its data prediction),
    ``grid`` (its ``N``-point discretisation, noisy end first) and ``history``."""

    model: _Adapted
    grid: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, noise: Tensor, c: Tensor, steps: int = 1,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples of ``p(x | c)``, one per row of ``noise [n, D]`` and ``c [n, m]``, in ``steps``
        network calls: multistep consistency sampling (Song et al. 2023, Algorithm 1) at
        ``steps`` evenly spread grid times from the noisiest (``t_1`` excluded), at most
        ``N - 1``."""
        n = len(self.grid) - 1
        if _positive("steps", steps) > n:
            raise ValueError(f"this student was trained on {n + 1} points: at most {n} steps; "
                             f"asked for {steps}")
        if c.shape[0] != noise.shape[0]:
            raise ValueError(f"c must hold one condition per noise row ({noise.shape[0]}), "
                             f"got shape {tuple(c.shape)}")
        proc = self.model.teacher.process
        ts = self.grid[torch.linspace(0, n, steps + 1)[:-1].round().long()]
        x0 = torch.zeros_like(noise)
        with torch.no_grad():
            for i, tau in enumerate(ts):  # x_tau = alpha x0 + sigma z (x0 = 0 first: pure noise)
                z = noise if i == 0 else torch.randn(noise.shape, generator=generator,
                                                     dtype=noise.dtype)
                x = float(proc.alpha(tau)) * x0 + float(proc.sigma(tau)) * z
                x0 = self.model(x, tau.reshape(1).expand(len(x)), c).double()
        return x0


def conditional_distill(teacher: DenoiserBase, x0: Tensor, c: Tensor, *, points: int = 18,
                        iters: int = 600, batch: int = 256, lr: float = 2e-3, lam: float = 1.0,
                        ema: float = 0.95, hidden: int = 64, grid: str = "karras",
                        seed: int = 0) -> CondStudent:
    """CoDi (paper 69, module docstring): distil the unconditional ``teacher`` (frozen) and the
    pairs ``x0 [n, D]``, ``c [n, m]`` into a few-step conditional :class:`CondStudent` on a
    ``points``-point ``grid``: ``iters`` Adam steps on ``consistency + lam * task`` loss, EMA
    target with decay ``ema``."""
    if not isinstance(teacher, DenoiserBase):
        raise TypeError(f"teacher must be a reverie denoiser, got {type(teacher).__name__}")
    if x0.ndim != 2 or c.ndim != 2 or len(x0) != len(c):
        raise ValueError("x0 and c must be paired [n, D] and [n, m] tensors, got shapes "
                         f"{tuple(x0.shape)} and {tuple(c.shape)}")
    if _positive("points", points) < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    proc = teacher.process
    g = make_grid(proc, points, grid)[:-1]  # t_N > ... > t_1 (the clean end excluded)
    with torch.random.fork_rng():  # a seeded adapter init, the global RNG untouched
        torch.manual_seed(seed)
        model = _Adapted(teacher, x0.shape[1], c.shape[1], hidden)
    target = copy.deepcopy(model.net)
    ema_model = _Adapted(teacher, x0.shape[1], c.shape[1], hidden)
    ema_model.net = target
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0, loss_v = time.perf_counter(), float("nan")
    for it in range(iters):
        i = torch.randint(0, len(x0), (batch,), generator=gen)
        x, cc = x0[i].float(), c[i].float()
        k = torch.randint(0, len(g) - 1, (batch,), generator=gen)
        t_hi, t_lo = g[k], g[k + 1]  # t_{n+1} > t_n
        a, s = _coef(proc, t_hi, x)
        eps = torch.randn(x.shape, generator=gen)
        x_hi = a * x + s * eps  # z_t = alpha_t x + sigma_t eps
        with torch.no_grad():  # z^_s = alpha_s x^(z_t, c, t) + sigma_s eps (the same eps)
            a_lo, s_lo = _coef(proc, t_lo, x)
            x_lo = a_lo * ema_model(x_hi, t_hi, cc) + s_lo * eps
            y = ema_model(x_lo, t_lo, cc)  # f^-(x^_{t_n}, c, t_n)
        pred = model(x_hi, t_hi, cc)
        loss = ((pred - y) ** 2).mean() + lam * ((pred - x) ** 2).mean()
        loss_v = _step(opt, loss)
        with torch.no_grad():
            ema_update(target, model.net, ema, it)
    history = [{"points": points, "iters": iters, "loss": loss_v, "lam": lam,
                "seconds": time.perf_counter() - t0}]
    return CondStudent(ema_model.eval(), g.clone(), history)


def _register() -> None:
    from reverie.accelerate import register

    register("cond_distill", conditional_distill, "distill",
             "CoDi, Mei et al. 2024 (paper 69)",
             "unconditional teacher + paired (x0, c) -> few-step conditional student in one "
             "stage: zero-initialised adapter, conditional consistency + task loss")


_register()

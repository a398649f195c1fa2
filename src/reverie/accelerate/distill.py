"""Few-step students distilled from a teacher denoiser.

* :func:`progressive_distill` -- progressive distillation (Salimans & Ho 2022, Algorithm 2):
  a student initialised from the teacher learns to do in one DDIM step what the teacher does in
  two (target ``x~ = (z'' - (s''/s) z) / (a'' - (s''/s) a)``, eq. 8 in alpha/sigma form for any
  process), then becomes the teacher and the step count halves, from ``base_steps`` down to
  ``steps``.
* :func:`consistency_distill` -- consistency distillation (Song, Dhariwal, Chen & Sutskever
  2023, Algorithm 2): on an ``N``-point discretisation, ``f_theta(x_{t_{n+1}}, t_{n+1})`` is
  pulled towards the EMA network's ``f_theta-(x^_{t_n}, t_n)``, where ``x^_{t_n}`` is one
  teacher ODE step (DDIM; the paper uses Heun) from ``x_{t_{n+1}} = alpha x + sigma z``.
  ``f_theta`` is the student's data prediction; with EDM preconditioning it satisfies the
  boundary condition ``f(x, sigma_min) ~ x`` up to ``c_out(sigma_min) ~ sigma_min`` (the paper
  uses its own ``c_skip``/``c_out`` to make it exact). Sampling is Algorithm 1 (multistep
  consistency sampling).
* :func:`mmd_finetune` -- MMD fine-tuning for a fixed step budget (Aiello, Valsesia & Magli
  2023, "Fast Inference in Denoising Diffusion Models via MMD Finetuning", paper 16): the
  model is fine-tuned so that its ``steps``-step DDIM samples match the data in maximum mean
  discrepancy, back-propagating through the whole sampling chain (their Algorithm 1; Gaussian
  kernels on the raw samples, or on ``features(x)`` -- the paper uses Inception features).

A :class:`Student` samples only with what it was trained for: a progressive student with its
trained step count or a divisor of it (a coarser sub-grid of the same grid), a consistency
student with at most ``N - 1`` steps; more raises a one-line ``ValueError``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.grids import make_grid
from reverie.train.loop import ema_update

__all__ = ["Student", "consistency_distill", "consistency_train", "mmd", "mmd_finetune",
           "progressive_distill"]


def _trainable_copy(teacher: Denoiser) -> tuple[Denoiser, list[nn.Parameter]]:
    if not isinstance(teacher, Denoiser) or not isinstance(teacher.fn, nn.Module):
        raise TypeError("the teacher must be a reverie.Denoiser around an nn.Module (e.g. "
                        f"load('digits').denoiser), got {type(teacher).__name__}")
    student = copy.deepcopy(teacher)
    params = list(student.fn.parameters())
    for p in params:
        p.requires_grad_(True)
    student.fn.train()
    return student, params


def _step(opt: torch.optim.Optimizer, loss: Tensor) -> float:
    """One optimiser step on ``loss``; its value."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _freeze(module: nn.Module) -> None:
    """A trained network, ready to sample: evaluation mode, no gradients."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _coef(process, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    shape = (-1,) + (1,) * (like.ndim - 1)
    return (process.alpha(t).to(like.dtype).reshape(shape),
            process.sigma(t).to(like.dtype).reshape(shape))


def _ddim_to(den, z: Tensor, t: Tensor, t_next: Tensor, **cond: Any) -> Tensor:
    """One DDIM (eta = 0) step of ``den`` from ``t`` to ``t_next`` (per-row times)."""
    a, s = _coef(den.process, t, z)
    a2, s2 = _coef(den.process, t_next, z)
    x0 = den(z, t, **cond)
    return a2 * x0 + s2 * (z - a * x0) / s


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


def _ddim_chain(den, noise: Tensor, g: Tensor, noise_correction: bool = False) -> Tensor:
    """DDIM (eta = 0) from ``sigma(g[0]) noise`` along grid ``g``; differentiable. With
    ``noise_correction`` the first step's noise term is the known starting ``noise`` instead of
    the one implied by the prediction (Imagine Flash's noise correction, our reading)."""
    proc = den.process
    x = noise * float(proc.sigma(g[0]))
    for i in range(len(g) - 1):
        t = torch.full((x.shape[0],), float(g[i]), dtype=torch.float64)
        if i == len(g) - 2:
            return den(x, t) * float(proc.alpha(g[-1]))
        if i == 0 and noise_correction:  # x_{t1} = alpha_1 x0_hat + sigma_1 z, z known
            x = den(x, t) * float(proc.alpha(g[1])) + float(proc.sigma(g[1])) * noise
            continue
        x = _ddim_to(den, x, t, torch.full_like(t, float(g[i + 1])))
    return x


@dataclass
class Student:
    """A distilled few-step model: ``denoiser`` (its data prediction), ``kind``
    (``progressive`` / ``consistency`` / ``mmd`` / ``flash``), ``grid`` (the times it was trained
    on, noisy end first) and ``history`` (one dict per stage: steps, iterations, last loss,
    seconds). ``noise_correction``: a ``flash`` student's first step uses the known noise."""

    denoiser: Denoiser
    kind: str
    grid: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    noise_correction: bool = False

    @property
    def trained_steps(self) -> int:
        """The most network calls it samples with: progressive / mmd, its grid's steps;
        consistency, its discretisation's points."""
        return len(self.grid) - (self.kind != "consistency")

    def sample(self, noise: Tensor, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples from unit ``noise`` in ``steps`` network calls (default: as trained)."""
        n = self.trained_steps
        steps = n if steps is None else _positive("steps", steps)
        ddim = self.kind in ("progressive", "mmd", "flash")
        if steps > n or (ddim and n % steps):
            what = (f"{n} steps (or a divisor of {n})" if ddim
                    else f"at most {n} steps")
            raise ValueError(f"this {self.kind} student was trained for {what}; asked for {steps}")
        proc, den = self.denoiser.process, self.denoiser
        self.denoiser.fn.eval()
        with torch.no_grad():
            if ddim:  # DDIM on the trained grid (or a sub-grid of it)
                return _ddim_chain(den, noise, self.grid[:: n // steps], self.noise_correction)
            # consistency: Algorithm 1 on `steps` of the trained times t_N > ... > t_1: the grid
            # cut into `steps` equal blocks, each block's noisiest time (index floor(k n / steps)),
            # so 2 steps re-noise to a mid-range sigma, not to t_1 ~ sigma_min (which adds nothing)
            idx = torch.arange(steps) * n // steps
            ts = self.grid[idx]
            x = noise * float(proc.sigma(ts[0]))
            x0 = den(x, torch.full((x.shape[0],), float(ts[0]), dtype=torch.float64))
            for tau in ts[1:]:
                z = torch.randn(noise.shape, generator=generator, dtype=noise.dtype)
                x = float(proc.alpha(tau)) * x0 + float(proc.sigma(tau)) * z
                x0 = den(x, torch.full((x.shape[0],), float(tau), dtype=torch.float64))
            return x0


def _batches(data: Tensor, batch: int, gen: torch.Generator):
    while True:
        yield data[torch.randint(0, data.shape[0], (batch,), generator=gen)]


def progressive_distill(teacher: Denoiser, data: Tensor, *, steps: int = 2, base_steps: int = 16,
                        iters: int = 500, batch: int = 256, lr: float = 1e-4,
                        grid: str = "karras", seed: int = 0) -> Student:
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2) from ``base_steps`` DDIM steps
    of ``teacher`` on ``grid`` down to a ``steps``-step student, halving each stage
    (``base_steps / steps`` a power of two); ``iters`` Adam iterations per stage on batches of
    ``data`` (clean samples ``[n, ...]``). Loss: ``max(SNR, 1) |x~ - x_hat|^2`` ("truncated SNR"
    weighting, their Section 4)."""
    _positive("steps", steps)
    _positive("base_steps", base_steps)
    ratio = base_steps // steps
    if base_steps % steps or ratio & (ratio - 1):
        raise ValueError(f"base_steps / steps must be a power of two, got {base_steps} / {steps}")
    _trainable_copy(teacher)  # checks the teacher
    proc = teacher.process
    full = make_grid(proc, base_steps, grid)
    gen = torch.Generator().manual_seed(seed)
    data_iter = _batches(data.to(torch.float32), batch, gen)
    history: list[dict[str, Any]] = []
    current = teacher
    n = base_steps
    while n > steps:
        student, params = _trainable_copy(current)
        opt = torch.optim.Adam(params, lr=lr)
        g_t = full[:: base_steps // n]  # the teacher's n-step grid; the student takes 2 at once
        t0, loss_v = time.perf_counter(), float("nan")
        for _ in range(iters):
            x = next(data_iter)
            i = 2 * torch.randint(0, n // 2, (x.shape[0],), generator=gen)  # student step start
            t, t_mid, t_end = g_t[i], g_t[i + 1], g_t[i + 2]
            a, s = _coef(proc, t, x)
            z = a * x + s * torch.randn(x.shape, generator=gen)
            with torch.no_grad():  # two teacher DDIM steps: z_t -> z_t' -> z_t''
                z2 = _ddim_to(current, _ddim_to(current, z, t, t_mid), t_mid, t_end)
                a2, s2 = _coef(proc, t_end, x)
                target = (z2 - s2 / s * z) / (a2 - s2 / s * a)  # the x0 of one DDIM step
                w = (a / s) ** 2
                w = w.clamp(min=1.0)
            loss = (w * (student(z, t) - target) ** 2).mean()
            loss_v = _step(opt, loss)
        _freeze(student.fn)
        n //= 2
        history.append({"steps": n, "iters": iters, "loss": loss_v,
                        "seconds": time.perf_counter() - t0})
        current = student
    return Student(current, "progressive", full[:: base_steps // steps].clone(), history)


def consistency_distill(teacher: Denoiser, data: Tensor, *, points: int = 18, iters: int = 2000,
                        batch: int = 256, lr: float = 1e-4, ema: float = 0.95,
                        grid: str = "karras", seed: int = 0) -> Student:
    """Consistency distillation (Song et al. 2023, Algorithm 2) on a ``points``-point ``grid``
    (N = 18 as in their CIFAR-10 setting) with squared-L2 metric, target network an EMA of the
    student (decay ``ema``, their ``mu``), the student initialised from the teacher."""
    return _consistency(teacher, teacher, data, points, iters, batch, lr, ema, grid, seed)


def consistency_train(model: Denoiser, data: Tensor, *, points: int = 18, iters: int = 2000,
                      batch: int = 256, lr: float = 1e-4, ema: float = 0.95,
                      grid: str = "karras", seed: int = 0) -> Student:
    """Consistency training (Song et al. 2023, Algorithm 3): no teacher. The point at the
    lower time ``t_n`` is the same data point noised with the *same* noise,
    ``alpha_n x + sigma_n z`` (the one-sample estimate of the ODE step that distillation takes
    from a teacher). ``model``'s network is trained from its current weights (pass an untrained
    network to train from scratch); fixed ``points`` and ``ema`` (the paper's N and mu
    schedules are not used)."""
    return _consistency(model, None, data, points, iters, batch, lr, ema, grid, seed)


def _consistency(init: Denoiser, teacher: Denoiser | None, data: Tensor, points: int,
                 iters: int, batch: int, lr: float, ema: float, grid: str, seed: int) -> Student:
    _positive("points", points)
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    student, params = _trainable_copy(init)
    proc = init.process
    g = make_grid(proc, points, grid)[:-1]  # t_N > ... > t_1 = t_min (the clean end excluded)
    target_net = copy.deepcopy(student)
    for p in target_net.fn.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    data_iter = _batches(data.to(torch.float32), batch, gen)
    t0, loss_v = time.perf_counter(), float("nan")
    for it in range(iters):
        x = next(data_iter)
        k = torch.randint(0, len(g) - 1, (x.shape[0],), generator=gen)
        t_hi, t_lo = g[k], g[k + 1]  # t_{n+1} > t_n
        a, s = _coef(proc, t_hi, x)
        z = torch.randn(x.shape, generator=gen)
        x_hi = a * x + s * z
        with torch.no_grad():
            if teacher is not None:
                x_lo = _ddim_to(teacher, x_hi, t_hi, t_lo)  # one teacher ODE step
            else:
                a_lo, s_lo = _coef(proc, t_lo, x)
                x_lo = a_lo * x + s_lo * z  # consistency training: the same noise, lower time
            y = target_net(x_lo, t_lo)  # f_theta-(x^_{t_n}, t_n)
        loss = ((student(x_hi, t_hi) - y) ** 2).mean()
        loss_v = _step(opt, loss)
        with torch.no_grad():
            ema_update(target_net.fn, student.fn, ema, it)
    for p in params:
        p.requires_grad_(False)
    history = [{"steps": len(g), "iters": iters, "loss": loss_v,
                "seconds": time.perf_counter() - t0}]
    return Student(target_net, "consistency", g.clone(), history)


def mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> Tensor:
    """Unbiased squared maximum mean discrepancy between sample sets ``x [n, d]`` and
    ``y [m, d]`` with a sum of Gaussian kernels ``exp(-|a - b|^2 / (2 h^2))``."""
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    n, m = x.shape[0], y.shape[0]

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * k(x, y).mean())


def mmd_finetune(teacher: Denoiser, data: Tensor, *, steps: int = 2, iters: int = 200,
                 batch: int = 256, lr: float = 1e-4, grid: str = "karras",
                 bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0),
                 features: Any = None, seed: int = 0) -> Student:
    """MMD-DDM (Aiello et al. 2023, paper 16): fine-tune a copy of ``teacher`` so that its
    ``steps``-step DDIM samples on ``grid`` match batches of ``data`` in squared MMD
    (:func:`mmd`; on ``features(x)`` when given), gradients through the whole chain."""
    _positive("steps", steps)
    student, params = _trainable_copy(teacher)
    g = make_grid(teacher.process, steps, grid)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    data_iter = _batches(data.to(torch.float32), batch, gen)
    phi = features if features is not None else (lambda z: z)
    t0, loss_v = time.perf_counter(), float("nan")
    for _ in range(iters):
        y = next(data_iter)
        x = _ddim_chain(student, torch.randn(y.shape, generator=gen), g)
        loss = mmd(phi(x), phi(y), bandwidths)
        loss_v = _step(opt, loss)
    _freeze(student.fn)
    history = [{"steps": steps, "iters": iters, "loss": loss_v,
                "seconds": time.perf_counter() - t0}]
    return Student(student, "mmd", g.clone(), history)


def _register() -> None:
    from reverie.accelerate import register

    register("progressive", progressive_distill, "distill", "Salimans & Ho 2022",
             "halve the step count per stage: one student DDIM step = two teacher steps")
    register("consistency", consistency_distill, "distill", "Song et al. 2023",
             "consistency distillation on an N-point grid with an EMA target; 1..N steps")
    register("consistency_train", consistency_train, "train", "Song et al. 2023",
             "consistency training without a teacher (same noise at both times); 1..N steps")
    register("mmd", mmd_finetune, "distill", "MMD-DDM, Aiello et al. 2023 (paper 16)",
             "fine-tune for a fixed DDIM step budget by MMD through the sampling chain")


_register()

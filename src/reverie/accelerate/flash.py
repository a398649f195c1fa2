"""Imagine Flash's backward distillation (Kohler et al. 2024, "Imagine Flash: accelerating Emu
diffusion models with backward distillation", paper 65), reconstructed from the paper's
abstract and summaries (the update equations were not available to us):

* *Backward distillation*: the student is trained at the states it visits itself at inference.
  Each iteration starts from pure noise ``sigma(t_0) z`` and runs the student's own ``steps``-step
  DDIM trajectory (no gradient) down to a random grid time ``t_i``; no data is noised, so no
  signal of a data point leaks into the student's input (the training-inference gap of
  forward-noised distillation at few steps). Data is not needed at all.
* *Shifted reconstruction loss*: the student's prediction ``x0_s = S(x_{t_i}, t_i)`` is noised
  again to a level ``tau(t_i)`` and the teacher denoises it in ``teacher_steps`` DPM-Solver++(2M)
  steps; the result is the target, ``|x0_s - sg(teacher(alpha_tau x0_s + sigma_tau eps))|^2``.
  ``tau`` follows ``t``: high for the first steps (the teacher redraws the layout), low for the
  last (it fixes details). Ours: ``tau`` has ``shift`` times the noise fraction
  ``sigma^2 / (alpha^2 + sigma^2)`` of ``t_i``, and ``eps`` is the noise of the student's own
  state, ``(x_{t_i} - alpha x0_s) / sigma`` (a DDIM step of the student to ``tau``; a fresh
  draw makes the regression target an average of teacher samples, which collapses modes).
  The default ``shift = 1`` (``tau = t_i``: the teacher's solve from the student's own state)
  measured far better than ``shift < 1`` on two-moons (docs/accelerate.md).
* *Noise correction* (inference): the first step's noise is known -- it is the starting
  noise -- so the step to ``t_1`` is ``alpha_1 x0_hat + sigma_1 z`` instead of using the noise
  implied by the prediction (:class:`~reverie.accelerate.distill.Student` with
  ``noise_correction=True``).

The paper's adversarial term (if any) and its Emu-specific settings are not reproduced.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from reverie._checks import in_range
from reverie.accelerate.distill import (
    Student,
    _ddim_to,
    _freeze,
    _positive,
    _step,
    _trainable_copy,
)
from reverie.denoisers import Denoiser
from reverie.grids import make_grid

__all__ = ["backward_distill", "shifted_time"]


def shifted_time(process, t: torch.Tensor, shift: float) -> torch.Tensor:
    """The time ``tau`` whose noise fraction ``sigma^2 / (alpha^2 + sigma^2)`` is ``shift`` times
    that of ``t`` (the re-noising level of the shifted reconstruction loss, ours)."""
    a, s = process.alpha(t), process.sigma(t)
    rho = shift * s**2 / (a**2 + s**2)
    return process.t_from_log_snr(torch.log((1 - rho) / rho))  # log SNR = log(a^2 / s^2)


def backward_distill(teacher: Denoiser, *, steps: int = 2, iters: int = 500, batch: int = 128,
                     lr: float = 1e-4, shift: float = 1.0, teacher_steps: int = 10,
                     base_steps: int = 16, grid: str = "karras",
                     shape: tuple[int, ...] | None = None, cond_fn: Any = None,
                     seed: int = 0) -> Student:
    """Imagine Flash's backward distillation of ``teacher`` into a ``steps``-step DDIM student
    on every ``base_steps / steps``-th time of the ``base_steps``-point ``grid`` (the grid of a
    progressive student; ``steps`` must divide ``base_steps``), as in the module docstring:
    ``iters`` Adam iterations of ``batch`` backward trajectories of samples of ``shape``
    (default: the teacher's ``sample_shape``); ``cond_fn(batch, gen)`` may return conditioning
    keywords for both models (e.g. random class labels). The returned student samples with
    noise correction."""
    _positive("steps", steps)
    _positive("teacher_steps", teacher_steps)
    if _positive("base_steps", base_steps) % steps:
        raise ValueError(f"steps must divide base_steps, got {steps} and {base_steps}")
    in_range("shift", shift, 0, 1, lo_open=True)
    student, params = _trainable_copy(teacher)
    shape = tuple(shape or getattr(teacher, "sample_shape", None) or ())
    if not shape:
        raise ValueError("pass the sample shape (the teacher has no sample_shape)")
    from reverie.samplers import sample  # imported here, as reverie.large's functions do

    proc = teacher.process
    g = make_grid(proc, base_steps, grid)[:: base_steps // steps]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0, loss_v = time.perf_counter(), float("nan")
    for _ in range(iters):
        cond = cond_fn(batch, gen) if cond_fn is not None else {}
        z = torch.randn((batch, *shape), generator=gen)
        i = int(torch.randint(0, steps, (1,), generator=gen))
        x = z * float(proc.sigma(g[0]))
        with torch.no_grad():  # the student's own backward trajectory down to t_i
            for j in range(i):
                t = torch.full((batch,), float(g[j]), dtype=torch.float64)
                if j == 0:  # with the noise correction it samples with
                    x = (student(x, t, **cond) * float(proc.alpha(g[1]))
                         + float(proc.sigma(g[1])) * z)
                else:
                    x = _ddim_to(student, x, t, torch.full_like(t, float(g[j + 1])), **cond)
        t_i = torch.full((batch,), float(g[i]), dtype=torch.float64)
        pred = student(x, t_i, **cond)
        with torch.no_grad():  # shifted reconstruction: the student's DDIM step to tau, then
            # the teacher's solve from tau (the re-noising keeps the trajectory's own noise)
            tau = min(max(float(shifted_time(proc, g[i], shift)), 2 * float(proc.t_min)),
                      float(g[i]))
            a_i, s_i = float(proc.alpha(g[i])), float(proc.sigma(g[i]))
            eps = (x - a_i * pred) / s_i
            renoised = float(proc.alpha(tau)) * pred + float(proc.sigma(tau)) * eps
            tg = make_grid(proc, teacher_steps, grid, t_max=tau)
            target = sample(teacher, renoised / float(proc.sigma(tau)), "dpmpp_2m",
                            teacher_steps, grid=tg, cond=cond)
        loss = ((pred - target) ** 2).mean()
        loss_v = _step(opt, loss)
    _freeze(student.fn)
    history = [{"steps": steps, "iters": iters, "loss": loss_v, "shift": shift,
                "teacher_steps": teacher_steps, "seconds": time.perf_counter() - t0}]
    return Student(student, "flash", g.clone(), history, noise_correction=True)



def _register() -> None:
    from reverie.accelerate import register

    register("imagine_flash", backward_distill, "distill",
             "Imagine Flash, Kohler et al. 2024 (paper 65)",
             "backward distillation on the student's own trajectories from pure noise, shifted "
             "reconstruction by the teacher; noise correction at the first step")


_register()

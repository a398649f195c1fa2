"""Scale-wise sampling (Starodubcev, Kuznedelev, Babenko & Baranchuk 2025, "Scale-wise
Distillation of Diffusion Models", SwD, paper 118): a few-step generator whose resolution grows
over the steps. Sampling starts from noise at the smallest scale; at each step the data
estimate is enlarged to the next scale and re-noised to the next level with *fresh* noise
(their "SwD sampling": "the previous denoised prediction at the scale s_{i-1} is upsampled and
noised according to the timestep schedule t_i"):

    x_0 = sigma(t_0) z_0                          (noise at scale s_0)
    x0_i = D_i(x_i, t_i)                          (the denoiser at scale s_i)
    x_{i+1} = alpha(t_{i+1}) up_{s_{i+1}}(x0_i) + sigma(t_{i+1}) z_{i+1}   (fresh z_{i+1})

and the last estimate is the sample. ``schedule`` is the list of ``(size, t)`` pairs (their
``scales`` and ``sigmas``, e.g. SD3.5-M-SwD's ``32, 48, ..., 128`` latent sizes with
``1.0, 0.9454, ...``); ``size`` is the trailing spatial shape at that step. The denoiser is one
model that runs at every size (a convolutional network) or one denoiser per step (e.g. the exact
denoiser of a field at each resolution, :mod:`reverie.reference.fields`). The upsampling is
:func:`reverie.large.fam.fourier_resize` (band-limited, keeps every Fourier amplitude) or any
``F.interpolate`` mode.

:func:`scalewise_distill` trains such a student from a teacher, our reduced reading of SwD's
training step with its MMD-only variant (their SDXL-SwD checkpoint): pick a step ``i`` of the
schedule, shrink the target images to ``s_{i-1}`` and ``s_i`` (area averaging), enlarge the
former to ``s_i`` and noise it to ``t_i`` (pure noise at the first step), and pull the
student's predictions at ``s_i`` towards the shrunk targets in squared MMD
(:func:`reverie.accelerate.distill.mmd`). The targets are clean samples (the teacher's, for a
distillation); the student starts as a copy of the teacher. Not implemented: the DMD2 part
(teacher and fake score models, GAN head) and the *patch* MMD on network features (the MMD
here is on whole images).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from reverie._random import Generators, randn
from reverie.accelerate.distill import (
    _batches,
    _freeze,
    _positive,
    _step,
    _trainable_copy,
    mmd,
)
from reverie.denoisers import Denoiser, DenoiserBase
from reverie.large.fam import _MODES, _enlarge

__all__ = ["ScalewiseStudent", "scalewise_distill", "scalewise_sample"]


def _size(v: Any) -> tuple[int, ...]:
    size = (v,) if isinstance(v, int) else tuple(v)
    if not size or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"a schedule size must be an int or a tuple of ints >= 1, got {v!r}")
    return size


def scalewise_sample(denoiser: DenoiserBase | Sequence[DenoiserBase], noise: Tensor,
                     schedule: Sequence[tuple[Any, float]], *, upsample: str = "fourier",
                     noises: Sequence[Tensor] | None = None, generator: Generators = None,
                     cond: dict[str, Any] | None = None) -> Tensor:
    """SwD's scale-wise sampler from unit ``noise`` (trailing shape ``schedule[0][0]``) along
    ``schedule = [(size_0, t_0), (size_1, t_1), ...]`` (sizes non-decreasing, times
    decreasing): one network call per pair. ``denoiser`` is one denoiser for every size or one
    per pair; ``upsample`` is ``"fourier"`` or an ``F.interpolate`` mode; ``noises`` (one unit
    tensor per re-noising, of the next size) replace the fresh draws from ``generator``."""
    if not isinstance(noise, Tensor) or noise.ndim < 2:
        raise TypeError(f"noise must be a tensor [B, ...], got {type(noise).__name__}")
    if upsample not in _MODES:
        raise ValueError(f"unknown upsample {upsample!r}; expected one of {', '.join(_MODES)}")
    pairs = [(_size(s), float(t)) for s, t in schedule]
    if not pairs:
        raise ValueError("schedule must hold at least one (size, t) pair, got none")
    dens = list(denoiser) if isinstance(denoiser, Sequence) else [denoiser] * len(pairs)
    if len(dens) != len(pairs):
        raise ValueError(f"one denoiser per schedule pair expected ({len(pairs)}), got "
                         f"{len(dens)}")
    for (a, ta), (b, tb) in zip(pairs, pairs[1:]):
        if len(b) != len(a) or any(j < i for i, j in zip(a, b)) or not tb < ta:
            raise ValueError(f"schedule sizes must not shrink and times must decrease, got "
                             f"{list(a)} at t={ta} then {list(b)} at t={tb}")
    k = len(pairs[0][0])
    if tuple(noise.shape[-k:]) != pairs[0][0]:
        raise ValueError(f"noise must end in the first size {list(pairs[0][0])}, got "
                         f"{list(noise.shape)}")
    if noises is not None and len(noises) != len(pairs) - 1:
        raise ValueError(f"noises must hold one tensor per re-noising ({len(pairs) - 1}), got "
                         f"{len(noises)}")
    proc = dens[0].process
    t0 = pairs[0][1]
    x = noise * float(proc.sigma(torch.tensor(t0, dtype=torch.float64)))  # x_0 = sigma_0 z_0
    for i, ((_, t), den) in enumerate(zip(pairs, dens)):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        x0 = den(x, tt, **(cond or {}))  # the data estimate at this scale
        if i == len(pairs) - 1:
            return x0
        size_next, t_next = pairs[i + 1]
        up = _enlarge(x0, size_next, upsample)  # enlarge the estimate to the next scale
        z = (noises[i] if noises is not None
             else randn(up.shape, generator, dtype=up.dtype))  # fresh noise at that scale
        if z.shape != up.shape:
            raise ValueError(f"noises[{i}] must have shape {list(up.shape)}, got "
                             f"{list(z.shape)}")
        tn = torch.tensor(t_next, dtype=torch.float64)
        x = float(proc.alpha(tn)) * up + float(proc.sigma(tn)) * z  # re-noise to t_{i+1}
    raise AssertionError("unreachable")  # the loop returns at its last pair


@dataclass
class ScalewiseStudent:
    """A scale-wise few-step student: ``denoiser``, its ``schedule`` of ``(size, t)`` pairs
    (one network call each), ``upsample`` and ``history`` (one dict: iterations, last loss,
    seconds)."""

    denoiser: Denoiser
    schedule: list[tuple[tuple[int, ...], float]]
    upsample: str = "fourier"
    history: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, noise: Tensor, steps: int | None = None,
               generator: Generators = None) -> Tensor:
        """Samples from unit ``noise`` at the first size, one call per schedule pair."""
        n = len(self.schedule)
        if steps is not None and _positive("steps", steps) != n:
            raise ValueError(f"this scale-wise student was trained for {n} steps (one per "
                             f"scale); asked for {steps}")
        self.denoiser.fn.eval()
        with torch.no_grad():
            return scalewise_sample(self.denoiser, noise, self.schedule,
                                    upsample=self.upsample, generator=generator)


def _shrink(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """``x``'s trailing axes averaged down to ``size`` (area)."""
    return x if tuple(x.shape[-len(size):]) == size else F.interpolate(x, size=size, mode="area")


def scalewise_distill(teacher: Denoiser, targets: Tensor, schedule: Sequence[tuple[Any, float]],
                      *, iters: int = 500, batch: int = 64, lr: float = 1e-4,
                      bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0),
                      upsample: str = "fourier", seed: int = 0) -> ScalewiseStudent:
    """SwD's scale-wise distillation, MMD-only (see the module docstring): ``targets`` are
    clean samples ``[n, C, *size]`` at the last size (the teacher's); ``iters`` Adam steps on
    batches of ``batch``, cycling through the schedule's steps."""
    _positive("iters", iters)
    pairs = [(_size(s), float(t)) for s, t in schedule]
    if not pairs or tuple(targets.shape[-len(pairs[-1][0]):]) != pairs[-1][0]:
        raise ValueError(f"targets must end in the schedule's last size, got "
                         f"{list(targets.shape)} for schedule {schedule!r}")
    student, params = _trainable_copy(teacher)
    proc = teacher.process
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    data_iter = _batches(targets.to(torch.float32), batch, gen)
    t0, loss_v = time.perf_counter(), float("nan")
    for it in range(iters):
        y = next(data_iter)
        i = it % len(pairs)  # one step of the schedule per iteration, in turn
        size, t = pairs[i]
        tt = torch.full((batch,), t, dtype=torch.float64)
        a, s = float(proc.alpha(tt[0])), float(proc.sigma(tt[0]))
        z = torch.randn((batch, *y.shape[1:-len(size)], *size), generator=gen)
        if i == 0:  # the first step starts from noise at the smallest size
            x = s * z
        else:  # the previous scale's image, enlarged and noised to t_i
            x = a * _enlarge(_shrink(y, pairs[i - 1][0]), size, upsample) + s * z
        loss = mmd(student(x, tt), _shrink(y, size), bandwidths)  # match the law at s_i
        loss_v = _step(opt, loss)
    _freeze(student.fn)
    history = [{"steps": len(pairs), "iters": iters, "loss": loss_v,
                "seconds": time.perf_counter() - t0}]
    return ScalewiseStudent(student, pairs, upsample, history)


def _register() -> None:
    from reverie.accelerate import register

    register("scalewise", scalewise_sample, "sampler",
             "SwD, Starodubcev et al. 2025 (paper 118)",
             "start at a low resolution; between steps enlarge the data estimate and re-noise "
             "it to the next level with fresh noise (one call per (size, t) pair)")
    register("scalewise_distill", scalewise_distill, "distill",
             "SwD, Starodubcev et al. 2025 (paper 118)",
             "a student whose resolution grows over its steps, trained per scale by MMD "
             "against shrunk teacher samples (MMD-only variant, whole-image kernel)")


_register()

"""A small, honest training loop for Gaussian diffusion models on any ``nn.Module``.

:func:`train` fits a network to a data tensor with one of two objectives:

* ``prediction="edm"`` -- EDM (Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models", Sec. 5 and Table 1): the network ``F`` is preconditioned
  as ``D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4)``, noise levels are drawn as
  ``ln sigma ~ N(P_mean, P_std^2)`` and the loss is ``lambda(sigma) |D - x0|^2`` with
  ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``. The process is an
  :class:`~reverie.process.EDM`.
* ``prediction="eps" | "v" | "x0" | "flow"`` -- the plain mean-squared error of that target
  (Ho et al. 2020's "simple" loss for ``eps``; Salimans & Ho 2022 for ``v``; Lipman et al. 2023
  for ``flow``) on any :class:`~reverie.process.GaussianProcess`; times are drawn uniformly in
  ``[t_min, t_max]`` or, with ``time_sampling="lognormal"``, by EDM's log-normal noise levels
  mapped to process time through ``sigma / alpha``.

Around it: Adam with linear warm-up, gradient-norm clipping, an exponential moving average of
the weights (the EMA is what gets exported), label dropout for classifier-free guidance (Ho &
Salimans 2022), a tqdm bar showing the loss, and checkpoints that resume bit-for-bit (the data
generator's state is saved with the weights).

The pieces are separate functions: :func:`make_objective` (the preconditioned model and its
loss), :func:`draw_batch`, :func:`ema_update`, :func:`save_checkpoint` /
:func:`load_checkpoint`; :func:`train` is the short loop over them. The bundled models'
recipes are in :mod:`reverie.train.recipes`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from reverie._checks import in_range, positive_int
from reverie._io import atomic_path
from reverie._progress import progress_bar
from reverie._tensor import bcast
from reverie.nets.function import ModelFunction
from reverie.process import EDM, VE, GaussianProcess

__all__ = [
    "TrainResult",
    "Objective",
    "train",
    "make_objective",
    "draw_batch",
    "ema_update",
    "save_checkpoint",
    "load_checkpoint",
    "OBJECTIVES",
    "TIME_SAMPLINGS",
]

OBJECTIVES = ("edm", "eps", "v", "x0", "flow")
TIME_SAMPLINGS = ("uniform", "lognormal")


@dataclass
class TrainResult:
    """What :func:`train` returns. ``model`` is the :class:`ModelFunction` around the EMA
    weights (what to sample from); ``losses`` holds the mean loss of every ``log_every`` steps;
    ``seconds`` is the wall time of all runs (a resumed run adds the checkpoint's)."""

    ema: nn.Module
    net: nn.Module
    model: ModelFunction
    process: GaussianProcess
    prediction: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def _target(
    prediction: str, x0: Tensor, eps: Tensor, t: Tensor, process: GaussianProcess
) -> Tensor:
    """The regression target of a prediction type at ``x_t = alpha x0 + sigma eps``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    a = bcast(process.alpha(t), x0).to(x0.dtype)
    s = bcast(process.sigma(t), x0).to(x0.dtype)
    if prediction == "v":  # Salimans & Ho (2022), eq. in Appendix D
        return a * eps - s * x0
    da = bcast(process.d_alpha(t), x0).to(x0.dtype)
    ds = bcast(process.d_sigma(t), x0).to(x0.dtype)
    return da * x0 + ds * eps  # flow: d x_t / dt


def _sample_times(
    n: int, process: GaussianProcess, how: str, p_mean: float, p_std: float, gen: torch.Generator
) -> Tensor:
    if how == "uniform":
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        return process.t_min + u * (process.t_max - process.t_min)
    # EDM Sec. 5: ln sigma ~ N(P_mean, P_std^2), mapped to process time through sigma / alpha
    sigma = torch.exp(p_mean + p_std * torch.randn(n, generator=gen, dtype=torch.float64))
    lo, hi = float(process.sigma_ve(process.t_min)), float(process.sigma_ve(process.t_max))
    return process.t_from_sigma_ve(sigma.clamp(lo, hi)).clamp(process.t_min, process.t_max)


@dataclass
class Objective:
    """What :func:`train` minimises: ``model`` (the network wrapped as a denoiser of
    ``process``), how times are drawn, and :meth:`loss` on a batch."""

    prediction: str
    process: GaussianProcess
    model: ModelFunction
    time_sampling: str
    p_mean: float
    p_std: float
    sigma_data: float

    def times(self, n: int, gen: torch.Generator) -> Tensor:
        return _sample_times(n, self.process, self.time_sampling, self.p_mean, self.p_std, gen)

    def loss(self, x0: Tensor, eps: Tensor, t: Tensor, y: Tensor | None,
             **cond: Tensor) -> Tensor:
        """The mean loss at ``x_t = alpha(t) x0 + sigma(t) eps`` (``cond``: extra per-row
        conditioning keywords for the network, e.g. ``coherence``)."""
        xt = self.process.add_noise(x0, eps, t)
        if self.prediction == "edm":
            # EDM eq. 8: lambda(sigma) |D(x0 + sigma eps; sigma) - x0|^2
            sigma = bcast(t, x0).to(x0.dtype)
            weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
            return (weight * (self.model(xt, t, y, **cond) - x0) ** 2).mean()
        target = _target(self.prediction, x0, eps, t, self.process)
        return ((self.model(xt, t, y, **cond) - target) ** 2).mean()


def _check_names(prediction: str, time_sampling: str) -> None:
    if prediction not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {prediction!r}; expected one of {', '.join(OBJECTIVES)}"
        )
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(
            f"unknown time_sampling {time_sampling!r}; expected one of {', '.join(TIME_SAMPLINGS)}"
        )


def make_objective(
    net: nn.Module,
    prediction: str,
    process: GaussianProcess | None,
    *,
    time_sampling: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
    time_input: str = "process",
) -> Objective:
    """The objective ``prediction`` for ``net`` (see the module docstring): ``"edm"`` wraps
    ``net`` with EDM's preconditioning on a VE/EDM process (default ``EDM(sigma_data)``) and
    draws EDM's log-normal noise levels; the others regress their target on ``process``."""
    _check_names(prediction, time_sampling)
    if prediction == "edm":
        process = EDM(sigma_data=sigma_data) if process is None else process
        if not isinstance(process, VE):
            raise ValueError(f"the edm objective needs a VE/EDM process, got {process!r}")
        model = ModelFunction(
            net, process, time_input="c_noise", precondition="edm", sigma_data=sigma_data
        )
        if time_sampling == "uniform":
            time_sampling = "lognormal"  # EDM's own noise distribution
    else:
        if process is None:
            raise ValueError(
                f"prediction={prediction!r} needs a process (e.g. reverie.VP.linear())"
            )
        model = ModelFunction(net, process, time_input=time_input)
    return Objective(prediction, process, model, time_sampling, p_mean, p_std, sigma_data)


def draw_batch(
    data: Tensor, labels: Tensor | None, num_classes: int | None, label_dropout: float,
    batch_size: int, gen: torch.Generator, conditions: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """A batch of data (drawn with replacement) and its labels, each replaced by the null class
    ``num_classes`` with probability ``label_dropout`` (classifier-free guidance). With
    ``conditions`` (name -> per-example tensor ``[N, ...]``) the same rows of each are returned
    third."""
    idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
    y = None
    if labels is not None:
        y = labels[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < label_dropout
        y[drop] = num_classes  # the null class
    if conditions is not None:
        return data[idx], y, {k: v[idx] for k, v in conditions.items()}
    return data[idx], y


def ema_update(ema: nn.Module, net: nn.Module, ema_decay: float, step: int) -> None:
    """One step of the exponential moving average of the weights, with a warm-up of the decay
    (``min(ema_decay, (1 + step) / (10 + step))``, so early weights are not overweighted);
    buffers are copied."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(ema.buffers(), net.buffers()):
            be.copy_(b)


def save_checkpoint(path: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, step: int, losses: list[float], seconds: float) -> None:
    """Write everything a resumed run needs, atomically (a crash leaves the old file)."""
    with atomic_path(path) as tmp:
        torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "generator": gen.get_state(), "step": step, "losses": losses,
                    "seconds": seconds}, tmp)


def load_checkpoint(path: Path | None, net: nn.Module, ema: nn.Module,
                    opt: torch.optim.Optimizer, gen: torch.Generator
                    ) -> tuple[int, list[float], float]:
    """Restore a checkpoint in place; returns ``(step, losses, seconds)``."""
    if path is None or not path.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["generator"])
    return int(state["step"]), list(state["losses"]), float(state.get("seconds", 0.0))


def _check_data(net: nn.Module, data: Tensor, labels: Tensor | None, num_classes: int | None,
                label_dropout: float, steps: int, batch_size: int, lr: float, grad_clip: float,
                ema_decay: float) -> Tensor | None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2:
        raise TypeError("data must be a floating-point tensor [N, ...] with at least 2 dimensions")
    positive_int("steps", steps)
    if batch_size < 1 or lr <= 0 or grad_clip <= 0 or not 0 <= ema_decay < 1:
        raise ValueError("need batch_size >= 1, lr > 0, grad_clip > 0 and 0 <= ema_decay < 1")
    if (labels is None) != (num_classes is None):
        raise ValueError(
            "give both labels and num_classes for a class-conditional model, or neither"
        )
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape [{data.shape[0]}], got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}")
        in_range("label_dropout", label_dropout, 0, 1, hi_open=True)
    return labels


def train(
    net: nn.Module,
    data: Tensor,
    *,
    process: GaussianProcess | None = None,
    prediction: str = "edm",
    labels: Tensor | None = None,
    num_classes: int | None = None,
    label_dropout: float = 0.1,
    time_sampling: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
    time_input: str = "process",
    steps: int = 10_000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    grad_clip: float = 1.0,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    log_every: int = 100,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    conditions: dict[str, Tensor] | None = None,
) -> TrainResult:
    """Train ``net`` as a diffusion model of ``data [N, ...]`` (see the module docstring).

    ``net`` is called as ``net(x, time[, class_labels=...])`` and returns a tensor shaped like
    ``x`` (or a diffusers output with ``.sample``); ``time`` is the process time, or EDM's
    ``c_noise`` under ``prediction="edm"``. With ``labels [N]`` and ``num_classes`` the model is
    class-conditional: each label is replaced by the null class ``num_classes`` with
    probability ``label_dropout`` (Ho & Salimans 2022, classifier-free guidance), so ``net``
    needs ``num_classes + 1`` class embeddings. ``process`` defaults to ``EDM(sigma_data=...)``
    for ``"edm"`` and must be given otherwise.

    Every ``checkpoint_every`` steps (and at the end) the weights, EMA, optimizer and data
    generator are written atomically to ``checkpoint``; ``resume=True`` continues from it and
    gives the same weights as an uninterrupted run. ``steps`` is the total step count.

    ``conditions`` (name -> per-example tensor ``[N, ...]``): extra conditioning the network
    takes as keywords, drawn with the same rows as the data (e.g. a coherence score, Dufour et
    al. 2024); it draws no random numbers, so the rest of the run is unchanged.
    """
    _check_names(prediction, time_sampling)
    labels = _check_data(net, data, labels, num_classes, label_dropout, steps, batch_size, lr,
                         grad_clip, ema_decay)
    for name, value in (conditions or {}).items():
        if not isinstance(value, Tensor) or value.shape[:1] != data.shape[:1]:
            raise ValueError(f"condition {name!r} must be a tensor with {data.shape[0]} rows")
    obj = make_objective(net, prediction, process, time_sampling=time_sampling, p_mean=p_mean,
                         p_std=p_std, sigma_data=sigma_data, time_input=time_input)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step, losses, prior_seconds = 0, [], 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume:
        step, losses, prior_seconds = load_checkpoint(ckpt, net, ema, opt, gen)
    bar = progress_bar(steps, progress, "train", initial=step)
    t0, window = time.perf_counter(), []
    net.train()
    while step < steps:
        x0, y, *more = draw_batch(data, labels, num_classes, label_dropout, batch_size, gen,
                                  conditions)
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        loss = obj.loss(x0, eps, obj.times(batch_size, gen), y, **(more[0] if more else {}))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        for g in opt.param_groups:  # linear warm-up, then constant
            g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        opt.step()
        ema_update(ema, net, ema_decay, step)
        step += 1
        window.append(loss.item())
        if len(window) == log_every or step == steps:
            losses.append(sum(window) / len(window))
            window = []
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if callback is not None:
            callback(step, loss.item())
        bar.update(1)
        if ckpt is not None and (step % checkpoint_every == 0 or step == steps):
            save_checkpoint(ckpt, net, ema, opt, gen, step, losses,
                            prior_seconds + time.perf_counter() - t0)
    bar.close()
    net.eval()
    ema.eval()
    return TrainResult(ema, net, obj.model.with_net(ema), obj.process,
                       "x0" if prediction == "edm" else prediction, step,
                       prior_seconds + time.perf_counter() - t0, losses)

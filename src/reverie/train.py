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

:func:`train_bundled` reproduces the bundled models (``digits``, ``two-moons``) with their
fixed recipes; ``scripts/train_digits.py`` and ``reverie train`` call it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie._checks import in_range, positive_int
from reverie._io import atomic_path
from reverie._progress import progress_bar
from reverie._tensor import bcast
from reverie.nets.function import ModelFunction
from reverie.process import EDM, VE, GaussianProcess

__all__ = ["TrainResult", "train", "train_bundled", "RECIPES", "OBJECTIVES", "TIME_SAMPLINGS"]

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


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    """
    if prediction not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {prediction!r}; expected one of {', '.join(OBJECTIVES)}"
        )
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(
            f"unknown time_sampling {time_sampling!r}; expected one of {', '.join(TIME_SAMPLINGS)}"
        )
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
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step, losses, prior_seconds = 0, [], 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["generator"])
        step, losses = int(state["step"]), list(state["losses"])
        prior_seconds = float(state.get("seconds", 0.0))

    def save() -> None:
        if ckpt is not None:
            _save_atomic(
                {
                    "net": net.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "generator": gen.get_state(),
                    "step": step,
                    "losses": losses,
                    "seconds": prior_seconds + time.perf_counter() - t0,
                },
                ckpt,
            )

    bar = progress_bar(steps, progress, "train", initial=step)
    t0, window = time.perf_counter(), []
    n = data.shape[0]
    net.train()
    while step < steps:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x0 = data[idx]
        y = None
        if labels is not None:
            y = labels[idx].clone()
            drop = torch.rand(batch_size, generator=gen) < label_dropout
            y[drop] = num_classes  # the null class
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        t = _sample_times(batch_size, process, time_sampling, p_mean, p_std, gen)
        xt = process.add_noise(x0, eps, t)
        if prediction == "edm":
            # EDM eq. 8: lambda(sigma) |D(x0 + sigma eps; sigma) - x0|^2
            sigma = bcast(t, x0).to(x0.dtype)
            weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
            loss = (weight * (model(xt, t, y) - x0) ** 2).mean()
        else:
            loss = ((model(xt, t, y) - _target(prediction, x0, eps, t, process)) ** 2).mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        for g in opt.param_groups:  # linear warm-up, then constant
            g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        opt.step()
        # EMA with a warm-up of the decay (so early weights are not overweighted)
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - decay)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)
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
            save()
    bar.close()
    net.eval()
    ema.eval()
    return TrainResult(
        ema,
        net,
        model.with_net(ema),
        process,
        "x0" if prediction == "edm" else prediction,
        step,
        prior_seconds + time.perf_counter() - t0,
        losses,
    )


# ---------------------------------------------------------------------------------------------
# The bundled models' recipes
# ---------------------------------------------------------------------------------------------

#: Scheduler config of the bundled digits model: diffusers' ``EDMEulerScheduler`` (EDM
#: preconditioning, sigma in [0.002, 80]; ``sigma_data`` is the digits' pixel std).
DIGITS_SCHEDULER = {
    "_class_name": "EDMEulerScheduler",
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.75,
    "sigma_schedule": "karras",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rho": 7.0,
    "final_sigmas_type": "zero",
}


def _digits(
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
    checkpoint: Path | None,
    resume: bool,
    progress: bool,
    lr: float,
) -> tuple[TrainResult, Path]:
    from reverie.data import load_digits
    from reverie.diffusers_adapter import scheduler_spec
    from reverie.hub import save_diffusers
    from reverie.nets import unet_for_images

    x, y = load_digits("train")
    torch.manual_seed(seed)  # the UNet's initial weights
    unet = unet_for_images(1, 8, num_classes=10)
    spec = scheduler_spec(DIGITS_SCHEDULER)
    res = train(
        unet,
        x,
        process=spec.process,
        prediction="edm",
        sigma_data=spec.sigma_data,
        labels=y,
        num_classes=10,
        label_dropout=0.1,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=200,
        ema_decay=0.999,
        grad_clip=1.0,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    folder = save_diffusers(
        out,
        res.ema,
        DIGITS_SCHEDULER,
        name="digits",
        description="8x8 handwritten digits (scikit-learn), class-conditional, null class 10",
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        null_class=True,
        pipeline_class="DiffusionPipeline",
        extra={
            "training": _training_info(
                "digits",
                res,
                steps,
                batch_size,
                seed,
                lr,
                {
                    "objective": "edm",
                    "p_mean": -1.2,
                    "p_std": 1.2,
                    "sigma_data": spec.sigma_data,
                    "label_dropout": 0.1,
                    "data": "reverie.data.load_digits('train')",
                },
            )
        },
    )
    return res, folder


def _two_moons(
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
    checkpoint: Path | None,
    resume: bool,
    progress: bool,
    lr: float,
) -> tuple[TrainResult, Path]:
    from reverie.data import two_moons
    from reverie.hub import save_native
    from reverie.nets import MLP

    x, y = two_moons(20_000, generator=torch.Generator().manual_seed(seed))
    sigma_data = round(float(x.std()), 3)
    torch.manual_seed(seed)
    net = MLP(dim=2, hidden=128, depth=3, num_class_embeds=3)
    res = train(
        net,
        x,
        prediction="edm",
        sigma_data=sigma_data,
        labels=y,
        num_classes=2,
        label_dropout=0.1,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=100,
        ema_decay=0.999,
        grad_clip=1.0,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    folder = save_native(
        out,
        res.ema,
        net_class="MLP",
        net_config=net.config,
        process=res.process,
        prediction="x0",
        precondition="edm",
        sigma_data=sigma_data,
        time_input="c_noise",
        name="two-moons",
        description="2-D two moons (moon 0 upper, moon 1 lower), EDM",
        sample_shape=(2,),
        num_classes=2,
        class_names=["upper", "lower"],
        null_class=True,
        extra={
            "training": _training_info(
                "two-moons",
                res,
                steps,
                batch_size,
                seed,
                lr,
                {
                    "objective": "edm",
                    "sigma_data": sigma_data,
                    "label_dropout": 0.1,
                    "data": "reverie.data.two_moons(20000, seed)",
                },
            )
        },
    )
    return res, folder


def _training_info(
    name: str,
    res: TrainResult,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    import platform

    return {
        "recipe": name,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "seconds": round(res.seconds, 1),
        "final_loss": res.losses[-1],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        **extra,
    }


#: Bundled recipes: name -> (train function, default steps, default batch size, default lr).
RECIPES: dict[str, tuple[Callable[..., tuple[TrainResult, Path]], int, int, float]] = {
    "digits": (_digits, 3000, 64, 7e-4),
    "two-moons": (_two_moons, 4000, 512, 1e-3),
}


def train_bundled(
    name: str,
    out: str | Path,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train a bundled model with its fixed recipe and write it to ``out`` (a model folder
    :func:`reverie.hub.load` reads). Same seed and thread count: same weights."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    fn, d_steps, d_batch, d_lr = RECIPES[name]
    _, folder = fn(
        Path(out),
        steps or d_steps,
        batch_size or d_batch,
        seed,
        Path(checkpoint) if checkpoint else None,
        resume,
        progress,
        lr or d_lr,
    )
    return folder

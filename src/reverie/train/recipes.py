"""The bundled models' recipes (``digits``, ``two-moons``): fixed data, network, objective and
settings, so that ``reverie train NAME`` / :func:`train_bundled` (and ``scripts/train_*.py``)
reproduce the bundled weights. Same seed and thread count: same weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reverie.train.loop import TrainResult, train

__all__ = ["DIGITS_SCHEDULER", "RECIPES", "train_bundled"]

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

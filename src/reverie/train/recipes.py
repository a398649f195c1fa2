"""The bundled models' recipes (``digits``, ``two-moons``): fixed data, network, objective and
settings, so that ``reverie train NAME`` / :func:`train_bundled` (and ``scripts/train_*.py``)
reproduce the bundled weights. Same seed and thread count: same weights."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from reverie.train.loop import TrainResult, train

__all__ = ["DIGITS_SCHEDULER", "DIGITS_VARIANTS", "RECIPES", "noisy_digit_labels", "train_bundled"]

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


#: Label noise of the coherence experiments (Dufour et al. 2024, "Don't drop your samples!"):
#: every training digit gets a coherence score ``c ~ U(0, 1)`` and keeps its label with
#: probability ``c``, else gets a uniformly random one of the 10 (half the labels are
#: resampled, 45% end up wrong). So ``c`` is exactly how much the label says: the law of the
#: digits given label ``y`` and coherence ``c`` is ``c p(x | y) + (1 - c) p(x)``.
LABEL_NOISE_SEED = 1234


def noisy_digit_labels(labels: torch.Tensor, num_classes: int = 10,
                       seed: int = LABEL_NOISE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy labels, coherence)`` of the coherence experiments (see
    :data:`LABEL_NOISE_SEED`): coherence ``c ~ U(0, 1)``, label kept with probability ``c``,
    else replaced by a uniform random class (possibly the same one)."""
    gen = torch.Generator().manual_seed(seed)
    coherence = torch.rand(labels.shape[0], generator=gen)
    replace = torch.rand(labels.shape[0], generator=gen) >= coherence
    random = torch.randint(0, num_classes, labels.shape, generator=gen)
    return torch.where(replace, random, labels), coherence


#: The digits variants: the bundled ``digits``; ``digits-weak``, a smaller (16/32/32 channels,
#: about 1/4 the parameters) and shorter-trained model of the same data and labels for
#: autoguidance (Karras et al. 2024); ``digits-noisy`` and ``digits-coherence``, the digits
#: UNet trained on the noisy labels of :func:`noisy_digit_labels`, without and with the
#: coherence score as an extra condition (:class:`reverie.nets.CoherenceUNet`).
DIGITS_VARIANTS = {
    "digits": "8x8 handwritten digits (scikit-learn), class-conditional, null class 10",
    "digits-weak": "8x8 digits, a weak model for autoguidance (16/32/32 channels, 1/4 of the "
    "steps), class-conditional, null class 10",
    "digits-noisy": "8x8 digits trained on noisy labels (half resampled at random), "
    "class-conditional, null class 10; the baseline of digits-coherence",
    "digits-coherence": "8x8 digits trained on noisy labels with a coherence score in [0, 1] "
    "(Dufour et al. 2024), class- and coherence-conditional, null class 10",
}


def _digits_net(variant: str) -> torch.nn.Module:
    from reverie.nets import CoherenceUNet, digits_unet_config, unet_for_images

    if variant == "digits-coherence":
        return CoherenceUNet(digits_unet_config(10))
    unet = unet_for_images(1, 8, num_classes=10)
    if variant == "digits-weak":  # fewer channels: 16/32/32, 8 norm groups, 8-wide heads
        from diffusers import UNet2DModel

        cfg = {**dict(unet.config), "block_out_channels": (16, 32, 32), "norm_num_groups": 8,
               "attention_head_dim": 8}
        unet = UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return unet


def _digits(
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
    checkpoint: Path | None,
    resume: bool,
    progress: bool,
    lr: float,
    variant: str = "digits",
) -> tuple[TrainResult, Path]:
    from reverie.data import load_digits
    from reverie.diffusers_adapter import scheduler_spec
    from reverie.hub import save_diffusers, save_native

    x, y = load_digits("train")
    conditions, data_info = None, "reverie.data.load_digits('train')"
    if variant in ("digits-noisy", "digits-coherence"):
        y, coherence = noisy_digit_labels(y)
        data_info += " with reverie.train.recipes.noisy_digit_labels"
        if variant == "digits-coherence":
            conditions = {"coherence": coherence}
    torch.manual_seed(seed)  # the UNet's initial weights
    unet = _digits_net(variant)
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
        conditions=conditions,
    )
    info = {
        "training": _training_info(
            variant,
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
                "data": data_info,
            },
        )
    }
    common = dict(name=variant, description=DIGITS_VARIANTS[variant], num_classes=10,
                  class_names=[str(i) for i in range(10)], null_class=True, extra=info)
    if variant == "digits-coherence":
        folder = save_native(out, res.ema, net_class="CoherenceUNet", net_config=unet.config,
                             process=spec.process, prediction="x0", precondition="edm",
                             sigma_data=spec.sigma_data, time_input="c_noise",
                             sample_shape=(1, 8, 8), **common)
    else:
        folder = save_diffusers(out, res.ema, DIGITS_SCHEDULER,
                                pipeline_class="DiffusionPipeline", **common)
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
    "digits-weak": (partial(_digits, variant="digits-weak"), 750, 64, 7e-4),
    # 1000 steps: all the shared machine allowed in the session that trained them (not 3000)
    "digits-noisy": (partial(_digits, variant="digits-noisy"), 1000, 64, 7e-4),
    "digits-coherence": (partial(_digits, variant="digits-coherence"), 1000, 64, 7e-4),
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

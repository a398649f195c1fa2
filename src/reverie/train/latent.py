"""Latent diffusion on a VAE trained by the ELBO, in miniature: the 8x8 digits recipe of
``scripts/train_digits_vae.py`` and ``reverie bench backbones --parts vae``.

1. A diffusers ``AutoencoderKL`` (channels 16/32, factor 2: ``[1, 8, 8]`` digits <-> ``[2, 4,
   4]`` latents) trained by :func:`reverie.train.vae.train_vae` (Kingma & Welling 2014: the
   ELBO with the reparameterisation trick; Gaussian decoder with a learned variance, one for
   all pixels by default, the digits uniformly dequantised in their bins of width 1/8, so
   the ELBO bounds the discrete likelihood); ``scaling_factor`` = 1 / std of the posterior means.
2. A class-conditional ``DiTTransformer2DModel`` (patch 2, width 96, 6 blocks: about the
   parameter count of the bundled pixel-space ``digits`` UNet) trained by
   :func:`reverie.train.train` on posterior draws of the scaled latents (eps prediction on
   DDPM's linear betas, read at DDPM timesteps; DiT's own 10% label dropout gives the null
   class 10).
3. Both saved as a diffusers ``DiTPipeline`` folder (:func:`save_latent_pipeline`), which
   ``reverie.load`` opens as a :class:`reverie.pipelines.DiT`: the latent wrapper encodes,
   samples with any reverie sampler and decodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reverie.train.loop import train
from reverie.train.vae import VAEResult, latent_scale, posterior, train_vae

__all__ = ["DIGITS_BIN", "LATENT_SCHEDULER", "LatentDigits", "digits_autoencoder", "digits_dit",
           "save_latent_pipeline", "train_latent_digits"]

#: Quantisation step of the digits in reverie's units (17 levels mapped to [-1, 1]).
DIGITS_BIN = 1.0 / 8.0
#: The latent model's scheduler: DDPM's linear betas, eps prediction (DiT's setting).
LATENT_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
    "clip_sample": False,
}


def digits_autoencoder(latent_channels: int = 2) -> nn.Module:
    """The recipe's ``AutoencoderKL``: 1 channel, 8x8 <-> ``latent_channels`` x 4x4."""
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=8, sample_size=8,
        mid_block_add_attention=False,
    )


def digits_dit(latent_channels: int = 2, width: int = 96, depth: int = 6) -> nn.Module:
    """The recipe's class-conditional ``DiTTransformer2DModel`` on 4x4 latents (patch 2)."""
    import diffusers

    return diffusers.DiTTransformer2DModel(
        sample_size=4, num_layers=depth, patch_size=2, attention_head_dim=width // 4,
        num_attention_heads=4, in_channels=latent_channels, out_channels=latent_channels,
        activation_fn="gelu-approximate", num_embeds_ada_norm=10, norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )


@dataclass
class LatentDigits:
    """What :func:`train_latent_digits` returns: the VAE's training result, its
    ``scaling_factor``, the trained (EMA) transformer, and settings and timings."""

    vae: VAEResult
    scaling: float
    transformer: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


def train_latent_digits(*, vae_steps: int = 1500, dit_steps: int = 1500, draws: int = 8,
                        obs_logvar: str = "scalar", seed: int = 0,
                        progress: bool = False) -> LatentDigits:
    """Steps 1-2 of the module docstring on ``reverie.data.load_digits('train')``; ``draws``
    posterior draws per training digit form the latent training set; ``obs_logvar`` is
    :func:`~reverie.train.vae.train_vae`'s (``"scalar"`` or ``"per-dim"``: a variance per
    pixel, a better ELBO but a less informative latent, see docs/backbones.md)."""
    from reverie.data import load_digits
    from reverie.diffusers_adapter import scheduler_spec

    x, y = load_digits("train")
    torch.manual_seed(seed)
    vae = train_vae(digits_autoencoder(), x, obs_logvar=obs_logvar, steps=vae_steps,
                    batch_size=64, lr=2e-3, dequantize=DIGITS_BIN, seed=seed, progress=progress)
    vae.vae.requires_grad_(False)
    scaling = latent_scale(vae.vae, x)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        mean, logvar = posterior(vae.vae, x.repeat(draws, 1, 1, 1))
        z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * scaling
    spec = scheduler_spec(LATENT_SCHEDULER)
    torch.manual_seed(seed)  # DiT's label dropout draws from the global generator
    dit = train(digits_dit(), z, process=spec.process, prediction="eps",
                labels=y.repeat(draws), num_classes=10, label_dropout=0.0,  # DiT drops 10%
                steps=dit_steps, batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999,
                seed=seed, progress=progress)
    info = {"vae_steps": vae_steps, "dit_steps": dit_steps, "draws": draws, "seed": seed,
            "obs_logvar_kind": obs_logvar,
            "vae_seconds": round(vae.seconds, 1), "dit_seconds": round(dit.seconds, 1),
            "obs_logvar": [round(v, 3) for v in vae.obs_logvar.flatten().tolist()]}
    return LatentDigits(vae, scaling, dit.ema.eval(), info)


def save_latent_pipeline(run: LatentDigits, folder: str | Path) -> Path:
    """Write a ``DiTPipeline`` folder (safetensors) of the trained VAE and transformer, with
    the class names ``"0"`` .. ``"9"`` and a ``reverie.json`` recording the run."""
    import diffusers

    folder = Path(folder)
    run.vae.vae.register_to_config(scaling_factor=run.scaling)
    pipe = diffusers.DiTPipeline(transformer=run.transformer, vae=run.vae.vae,
                                 scheduler=diffusers.DDPMScheduler.from_config(LATENT_SCHEDULER))
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): str(i) for i in range(10)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "reverie.json").write_text(json.dumps(
        {"name": folder.name, "description": "8x8 digits: AutoencoderKL trained by the ELBO "
         "(reverie.train.vae) + a class-conditional DiT on its latents",
         "default_guidance": 1.0, "training": run.info}, indent=2))
    return folder

"""What PixArt and DiT share: a patchified latent transformer read at discrete DDPM-family
timesteps, whose output may carry a learned variance (``out_channels = 2 * in_channels``: the
first half is the noise prediction, the second the variance interpolation, which reverie's
samplers do not use and drop, as diffusers' pipelines do)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.pipelines._base import LatentPipeline, load_components, read_process
from reverie.process import GaussianProcess

__all__ = ["TransformerPipeline", "load_transformer_pipeline"]


class _MeanChannels:
    """``out[:, :c]``: the prediction half of a learned-variance output."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, out: Tensor) -> Tensor:
        return out[:, : self.channels]

    def __repr__(self) -> str:
        return f"first {self.channels} channels"


class TransformerPipeline(LatentPipeline):
    """A :class:`~reverie.pipelines._base.LatentPipeline` whose network is a DiT-style
    ``transformer`` called by ``fn(x, t, **cond)``. Latent sides must be multiples of the
    transformer's ``patch_size``; the default size is ``sample_size`` latents."""

    def __init__(self, *, transformer: nn.Module, fn: nn.Module, process: GaussianProcess,
                 prediction: str, **kwargs: Any):
        self.transformer = transformer
        cfg = transformer.config
        self._patch = int(cfg.patch_size)  # check_size: latent sides in whole patches
        c = int(cfg.in_channels)
        learned = int(cfg.out_channels or c) == 2 * c  # learned variance: keep the first half
        den = Denoiser(fn, process, prediction, output_transform=_MeanChannels(c) if learned
                       else None)
        super().__init__(network=transformer, base_denoiser=den, process=process,
                         prediction=prediction, **kwargs)

    def default_size(self) -> tuple[int, int]:
        size = int(self.transformer.config.sample_size) * self.vae_scale_factor
        return size, size


def load_transformer_pipeline(
    cls: type[TransformerPipeline],
    folder: Path,
    components: dict[str, tuple[str, ...] | None],
    transformer_class: str,
    *,
    name: str | None,
    dtype: torch.dtype | None,
    process: GaussianProcess | None,
    prediction: str | None,
    trust_pickle: bool,
    device: str | torch.device | None,
    **extra: Any,
) -> Any:
    """``cls`` built from the components of ``folder`` (``extra`` goes to ``cls`` too). A
    legacy ``Transformer2DModel`` entry (older hub folders) loads as whatever diffusers maps it
    to, which must be ``transformer_class``."""
    import diffusers

    pipeline = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    modules = load_components(folder, components, pipeline=pipeline, trust_pickle=trust_pickle,
                              dtype=dtype, device=device)
    net = modules["transformer"]
    if not isinstance(net, getattr(diffusers, transformer_class)):
        raise ValueError(f"{folder}/transformer loads as a {type(net).__name__}; a {pipeline} "
                         f"needs a {transformer_class}")
    spec_process, spec_prediction = read_process(folder, modules["scheduler"])
    return cls(
        name=name or folder.name,
        process=process or spec_process,
        prediction=prediction or spec_prediction,
        scheduler_config=modules.pop("scheduler"),
        path=folder,
        **modules,
        **extra,
    )

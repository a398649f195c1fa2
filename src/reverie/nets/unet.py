"""diffusers ``UNet2DModel`` configurations for small images."""

from __future__ import annotations

from typing import Any

__all__ = ["digits_unet_config", "unet_for_images"]


def digits_unet_config(num_classes: int = 10) -> dict[str, Any]:
    """The ``UNet2DModel`` config of the bundled ``digits`` model: 8x8x1 images, resolutions
    8 -> 4 -> 2 with 32/64/64 channels, self-attention at 4x4 and 2x2, and
    ``num_classes + 1`` class embeddings (the last one is the null class for classifier-free
    guidance). About 1.2 M parameters."""
    return dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16,
        norm_num_groups=16,
        num_class_embeds=num_classes + 1,
    )


def unet_for_images(channels: int, size: int, num_classes: int | None = None):
    """A small ``UNet2DModel`` for ``[channels, size, size]`` images (``size`` a multiple of 4),
    class-conditional with a null class when ``num_classes`` is given."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("image models need diffusers (pip install diffusers)") from err
    if size % 4:
        raise ValueError(f"image size must be a multiple of 4 for the 3-level UNet, got {size}")
    cfg = digits_unet_config(num_classes or 0)
    cfg.update(sample_size=size, in_channels=channels, out_channels=channels)
    if not num_classes:
        cfg["num_class_embeds"] = None
    return UNet2DModel(**cfg)

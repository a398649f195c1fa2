"""Shared fixtures: exact reference models and processes."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.reference import Gaussian, GaussianMixture

# Test tensors are small: one thread avoids oversubscription on shared machines.
torch.set_num_threads(1)


def all_processes():
    return [
        reverie.VP.linear(),
        reverie.VPLinear(),
        reverie.VPCosine(),
        reverie.VE(),
        reverie.EDM(),
        reverie.RectifiedFlow(),
    ]


@pytest.fixture
def mixture() -> GaussianMixture:
    """Three well-separated 2-D modes with unequal weights and full covariances."""
    covs = torch.tensor(
        [[[0.30, 0.10], [0.10, 0.20]], [[0.20, -0.05], [-0.05, 0.25]], [[0.15, 0.0], [0.0, 0.40]]]
    )
    return GaussianMixture([[-2.5, 0.0], [2.5, 0.5], [0.0, 3.5]], covs, [0.5, 0.3, 0.2])


@pytest.fixture
def gaussian() -> Gaussian:
    return Gaussian([0.5, -1.0], [[1.0, 0.6], [0.6, 0.8]])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_unet(seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny random diffusers ``UNet2DModel`` (8x8, one channel); ``kw`` overrides its config."""
    import diffusers

    torch.manual_seed(seed)
    cfg = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    cfg.update(kw)
    return diffusers.UNet2DModel(**cfg).eval()

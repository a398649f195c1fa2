"""Shared fixtures for the search tests: a small exact Gaussian mixture under a rectified flow
with a linear reward, whose tilted target is known in closed form."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.reference import GaussianMixture, TiltedMixture


@pytest.fixture(autouse=True)
def _one_thread():
    # these tests make many small tensor calls; one thread avoids oversubscribed cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def problem():
    """Four modes in 2-D; the tilt moves most of the mass to the modes at +x and +y."""
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], 0.16,
                          [0.4, 0.2, 0.2, 0.2])
    process = reverie.RectifiedFlow()
    tilt = TiltedMixture(mix, [0.75, 0.5], temperature=1.0)
    return mix, process, mix.denoiser(process), tilt

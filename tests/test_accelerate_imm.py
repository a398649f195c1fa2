"""Inductive moment matching (reverie.accelerate.imm): the pushforward sampler is exact at any
step count when given the exact flow map of a Gaussian law (and a 15%-off map is rejected);
a tiny pushforward trained from scratch on a 2-D Gaussian mixture beats the exact denoiser's
DDIM at the same (few) network calls, and the untrained network fails the same check."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.accelerate import METHODS
from reverie.accelerate.imm import IMM, IMMNet, imm_sample, imm_train, laplace_mmd
from reverie.metrics import sliced_wasserstein
from reverie.reference.gaussian import Gaussian, GaussianMixture

PROC = reverie.RectifiedFlow()


def _law_of(pushforward, steps):
    """Mean and covariance of the (linear) sampler's output, exactly."""
    b = imm_sample(pushforward, torch.zeros(1, 2, dtype=torch.float64), steps, PROC)
    a = imm_sample(pushforward, torch.eye(2, dtype=torch.float64), steps, PROC) - b
    return b[0], a.T @ a


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_is_exact_with_the_exact_pushforward(steps):
    law = Gaussian([0.5, -1.0], [[1.0, 0.6], [0.6, 0.8]])
    exact = lambda x, s, t: law.ode_map(x, float(t[0]), float(s[0]), PROC)  # noqa: E731
    mean, cov = _law_of(exact, steps)
    assert float((mean - law.means[0]).abs().max()) < 1e-12
    assert float((cov - law.covariances[0]).abs().max()) < 1e-12
    # the flow map of a law with a 15% larger covariance is rejected by the same check
    off = Gaussian([0.5, -1.0], 1.15 * law.covariances[0])
    wrong = lambda x, s, t: off.ode_map(x, float(t[0]), float(s[0]), PROC)  # noqa: E731
    assert float((_law_of(wrong, steps)[1] - law.covariances[0]).abs().max()) > 0.1


def test_trained_pushforward_beats_the_exact_denoiser_at_two_steps():
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5], [0.0, -2.5]], 0.09)
    data = mix.sample(20000, torch.Generator().manual_seed(0)).float()
    ref = mix.sample(2000, torch.Generator().manual_seed(1))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))

    def sw(x):
        return sliced_wasserstein(x.double(), ref, 128, torch.Generator().manual_seed(3))

    torch.manual_seed(0)
    model = imm_train(data, net=IMMNet(2, 64, 2), iters=200, groups=16, particles=8, lr=3e-3,
                      k=6, sigma_data=1.5)  # 3 s
    ddim2 = sw(reverie.sample(mix.denoiser(PROC), noise.double(), "ddim", 2))  # measured 0.61
    assert sw(model.sample(noise, 2)) < 0.8 * ddim2  # measured 0.38
    assert sw(model.sample(noise, 1)) < 0.5 * sw(  # measured 0.53 against 1.63 (the mean)
        reverie.sample(mix.denoiser(PROC), noise.double(), "ddim", 1))
    torch.manual_seed(0)
    untrained = IMM(IMMNet(2, 64, 2), PROC, 1.5)  # measured 1.0
    assert sw(untrained.sample(noise, 2)) > 0.8 * ddim2
    assert model.history[0]["iters"] == 200 and METHODS["imm"].kind == "train"


def test_laplace_mmd_and_errors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 2, generator=g)
    assert float(laplace_mmd(x, x, 1.0).abs().max()) < 1e-6
    assert bool((laplace_mmd(x, x + 1.0, 1.0) > 0.05).all())
    with pytest.raises(ValueError, match="particles"):
        imm_train(torch.randn(10, 2), particles=1)
    with pytest.raises(ValueError, match="times must decrease"):
        imm_sample(lambda x, s, t: x, torch.randn(3, 2), 1, PROC,
                   times=torch.tensor([0.0, 1.0]))

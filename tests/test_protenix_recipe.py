"""Protenix-Mini's few-step sampler setting as a reverie recipe (docs/protenix.md): AF3's
sampler (Abramson et al. 2024, Alg. 18) with Protenix-Mini's settings (gamma0 = 0, noise scale
1, step scale eta = 1) is reverie's `euler` sampler on AF3's noise levels; checked step for
step against a direct transcription of Alg. 18, and for accuracy against an exact law."""

from __future__ import annotations

import torch

import reverie
from reverie.process import EDM
from reverie.reference import GaussianMixture

SIGMA_DATA = 16.0  # AF3: coordinates in Angstrom, sigma_data = 16


def af3_levels(steps: int, s_max: float = 160.0, s_min: float = 4e-4, p: float = 7.0):
    """AF3's noise schedule: sigma_data (s_max^(1/p) + t (s_min^(1/p) - s_max^(1/p)))^p at
    t = 0, 1/N, ..., 1 (N + 1 levels, the last one not zero)."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return SIGMA_DATA * (s_max ** (1 / p) + t * (s_min ** (1 / p) - s_max ** (1 / p))) ** p


def recipe(den, z, steps: int):
    """The recipe: reverie's euler on AF3's levels and a final step to sigma = 0 (the
    denoised output at the last level, which AF3 returns undenoised at sigma_min)."""
    grid = torch.cat([af3_levels(steps), torch.zeros(1, dtype=torch.float64)])
    return reverie.sample(den, z, "euler", steps + 1, grid=grid)


def af3_sample(den, z, levels, eta: float = 1.0):
    """Alg. 18 with gamma0 = 0 (no noise is added, so lambda plays no part): an Euler step of
    the probability-flow ODE stretched by the step scale eta."""
    x = levels[0] * z
    for c_prev, c in zip(levels[:-1], levels[1:]):
        t = torch.full((len(x),), float(c_prev), dtype=torch.float64)
        delta = (x - den(x, t)) / c_prev  # the ODE's slope
        x = x + eta * (c - c_prev) * delta  # eta = 1: a plain Euler step
    return x


def test_protenix_mini_setting_is_euler_on_af3_levels():
    """Two-step (the paper) and five-step (the released configs) runs of Alg. 18 with
    Protenix-Mini's setting, denoised at the last level, equal the recipe to 1e-9 relative;
    AF3's own step scale 1.5 does not (so the check can fail)."""
    law = GaussianMixture(torch.tensor([[-20.0, 5.0, 0.0], [15.0, -10.0, 8.0]]),
                          torch.tensor([[[30.0, 5, 0], [5, 20, 0], [0, 0, 10]],
                                        [[15.0, 0, 0], [0, 25, -4], [0, -4, 12]]]),
                          torch.tensor([0.6, 0.4]))
    proc = EDM(sigma_min=SIGMA_DATA * 4e-4, sigma_max=SIGMA_DATA * 160, sigma_data=SIGMA_DATA)
    den = law.denoiser(proc)
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (2, 5):
        levels = af3_levels(steps)
        last = torch.full((len(z),), float(levels[-1]), dtype=torch.float64)
        ref = den(af3_sample(den, z, levels), last)
        x = recipe(den, z, steps)
        assert float((x - ref).abs().max() / ref.abs().max()) < 1e-9
        wrong = den(af3_sample(den, z, levels, eta=1.5), last)
        assert float((wrong - ref).abs().max()) > 1.0
    # accuracy against the exact law: the class split and the spread improve with steps
    exact = law.sample(20000, torch.Generator().manual_seed(1))

    def w1_x(x):  # 1-D Wasserstein-1 of the first coordinate (sorted quantiles)
        q = torch.linspace(0.005, 0.995, 199, dtype=torch.float64)
        return float((torch.quantile(x[:, 0], q) - torch.quantile(exact[:, 0], q)).abs().mean())

    err = {n: w1_x(recipe(den, z, n)) for n in (2, 5, 50)}
    # measured 12.4, 6.3, 0.72 (Angstrom; 500 samples): few steps pay on a two-mode law
    assert err[2] > err[5] > 2 * err[50] and err[50] < 1.5, err

"""Training an energy-parameterised diffusion model (Du et al. 2023, "Reduce, Reuse, Recycle",
sec. 4): the wrapper's score is ``-grad E`` exactly, and DSM through the gradient learns the
log-density differences of the data law."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reverie.compose import (
    MALA,
    EnergyNet,
    Product,
    has_energy,
    sample_with_corrector,
    train_energy,
)
from reverie.nets.mlp import MLP
from reverie.process import VPLinear
from reverie.reference import GaussianMixture

PROC = VPLinear()



class _GaussianF(nn.Module):
    """``f`` whose ``<x, f>`` energy is the exact one of N(m, v I) under PROC:
    ``phi = sigma (|x|^2 / 2 - alpha <m, x>) / (alpha^2 v + sigma^2)``."""

    def __init__(self, m, v):
        super().__init__()
        self.m, self.v = m, v

    def forward(self, x, t):
        a, s = PROC.alpha(t)[:, None].to(x), PROC.sigma(t)[:, None].to(x)
        return s * (x / 2 - a * self.m) / (a**2 * self.v + s**2)


def _exact_gaussian(x, t, m, v):
    a, s = PROC.alpha(torch.tensor(t)), PROC.sigma(torch.tensor(t))
    var = float(a**2 * v + s**2)
    return -((x - float(a) * m) ** 2).sum(1) / (2 * var), -(x - float(a) * m) / var


def test_energy_wrapper_score_is_minus_grad_energy_exactly():
    m, v = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.05, 0.2, 0.4):
        ld_ex, score_ex = _exact_gaussian(x, t, m, v)
        good = EnergyNet(_GaussianF(m, v)).eval().model(PROC)
        ld, score = good.log_density_and_score(x, t)
        assert torch.allclose(score, score_ex, atol=1e-10)
        assert torch.allclose(ld - ld.mean(), ld_ex - ld_ex.mean(), atol=1e-10)
        # the eps prediction of the net is -sigma * score (what DSM trains)
        eps = EnergyNet(_GaussianF(m, v)).eval()(x, torch.full((64,), t, dtype=torch.float64))
        assert torch.allclose(eps, -float(PROC.sigma(torch.tensor(t))) * score_ex, atol=1e-10)
        # must-fail sibling: the energy of a variance 15% off
        bad = EnergyNet(_GaussianF(m, 1.15 * v)).eval().model(PROC)
        assert (bad.score(x, t) - score_ex).abs().max() > 1e-3


def _mixture():
    return GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
                           torch.tensor([0.3, 0.4], dtype=torch.float64) ** 2)


def _energy_error(model, mix, t):
    """Mean |learned - exact| log-density difference (centred over samples of q_t's data)."""
    x = mix.sample(256, torch.Generator().manual_seed(1))
    tt = torch.tensor(t, dtype=torch.float64)
    ex = mix.log_prob_at(x, PROC.alpha(tt), PROC.sigma(tt))
    ld = model.log_density(x.float(), t).detach().double()
    return float(((ld - ld.mean()) - (ex - ex.mean())).abs().mean())


def test_dsm_training_learns_log_density_differences():
    mix = _mixture()
    data = mix.sample(2000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    net = EnergyNet(MLP(2, hidden=64, depth=2), form="dot")
    untrained = EnergyNet(MLP(2, hidden=64, depth=2), form="dot").eval().model(PROC)
    res, model = train_energy(net, data, PROC, steps=300, batch_size=128, lr=3e-3, warmup=20,
                              ema_decay=0.99, log_every=50)
    assert res.losses[-1] < 0.6 * res.losses[0]  # DSM loss goes down through grad_x E
    assert has_energy(model) and has_energy(Product([model, model]))
    for t, bound in ((0.05, 0.3), (0.2, 0.08)):
        assert _energy_error(model, mix, t) < bound
        assert _energy_error(untrained, mix, t) > 1.5 * bound  # must-fail sibling
    # the learned energy composes and runs Metropolis-adjusted MCMC
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    out = sample_with_corrector(Product([model, model]), noise, MALA(steps=1), "ddpm", 10)
    assert out.x0.shape == (32, 2) and torch.isfinite(out.x0).all()
    assert 0 < float(out.acceptance.mean()) and float(out.acceptance.max()) <= 1


def test_energy_net_bad_input():
    with pytest.raises(ValueError, match="unknown energy form"):
        EnergyNet(MLP(2, hidden=8, depth=1), form="square")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        EnergyNet(lambda x, t: x)
    with pytest.raises(TypeError, match="EnergyNet"):
        train_energy(MLP(2, hidden=8, depth=1), torch.zeros(4, 2), PROC)
    class _OneColumn(nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    bad = EnergyNet(_OneColumn()).eval()
    with pytest.raises(ValueError, match="shaped like x"):
        bad.energy(torch.zeros(4, 2), torch.zeros(4))

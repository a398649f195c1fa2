"""reverie.timeseries.dgm2: DGM² (Wu et al. 2021) in miniature on sparse series of hidden regimes
with an exactly known law. The forward filter is checked against brute force over every regime
path, the gated dynamic mixture against the Markov chain it equals when the gate is constant,
and the fitted model's forecasts against the exact forecast law; each check has a sibling that a
wrong variant fails."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reverie.timeseries.dgm2 import (
    DGM2,
    RegimeSeries,
    ar1_forecast,
    crps_mixture,
    fit_dgm2,
    last_value_forecast,
    mixture_crps,
    sparse_mask,
)

P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64)
SMALL = RegimeSeries(torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.5]]), P,
                     torch.tensor([0.5, 0.3, 0.2]), noise=0.7)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force(law: RegimeSeries, x, mask, horizon: int):
    """log p(x_obs), p(z_{T-1} | x_obs) and p(z_{T-1+horizon} | x_obs) by summing over all
    K^T regime paths."""
    k, T = law.transition.shape[0], x.shape[0]
    total, last = 0.0, torch.zeros(k, dtype=torch.float64)
    for path in itertools.product(range(k), repeat=T):
        w = float(law.initial[path[0]])
        for a, b in zip(path, path[1:]):
            w *= float(law.transition[a, b])
        for t, z in enumerate(path):
            obs = mask[t]
            r = (x[t][obs] - law.means[z][obs]) / law.noise
            w *= math.exp(float(-0.5 * (r**2).sum())) / (2 * math.pi * law.noise**2) ** (
                int(obs.sum()) / 2)
        total += w
        last[path[-1]] += w
    post = last / total
    return math.log(total), post, post @ torch.linalg.matrix_power(law.transition, horizon)


def test_forward_filter_is_exact_by_brute_force():
    """log p(x_obs), the regime posterior and the 2-step forecast weights of a sparse series
    (one step fully missing) match the sum over all 3^5 paths; a filter that reads the missing
    entries as zeros, or the transposed transition matrix, does not."""
    x = SMALL.sample(1, 5, gen(0))[0]
    mask = sparse_mask(x.shape, 0.5, gen(1))
    mask[0, 2] = False
    ll, post, ahead = brute_force(SMALL, x[0], mask[0], 2)
    f_ll, f_post, _ = SMALL.filter(x, mask)
    weights, _, _ = SMALL.forecast_law(x, mask, 2)
    assert float(f_ll[0]) == pytest.approx(ll, abs=1e-10)
    assert torch.allclose(f_post[0, -1], post, atol=1e-12)
    assert torch.allclose(weights[0, 1], ahead, atol=1e-12)
    zeros = torch.where(mask, x, torch.zeros_like(x))
    assert abs(float(SMALL.filter(zeros, torch.ones_like(mask))[0][0]) - ll) > 0.5
    transposed = RegimeSeries(SMALL.means, P.T / P.T.sum(1, keepdim=True), SMALL.initial, 0.7)
    assert abs(float(transposed.filter(x, mask)[0][0]) - ll) > 0.05


def test_constant_gate_is_the_mixed_markov_chain():
    """With the gate's entropy weight at 0, beta = sigmoid(b) is constant and the dynamic
    Gaussian mixture is the Markov chain with transition (1 - beta) P + beta 1 phi^T: the model's
    log-likelihood is that chain's, exactly (brute force); with beta dropped it is not."""
    model = DGM2(2, 3).double()
    with torch.no_grad():
        model.centres.copy_(SMALL.means)
        model.log_std.fill_(math.log(0.7))
        model.trans_logits.copy_(P.log())
        model.basic_logits.copy_(torch.tensor([0.2, -0.4, 0.1]))
        model.init_logits.copy_(SMALL.initial.log())
        model.gate.copy_(torch.tensor([0.0, 0.3], dtype=torch.float64))
    beta, phi = torch.sigmoid(torch.tensor(0.3, dtype=torch.float64)), torch.softmax(
        model.basic_logits.detach(), 0)
    mixed = RegimeSeries(SMALL.means, (1 - beta) * P + beta * phi, SMALL.initial, 0.7)
    x = SMALL.sample(1, 4, gen(2))[0]
    mask = sparse_mask(x.shape, 0.6, gen(3))
    with torch.no_grad():
        ll = float(model.log_likelihood(x, mask)[0])
    assert ll == pytest.approx(brute_force(mixed, x[0], mask[0], 1)[0], abs=1e-10)
    assert abs(ll - brute_force(SMALL, x[0], mask[0], 1)[0]) > 1e-3


@pytest.fixture(scope="module")
def fitted():
    """DGM² with 3 clusters fitted (30 Adam steps) on 64 series of 16 steps with 70% of the
    entries missing, of the default 3-regime law."""
    law = RegimeSeries()
    x, _ = law.sample(64, 16, gen(4))
    mask = sparse_mask(x.shape, 0.3, gen(5))
    torch.manual_seed(0)
    return law, x, mask, fit_dgm2(x, mask, 3, steps=30, generator=gen(6))


def _mse_ratio(law, point, xt, mt, horizon):
    """E|point - Y|^2 / E|E[Y | past] - Y|^2 under the exact forecast law (1 is the floor)."""
    w, mu, sd = law.forecast_law(xt, mt, horizon)
    mean = w @ mu
    var = (w @ (mu**2) + sd**2 - mean**2).sum(-1)
    return float((((point.double() - mean) ** 2).sum(-1) + var).sum() / var.sum())


def test_fitted_dgm2_forecasts_at_the_exact_floor(fitted):
    """On 40 new sparse series, 3 steps ahead: the fitted centres are the true regime means (up
    to order, within 0.2) and the forecast mean is within 5% of the exact conditional mean's
    expected squared error; a one-cluster DGM² (no cluster dynamics), the AR(1) and the last-value
    baselines are rejected by the same check (> 1.15). The forecast samples' CRPS is near the
    exact law's (closed form) and the last-value baseline's far above it."""
    law, x, mask, model = fitted
    c = model.centres.detach().double()
    order = [int(torch.cdist(law.means[i:i + 1], c).argmin()) for i in range(3)]
    assert sorted(order) == [0, 1, 2]
    assert float((c[order] - law.means).abs().max()) < 0.2
    xt, _ = law.sample(40, 16, gen(7))
    mt = sparse_mask(xt.shape, 0.3, gen(8))
    w, mu, sd = model.forecast_law(xt.float(), mt, 3)
    assert _mse_ratio(law, (w @ mu).detach(), xt, mt, 3) < 1.05
    one = fit_dgm2(x, mask, 1, steps=30, generator=gen(9))
    w1, mu1, _ = one.forecast_law(xt.float(), mt, 3)
    assert _mse_ratio(law, (w1 @ mu1).detach(), xt, mt, 3) > 1.15
    assert _mse_ratio(law, ar1_forecast(xt, mt, 3), xt, mt, 3) > 1.15
    assert _mse_ratio(law, last_value_forecast(xt, mt, 3), xt, mt, 3) > 1.15
    ew, emu, esd = law.forecast_law(xt[:8], mt[:8], 1)
    s = model.forecast(xt[:8].float(), mt[:8], 1, 400, gen(10)).double()
    crps = [crps_mixture(s[i, :, 0], ew[i, 0], emu, esd) for i in range(8)]
    exact = [mixture_crps(ew[i, 0], emu, esd) for i in range(8)]  # closed form, the floor
    draws = law.means[torch.multinomial(ew[0, 0], 4000, replacement=True, generator=gen(11))]
    draws = draws + esd * torch.randn(4000, 3, generator=gen(12), dtype=torch.float64)
    assert crps_mixture(draws, ew[0, 0], emu, esd) == pytest.approx(exact[0], rel=0.03)
    last = [crps_mixture(last_value_forecast(xt, mt, 1)[i, 0], ew[i, 0], emu, esd)
            for i in range(8)]
    assert sum(crps) / sum(exact) < 1.05 and sum(last) / sum(exact) > 1.3


def test_bad_input_is_rejected():
    law = RegimeSeries()
    x, _ = law.sample(2, 5, gen(0))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        law.filter(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"x must be \[n, T, d = 3\]"):
        law.filter(x[..., :2], torch.ones(2, 5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="stochastic"):
        RegimeSeries(transition=torch.ones(3, 3))
    with pytest.raises(ValueError, match="never observed|observes nothing"):
        fit_dgm2(x, torch.zeros_like(x, dtype=torch.bool), 2, steps=1)

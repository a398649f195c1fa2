"""BayesDiff (reverie.inverse.bayesdiff): the propagated pixel-wise variance against exact
variances on a Gaussian reference, and the diagonal last-layer Laplace against its closed form."""

import pytest
import torch

import reverie
from reverie.inverse import LastLayerLaplace, bayesdiff, last_layer_laplace

PROC = reverie.VP.linear()
F64 = torch.float64
S = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=F64)  # data: N(0, diag S^2)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class GaussianEpsNet(torch.nn.Module):
    """The exact eps-prediction of N(0, diag S^2) data, written as a last linear layer on the
    features phi = [k_t x, 1] per pixel with k_t = sigma_t / (alpha_t^2 S^2 + sigma_t^2): the
    MAP weights are [1, 0] and bias 0."""

    def __init__(self):
        super().__init__()
        self.last = torch.nn.Linear(2, 1).to(F64)
        with torch.no_grad():
            self.last.weight.copy_(torch.tensor([[1.0, 0.0]]))
            self.last.bias.zero_()

    def forward(self, x, t):
        a, s = PROC.alpha(t)[:, None], PROC.sigma(t)[:, None]
        k = s / (a**2 * S**2 + s**2)
        phi = torch.stack([k * x, torch.ones_like(x)], -1)  # [B, 4, 2]
        return self.last(phi).squeeze(-1)


def _laplace(weight_var=0.0, bias_var=0.0):
    net = GaussianEpsNet()
    return LastLayerLaplace(net, net.last, PROC, torch.tensor([[weight_var, 0.0]], dtype=F64),
                            torch.tensor([bias_var], dtype=F64))


def test_sampling_variance_is_the_exact_posterior_variance():
    """With no weight uncertainty and the DDPM sampler (eta = 1) started at x_t, the predicted
    pixel variance converges to Var(x_0 | x_t) = S^2 sigma^2 / (alpha^2 S^2 + sigma^2) (the
    exact Gaussian posterior) at first order in the steps (the draws of x_t are standardised,
    so the moments are exact for this linear eps; what remains is the time discretisation):
    within 5% at 200 steps, 2.5x further at 50. The prior variance S^2 fails the same check;
    the deterministic sampler (eta = 0) predicts no variance."""
    t0 = float(PROC.t_from_log_snr(torch.tensor(0.0, dtype=F64)))  # alpha = sigma
    a, s = float(PROC.alpha(torch.tensor(t0))), float(PROC.sigma(torch.tensor(t0)))
    exact = S**2 * s**2 / (a**2 * S**2 + s**2)
    x = torch.randn(3, 4, generator=_gen(0), dtype=F64)

    def run(steps, eta=1.0):
        grid = torch.linspace(t0, PROC.t_clean, steps + 1, dtype=F64)
        return bayesdiff(_laplace(), x, grid, eta=eta, mc=8, generator=_gen(1))

    out, coarse = run(200), run(50)
    err = float((out.variance / exact - 1).abs().max())
    assert err < 0.05, (out.variance, exact)
    assert float((coarse.variance / exact - 1).abs().max()) > 2.5 * err
    assert float((S**2 / exact - 1).abs().max()) > 0.05  # the prior variance is rejected
    assert float(run(50, eta=0.0).variance.max()) < 1e-12
    # the mean is the posterior mean E[x_0 | x_t] = alpha S^2 x / (alpha^2 S^2 + sigma^2)
    post_mean = a * S**2 * x / (a**2 * S**2 + s**2)
    assert float((out.mean - post_mean).abs().max()) < 0.02


def test_weight_uncertainty_propagates_exactly():
    """With weight uncertainty and eta = 0, the iteration principle is exact when each step
    draws its weights independently: the predicted variance matches brute-force Monte Carlo
    of 20000 such chains within 8%, and a 15% larger weight variance does not."""
    wv, bv = 0.02, 0.01
    grid = torch.linspace(PROC.t_max, PROC.t_clean, 41, dtype=F64)
    x = torch.randn(1, 4, generator=_gen(2), dtype=F64)
    pred = bayesdiff(_laplace(wv, bv), x, grid, eta=0.0, mc=8, generator=_gen(3)).variance[0]
    wrong = bayesdiff(_laplace(1.15 * wv, 1.15 * bv), x, grid, eta=0.0, mc=8,
                      generator=_gen(3)).variance[0]
    # brute force: every chain and step its own weights W1 ~ N(1, wv), b ~ N(0, bv)
    g, n = _gen(4), 20000
    chains = x.expand(n, 4).clone()
    net = GaussianEpsNet()
    for i in range(len(grid) - 1):
        t = torch.full((n,), float(grid[i]), dtype=F64)
        a_t, s_t, a_s = PROC.alpha(grid[i]), PROC.sigma(grid[i]), PROC.alpha(grid[i + 1])
        s_s = PROC.sigma(grid[i + 1])
        k = s_t / (a_t**2 * S**2 + s_t**2)
        w = 1 + wv**0.5 * torch.randn(n, 1, generator=g, dtype=F64)
        b = bv**0.5 * torch.randn(n, 1, generator=g, dtype=F64)
        if i == 0:
            assert torch.allclose(net(chains, t), k * chains)  # the MAP net: w = 1, b = 0
        eps = w * k * chains + b
        chains = a_s / a_t * chains + (s_s - a_s * s_t / a_t) * eps
    truth = chains.var(0)
    assert float((pred / truth - 1).abs().max()) < 0.08, (pred, truth)
    assert float((wrong / truth - 1).abs().max()) > 0.08


def test_last_layer_laplace_precision_is_the_closed_form():
    """Diagonal precision sum phi^2 / noise_var + prior_precision for each weight and
    count / noise_var + prior_precision for the bias, computed here from the same noisings."""
    net = GaussianEpsNet()
    data = S * torch.randn(5, 4, generator=_gen(5), dtype=F64)
    lap = last_layer_laplace(net, net.last, PROC, data, prior_precision=2.0, noise_var=0.5,
                             generator=_gen(6))
    g = _gen(6)
    t = PROC.t_clean + (PROC.t_max - PROC.t_clean) * torch.rand(5, generator=g, dtype=F64)
    xt = PROC.alpha(t)[:, None] * data + PROC.sigma(t)[:, None] * torch.randn(
        5, 4, generator=g, dtype=F64)
    _, phi = lap.features(xt, t)
    want = 1 / ((phi.reshape(-1, 2) ** 2).sum(0) / 0.5 + 2.0)
    assert torch.allclose(lap.weight_var[0], want, rtol=1e-12)
    assert float(lap.bias_var[0]) == pytest.approx(1 / (20 / 0.5 + 2.0), rel=1e-12)
    # four times the data: the weight variance shrinks about four-fold (not unchanged)
    big = last_layer_laplace(net, net.last, PROC, data.repeat(4, 1), prior_precision=2.0,
                             noise_var=0.5, generator=_gen(6))
    ratio = float(lap.weight_var[0, 1] / big.weight_var[0, 1])
    assert 3.0 < ratio < 4.5, ratio


def test_bayesdiff_bad_input():
    net = GaussianEpsNet()
    with pytest.raises(TypeError, match="torch.nn.Linear or torch.nn.Conv2d"):
        last_layer_laplace(net, net, PROC, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least one clean example"):
        last_layer_laplace(net, net.last, PROC, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="eta"):
        bayesdiff(_laplace(), torch.zeros(1, 4), torch.tensor([1.0, 0.0]), eta=2.0)

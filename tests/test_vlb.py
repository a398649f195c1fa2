"""The discrete chain's variational bound and learned reverse variances (Sohl-Dickstein et al.
2015) against the closed forms of Gaussian data N(m, s2): the exact reverse conditional is then
Gaussian with variance V_{k-1} beta_k / V_k, and the bound with the exact kernels is the exact
log-likelihood up to the prior gap KL(q(x_T) || N(0, 1))."""

import math

import pytest
import torch

import reverie
from reverie.process import VP
from reverie.reference import Gaussian
from reverie.train.vlb import VLBModel, train_vlb
from reverie.vlb import (
    ReverseVariance,
    chain_tables,
    gaussian_optimal_variance,
    nll_bits_per_dim,
    vlb_terms,
)

M, S2 = 0.7, 0.3
PROC = VP.from_betas(torch.linspace(0.02, 0.6, 12, dtype=torch.float64))
DATA = Gaussian([M], S2)


def _fixed(proc, var):
    rv = ReverseVariance(proc, "free")
    with torch.no_grad():
        rv.param.copy_(var.log())
    return rv


def test_optimal_variance_matches_the_exact_reverse_conditional():
    # brute force: Var(x_{k-1} | x_k) of the joint Gaussian (x_{k-1}, x_k) from the tables
    abar, beta, bt = chain_tables(PROC)
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    v_prev, v = prev * S2 + 1 - prev, abar * S2 + 1 - abar
    cov = (1 - beta).sqrt() * v_prev
    exact = v_prev - cov**2 / v
    opt = gaussian_optimal_variance(PROC, S2)
    torch.testing.assert_close(opt, exact)
    # it lies strictly between DDPM's two fixed choices beta_tilde and beta for s2 < 1
    assert bool((opt[1:] > bt[1:]).all() and (opt < beta).all())
    assert gaussian_optimal_variance(PROC, 1.0).sub(beta).abs().max() < 1e-12  # s2 = 1: beta


def test_bound_with_exact_kernels_is_the_exact_log_likelihood_and_others_are_larger():
    x0 = DATA.sample(20000, torch.Generator().manual_seed(1)).double()
    nll = 0.5 * (x0[:, 0] - M) ** 2 / S2 + 0.5 * math.log(2 * math.pi * S2)
    abar_t = float(PROC.alphas_cumprod[-1])
    v_t, m_t = abar_t * S2 + 1 - abar_t, math.sqrt(abar_t) * M
    prior_gap = 0.5 * (v_t + m_t**2 - 1 - math.log(v_t))  # E[L] - E[-log q(x0)] exactly
    opt = gaussian_optimal_variance(PROC, S2)
    den = DATA.denoiser(PROC)

    def bound(var, d=den):
        return vlb_terms(d, var, x0, PROC, torch.Generator().manual_seed(0)).sum(1)

    gap = bound(opt) - nll
    se = float(gap.std()) / math.sqrt(gap.numel())
    assert abs(float(gap.mean()) - prior_gap) < 4 * se + 1e-3, (float(gap.mean()), prior_gap, se)
    # any other kernel gives a strictly larger bound (same noise draws): 15% off variances,
    # DDPM's fixed beta_tilde, and a 15%-off mean (the denoiser's x0 scaled)
    base = float(bound(opt).mean())
    for var in (opt * 1.15, opt / 1.15, ReverseVariance(PROC).variances().detach()):
        assert float(bound(var).mean()) > base + 0.02
    assert float(bound(opt, lambda x, t: 1.15 * den(x, t)).mean()) > base + 0.02
    bpd = nll_bits_per_dim(den, opt, x0, PROC, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bpd, bound(opt) / math.log(2))


def test_training_by_the_bound_learns_the_closed_form_variances():
    data = DATA.sample(4096, torch.Generator().manual_seed(2)).double()
    opt = gaussian_optimal_variance(PROC, S2)
    model = VLBModel(DATA.denoiser(PROC), ReverseVariance(PROC, "interpolate"))
    err0 = float((model.variance.variances().detach() / opt - 1).abs().max())
    res = train_vlb(model, data, steps=80, batch_size=256, lr=0.1, ema_decay=0.8)
    err = float((res.ema.variance.variances().detach() / opt - 1).abs().max())
    assert err < 0.08 < err0, (err, err0)  # beta_tilde at the start is far off
    assert res.losses[-1] < res.losses[0]


class _Affine(torch.nn.Module):
    """``x0_hat = a_k x + b_k`` per step: the family holding the exact denoiser of Gaussian data."""

    def __init__(self, steps):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))

    def forward(self, x, t):
        return self.a[int(t)] * x + self.b[int(t)]


def test_joint_training_of_mean_and_variance_reaches_the_exact_kernels():
    data = DATA.sample(4096, torch.Generator().manual_seed(2)).double()
    test = DATA.sample(20000, torch.Generator().manual_seed(3)).double()
    opt = gaussian_optimal_variance(PROC, S2)
    model = VLBModel(_Affine(12), ReverseVariance(PROC, "free"))

    def bound(den, var):
        with torch.no_grad():
            terms = vlb_terms(den, var, test, PROC, torch.Generator().manual_seed(0))
        return float(terms.sum(1).mean())

    exact = bound(DATA.denoiser(PROC), opt)
    untrained = bound(model.denoiser, model.variance)
    res = train_vlb(model, data, steps=200, batch_size=256, lr=0.05, ema_decay=0.8)
    trained = bound(res.ema.denoiser, res.ema.variance)
    assert abs(trained - exact) < 0.01 < untrained - exact - 1, (trained, exact, untrained)
    assert float((res.ema.variance.variances().detach() / opt - 1).abs().max()) < 0.08


@pytest.mark.parametrize("factor, ok", [(1.0, True), (1.15, False), (1 / 1.15, False)])
def test_ddpm_with_the_optimal_variances_samples_the_exact_law(factor, ok):
    # on the chain's own grid the last step returns E[x0 | x_1]: law N(m, s2 - Var(x0 | x_1))
    opt = gaussian_optimal_variance(PROC, S2)
    grid = torch.arange(11, -2, -1, dtype=torch.float64)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = reverie.sample(DATA.denoiser(PROC), noise, "ddpm", grid=grid,
                       generator=torch.Generator().manual_seed(1),
                       variance=_fixed(PROC, opt * factor))
    rel = abs(float(x.var()) / (S2 - float(opt[0])) - 1)
    assert (rel < 0.05) == ok, rel


def test_bad_input():
    with pytest.raises(TypeError, match="VP"):
        ReverseVariance(reverie.EDM())
    with pytest.raises(ValueError, match="mode"):
        ReverseVariance(PROC, "learned")
    with pytest.raises(ValueError, match="one per step"):
        vlb_terms(DATA.denoiser(PROC), torch.ones(3), torch.zeros(2, 1), PROC)
    with pytest.raises(ValueError, match="per chain step"):
        ReverseVariance(PROC)(5.5, 4.5)
    with pytest.raises(ValueError, match="data_var"):
        gaussian_optimal_variance(PROC, 0.0)

"""Blackout diffusion (Santos et al. 2023): binomial marginals of the death process against
the matrix exponential of its generator, and recovery of a count law by the reverse samplers
with the exact posterior (a model built for a wrong death rate is rejected)."""

import math

import _exact as E
import numpy as np
import pytest
import torch

from reverie.discrete.blackout import BlackoutProcess
from reverie.reference import MarkovChain

N = 6
PRIOR = torch.tensor([0.05, 0.3, 0.1, 0.05, 0.2, 0.25, 0.05], dtype=torch.float64)


def test_marginals_are_the_matrix_exponential_of_the_death_generator():
    proc = BlackoutProcess(N, death_rate=0.7)
    g = torch.zeros(N + 1, N + 1, dtype=torch.float64)
    for m in range(1, N + 1):  # m -> m - 1 at rate 0.7 m
        g[m, m - 1], g[m, m] = 0.7 * m, -0.7 * m
    n0 = torch.arange(N + 1)
    for t in (0.0, 0.4, 2.0):
        assert torch.allclose(proc.marginal(n0, t), torch.linalg.matrix_exp(g * t), atol=1e-12)
    x = proc.add_noise(torch.full((40000,), 5), 0.4, torch.Generator().manual_seed(0))
    freq = torch.bincount(x, minlength=N + 1).double() / 40000
    row = proc.marginal(torch.tensor(5), 0.4)
    assert E.tv(freq, row) < E.tv_tolerance(row, 40000)
    wrong = BlackoutProcess(N, death_rate=0.7 * 1.15).marginal(torch.tensor(5), 0.4)
    assert E.tv(freq, wrong) > E.tv_tolerance(row, 40000)


def test_reverse_rate_is_the_time_reversal_of_the_death_rate():
    """Given n0 the birth rate n -> n+1 equals r (n+1) q_t(n+1 | n0) / q_t(n | n0)."""
    proc = BlackoutProcess(N, death_rate=0.7)
    n0, t = torch.tensor(5), 0.9
    q = proc.marginal(n0, t)
    for n in range(5):
        want = 0.7 * (n + 1) * q[n + 1] / q[n]
        got = proc.reverse_rate(n0.double(), torch.tensor(n), t)
        assert torch.isclose(got, want)


def _counts_law(x):
    return torch.bincount(x.reshape(-1), minlength=N + 1).double() / x.numel()


def test_exact_bridge_recovers_the_data_law_and_rejects_a_wrong_death_rate():
    """20000 counts: the binomial bridge with the exact posterior is exact at 4 steps (TV
    within the noise bound); the exact posterior of a process with the death rate 15% off,
    fed to the same sampler, is rejected."""
    proc = BlackoutProcess(N)
    n = 20000
    x = proc.sample(proc.exact_model(PRIOR), n, 1, 4, generator=torch.Generator().manual_seed(1))
    assert E.tv(_counts_law(x), PRIOR) < E.tv_tolerance(PRIOR, n)
    off = BlackoutProcess(N, death_rate=1.15)
    y = proc.sample(off.exact_model(PRIOR), n, 1, 4, generator=torch.Generator().manual_seed(1))
    assert E.tv(_counts_law(y), PRIOR) > E.tv_tolerance(PRIOR, n)


def _tau_law(proc, steps):
    """Exact law of Poisson tau-leaping on one count (births clamped to N), enumerated."""
    post = proc.exact_model(PRIOR)
    law = torch.zeros(N + 1, dtype=torch.float64)
    law[0] = 1.0
    times = proc.grid(steps)
    for t, s in zip(times[:-1], times[1:]):
        states = torch.arange(N + 1).reshape(-1, 1)
        p0 = post(states, torch.full((N + 1,), t, dtype=torch.float64))[:, 0]  # [n, n0]
        if s == 0.0:
            law = law @ p0
            break
        pt, ps = math.exp(-t), math.exp(-s)
        mean = (p0 * torch.arange(N + 1)).sum(-1)
        trans = torch.zeros(N + 1, N + 1, dtype=torch.float64)
        for m in range(N + 1):
            lam = max(float(mean[m]) - m, 0.0) * math.log((1 - pt) / (1 - ps))
            for k in range(N + 1 - m):
                pk = math.exp(-lam) * lam**k / math.factorial(k)
                trans[m, m + k] += pk if m + k < N else 0.0
            trans[m, N] += 1.0 - trans[m].sum()
        law = law @ trans
    return law


def test_tau_leaping_follows_its_law_which_converges():
    """The tau-leaping sampler follows its enumerated law; that law approaches the data as the
    steps grow (measured TV 0.095, 0.065, 0.043, 0.027 at 8..64 steps on the grid uniform in
    p_t: order ~0.6, the frozen E[n0 | n_t] against the 1/(1 - p_t) birth hazard near t = 0;
    a grid quadratic in 1 - p_t reaches first order but is worse at these step counts)."""
    proc = BlackoutProcess(N)
    tvs = [E.tv(_tau_law(proc, s), PRIOR) for s in (8, 16, 32, 64)]
    assert all(b < a / 1.4 for a, b in zip(tvs, tvs[1:])), tvs
    n = 20000
    law = _tau_law(proc, 16)
    x = proc.sample(proc.exact_model(PRIOR), n, 1, 16, method="tau_leaping",
                    generator=torch.Generator().manual_seed(2))
    assert E.tv(_counts_law(x), law) < E.tv_tolerance(law, n)
    assert E.tv(_counts_law(x), PRIOR) > E.tv_tolerance(PRIOR, n)  # its bias is visible


def test_bad_input_is_refused():
    proc = BlackoutProcess(N)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        proc.add_noise(torch.tensor([1, -1]), 0.5)
    with pytest.raises(ValueError, match="counts must be <= max_count"):
        proc.marginal(torch.tensor([N + 1]), 0.5)
    with pytest.raises(ValueError, match="death_rate must be > 0"):
        BlackoutProcess(N, death_rate=0.0)
    with pytest.raises(ValueError, match="unknown method"):
        proc.sample(proc.exact_model(PRIOR), 2, 1, 4, method="euler")
    with pytest.raises(ValueError, match="prior must be"):
        proc.exact_model(PRIOR[:-1])
    mean = proc.mean_model(proc.exact_model(PRIOR))
    with pytest.raises(ValueError, match="samples with method='tau_leaping'"):
        proc.sample(mean, 2, 1, 4, method="bridge")
    with pytest.raises(ValueError, match=r"E\[n0 \| n_t\] must be >= n_t"):
        proc.nelbo(lambda n, t: n.double() - 1, torch.tensor([[3]]))
    with pytest.raises(ValueError, match="the sequence model has 4 values"):
        proc.exact_model(MarkovChain.random(4))


def _quadrature_nelbo(proc, mean, nodes=48):
    """int_{p_T}^1 E_{n_t ~ Binomial(n0, p)} integrand dp / (1 - p) for every n0 = 0..N, the
    expectation enumerated, the integral by Gauss-Legendre in u with 1 - p = (1 - p_T) u^2."""
    p_end = float(proc.survival(proc.t_end))
    u, w = np.polynomial.legendre.leggauss(nodes)
    n0 = torch.arange(N + 1).reshape(-1, 1)
    out = torch.zeros(N + 1, dtype=torch.float64)
    for ui, wi in zip((u + 1) / 2, w / 2):
        t = -math.log(1 - (1 - p_end) * ui**2)
        q = proc.marginal(n0[:, 0], t)  # [n0, n_t]
        for k in range(N + 1):
            ok = n0[:, 0] >= k
            n = torch.full((int(ok.sum()), 1), k)
            val = proc.nelbo_integrand(mean(n, torch.full((len(n),), t, dtype=torch.float64)),
                                       n0[ok], n)
            out[ok] += wi * 2 / ui * q[ok, k] * val
    return out


def test_nelbo_is_the_exact_nll_with_the_exact_rates_and_rejects_rates_15pc_off():
    """Blackout's loss: with the exact E[n0 | n_t] the bound (quadrature, n_t enumerated) is
    -log p(n0) for every n0; birth rates 15% off give a larger expected bound (the loss is
    minimised by the exact rates); the Monte-Carlo estimate agrees with the quadrature."""
    proc = BlackoutProcess(N)
    mean = proc.mean_model(proc.exact_model(PRIOR))
    exact = _quadrature_nelbo(proc, mean)
    assert torch.allclose(exact, -PRIOR.log(), atol=1e-4), exact + PRIOR.log()
    for scale in (1.15, 0.85):
        off = _quadrature_nelbo(proc, lambda n, t, c=scale: n + c * (mean(n, t) - n))
        assert float((PRIOR * off).sum()) > float((PRIOR * exact).sum()) + 0.02
    x0 = torch.tensor([[4]]).repeat(8000, 1)
    est = proc.nelbo(mean, x0, samples=2, generator=torch.Generator().manual_seed(0))
    assert abs(float(est.mean()) - float(exact[4])) < 4 * float(est.std()) / 8000**0.5


def test_nelbo_of_dependent_sites_with_the_exact_chain_posterior():
    """Three sites whose counts follow a Markov chain over 0..3: the Monte-Carlo bound with
    the exact E[n0^i | n_t] (forward-backward) is -log p(n0) within its standard error; the
    per-site posterior that ignores the neighbours is a worse model and is rejected."""
    chain = MarkovChain.random(4, torch.Generator().manual_seed(1), sharpness=2.0)
    proc = BlackoutProcess(3)
    x0 = chain.sample(6000, 3, torch.Generator().manual_seed(0))
    nll = -chain.log_prob(x0)
    gap = proc.nelbo(proc.mean_model(proc.exact_model(chain)), x0, samples=2,
                     generator=torch.Generator().manual_seed(1)) - nll
    se = float(gap.std()) / 6000**0.5
    assert abs(float(gap.mean())) < 4 * se + 1e-3, (float(gap.mean()), se)
    marg = torch.zeros(4, dtype=torch.float64)
    seqs, p = chain.joint(3)
    marg.index_add_(0, seqs[:, 1], p)  # the middle site's marginal, used for every site
    indep = proc.nelbo(proc.mean_model(proc.exact_model(marg)), x0, samples=2,
                       generator=torch.Generator().manual_seed(1)) - nll
    assert float(indep.mean()) > 8 * se, (float(indep.mean()), se)

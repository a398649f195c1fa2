"""Blackout diffusion (Santos et al. 2023): binomial marginals of the death process against
the matrix exponential of its generator, and recovery of a count law by the reverse samplers
with the exact posterior (a model built for a wrong death rate is rejected)."""

import math

import _exact as E
import pytest
import torch

from reverie.discrete.blackout import BlackoutProcess

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

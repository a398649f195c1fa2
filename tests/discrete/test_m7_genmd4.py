"""GenMD4 state-dependent masking (Shi et al. 2024): forward marginals, the ELBO against brute
force on a tiny vocabulary, and ancestral sampling with the exact denoiser."""

import itertools

import _exact as E
import numpy as np
import pytest
import torch

from reverie.discrete import MaskedProcess, nelbo
from reverie.discrete.genmd4 import GenMD4Process
from reverie.reference import MarkovChain

W = [0.5, 1.0, 3.0]  # per-token exponents: token 0 is masked early, token 2 late


@pytest.fixture(scope="module")
def small():
    return MarkovChain.random(3, torch.Generator().manual_seed(4), sharpness=1.5)


def test_forward_marginals_per_token_class():
    proc = GenMD4Process(W)
    x0 = torch.arange(3).repeat(20000, 1)
    for t in (0.3, 0.7):
        xt = proc.add_noise(x0, torch.full((20000,), t), generator=torch.Generator().manual_seed(0))
        masked = (xt == 3).double().mean(0)
        want = torch.tensor([t**w for w in W], dtype=torch.float64)
        assert torch.allclose(masked, want, atol=0.015)
        assert bool(((xt == x0) | (xt == 3)).all())


def _brute_nelbo(proc, den, x0, nodes=48):
    """int_0^1 E_{x_t ~ q(.|x0)} integrand dt: the expectation over the 2^L masking patterns
    enumerated, the time integral by Gauss-Legendre in u with t = u^2 (smooths t = 0)."""
    u, wq = np.polynomial.legendre.leggauss(nodes)
    u, wq = (u + 1) / 2, wq / 2
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    keep_p = lambda t: proc.alpha_v(torch.tensor(t)).gather(0, x0.reshape(-1)).reshape(x0.shape)  # noqa: E731
    for ui, wi in zip(u, wq):
        t = float(ui) ** 2
        a = keep_p(t)
        for pattern in itertools.product([0, 1], repeat=x0.shape[1]):
            m = torch.tensor(pattern, dtype=torch.bool).expand_as(x0)
            prob = torch.where(m, 1 - a, a).prod(-1)
            xt = torch.where(m, torch.full_like(x0, proc.mask_id), x0)
            tt = torch.full((x0.shape[0],), t, dtype=torch.float64)
            val = proc.nelbo_integrand(den(xt, tt).double(), xt, x0, tt)
            total += float(wi) * 2 * float(ui) * prob * val
    return total


def test_elbo_is_the_exact_nll_with_the_exact_denoiser_by_brute_force(small):
    """L = 3 over 3 tokens, all 27 sequences: the brute-force ELBO with the exact denoiser
    equals -log p(x0); with the state-independent posterior (MD4's evidence, ignoring that a
    masked position is more likely an early-masked token) the expected bound exceeds the
    entropy (it bounds that model's own likelihood, so single sequences may fall below)."""
    proc = GenMD4Process(W)
    x0, p = small.joint(3)
    exact = _brute_nelbo(proc, proc.exact_denoiser(small), x0)
    nll = -torch.log(p)
    assert torch.allclose(exact, nll, atol=2e-4), (exact - nll).abs().max()
    md4 = small.denoiser(MaskedProcess())  # p(x0 | unmasked positions) only
    loose = _brute_nelbo(proc, md4, x0)
    assert float((p * loose).sum()) > float((p * nll).sum()) + 0.05


def test_monte_carlo_nelbo_matches_brute_force(small):
    proc = GenMD4Process(W)
    den = proc.exact_denoiser(small)
    x0 = torch.tensor([[0, 2, 1]]).repeat(4000, 1)
    est = nelbo(den, x0, samples=2, generator=torch.Generator().manual_seed(1))
    exact = float(-small.log_prob(x0[:1]))
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / 4000**0.5 + 1e-3


def test_sampler_with_the_exact_denoiser_reproduces_the_law(small):
    """Ancestral GenMD4 sampling, L = 3, 16 steps: TV to the exact joint within the noise
    bound; the same sampler fed MD4's state-independent posterior is rejected."""
    proc = GenMD4Process(W)
    _, p = small.joint(3)
    n = 10000
    x = proc.sample(proc.exact_denoiser(small), n, 3, 16, torch.Generator().manual_seed(2))
    assert E.tv(E.empirical(x, 3), p) < E.tv_tolerance(p, n)
    y = proc.sample(small.denoiser(MaskedProcess()), n, 3, 16, torch.Generator().manual_seed(2))
    assert E.tv(E.empirical(y, 3), p) > E.tv_tolerance(p, n)


def test_bad_input_is_refused(small):
    with pytest.raises(ValueError, match="exponents must be finite and > 0"):
        GenMD4Process([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="t must lie in"):
        GenMD4Process(W).alpha_v(1.5)
    with pytest.raises(ValueError, match="tokens must lie in"):
        GenMD4Process(W).add_noise(torch.tensor([[0, 3]]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="the model has 3 tokens"):
        GenMD4Process([1.0, 2.0]).exact_denoiser(small)

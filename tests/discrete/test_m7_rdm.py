"""RDM's reparameterized training objective (Zheng et al. 2023): the ELBO weight reproduces the
masked-diffusion NELBO, the reweighted ("linear") loss against its value by enumeration (plain
and coupled time sampling), and its minimiser is the exact posterior (tempered posteriors,
15% off, are rejected)."""

import itertools

import numpy as np
import pytest
import torch

from reverie.discrete import UniformProcess, nelbo
from reverie.discrete.rdm import rdm_loss
from reverie.reference import MarkovChain

L = 3


@pytest.fixture(scope="module")
def chain():
    return MarkovChain.random(3, torch.Generator().manual_seed(0), sharpness=2.0)


class Tempered:
    """The exact posterior with its logits scaled by ``tau`` (a deliberately wrong model)."""

    def __init__(self, den, tau):
        self.den, self.tau = den, tau
        self.process, self.mask_id, self.vocab_size = den.process, den.mask_id, den.vocab_size

    def __call__(self, x, t):
        return torch.log_softmax(self.den(x, t) * self.tau, -1)


def _exact_linear_loss(chain, nodes=24):
    """E_{x0 ~ p} int_0^1 (1 - t) E_{x_t} sum_{i masked} -log p(x0^i | x_t) dt, the masking
    patterns and sequences enumerated (linear schedule: masked with probability t)."""
    seqs, p = chain.joint(L)
    den = chain.denoiser()
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for pattern in itertools.product([0, 1], repeat=L):
        m = torch.tensor(pattern, dtype=torch.bool).expand_as(seqs)
        xt = torch.where(m, torch.full_like(seqs, 3), seqs)
        ce = (-den(xt, torch.ones(len(seqs))).double().gather(-1, seqs.unsqueeze(-1))
              .squeeze(-1) * m).sum(-1)
        k = sum(pattern)
        # int_0^1 (1 - t) t^k (1 - t)^(L - k) dt by Gauss-Legendre (a polynomial: exact)
        tt = (u + 1) / 2
        integral = float(((1 - tt) * tt**k * (1 - tt) ** (L - k) * w / 2).sum())
        total += integral * float((p * ce).sum())
    return total


def test_elbo_weight_is_the_masked_nelbo(chain):
    x0 = chain.sample(64, L, torch.Generator().manual_seed(0))
    a = rdm_loss(chain.denoiser(), x0, reweighting="elbo",
                 generator=torch.Generator().manual_seed(1))
    b = nelbo(chain.denoiser(), x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_linear_reweighting_matches_enumeration_plain_and_coupled(chain):
    """RDM's default weight 1 - t: the Monte-Carlo loss of the exact posterior over 20000
    draws of x0 equals its enumerated value within 4 standard errors, with independent times
    and with RDM's coupled pair of times (nested masks)."""
    exact = _exact_linear_loss(chain)
    x0 = chain.sample(20000, L, torch.Generator().manual_seed(2))
    for coupled in (False, True):
        est = rdm_loss(chain.denoiser(), x0, coupled=coupled,
                       generator=torch.Generator().manual_seed(3))
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / 20000**0.5, coupled


def test_the_exact_posterior_minimises_the_reweighted_loss(chain):
    """With the same draws, posteriors tempered 15% (logits x 1.15 or x 0.85) have a larger
    RDM loss than the exact one, by more than 4 standard errors of the paired difference."""
    x0 = chain.sample(20000, L, torch.Generator().manual_seed(4))
    base = rdm_loss(chain.denoiser(), x0, generator=torch.Generator().manual_seed(5))
    for tau in (1.15, 0.85):
        off = rdm_loss(Tempered(chain.denoiser(), tau), x0,
                       generator=torch.Generator().manual_seed(5))
        diff = off - base
        assert float(diff.mean()) > 4 * float(diff.std()) / 20000**0.5, tau


def test_bad_input_is_refused(chain):
    x0 = torch.zeros(2, L, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown reweighting"):
        rdm_loss(chain.denoiser(), x0, reweighting="reciprocal")
    with pytest.raises(ValueError, match="for absorbing"):
        rdm_loss(chain.denoiser(UniformProcess()), x0)

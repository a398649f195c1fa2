"""Discrete posterior sampling (reverie.discrete.posterior) against the exact posterior of the
reference Markov chain (enumeration over 3^4 sequences): each method's TV to the exact law is
within the sampling-noise bound plus a stated bias allowance, and the same check rejects a
deliberately wrong variant (the prior used as the posterior, a flip probability 15% off, the
likelihood ignored, random-order decoding instead of anchored remasking)."""

from __future__ import annotations

import pytest
import torch
from _exact import empirical, tv, tv_tolerance

from reverie.discrete import UniformProcess
from reverie.discrete.posterior import (
    POSTERIOR,
    Classifier,
    MaskedObservation,
    NoisyChannel,
    posterior_law,
    sample,
)

N = 2000
BIAS = 0.03  # allowance for each method's own bias at the budgets below, on top of the noise bound


def gen(seed: int = 2) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dist(samples: torch.Tensor, law: torch.Tensor) -> float:
    return tv(empirical(samples, 3), law)


def test_registry_lists_the_methods():
    assert list(POSTERIOR) == ["sgdd", "aps", "smc"]


def test_exact_posterior_marginals_match_forward_backward(chain):
    """The enumerated posterior (the reference below) against the chain's forward-backward
    marginals for the same per-position evidence."""
    obs = NoisyChannel([0, 2, 1, 0], 0.3, 3)
    seqs, post = posterior_law(chain, obs)
    fb = chain.posterior(obs.table.exp()[None])[0]
    for i in range(4):
        marg = torch.stack([post[seqs[:, i] == v].sum() for v in range(3)])
        torch.testing.assert_close(marg, fb[i], rtol=1e-10, atol=1e-12)


def test_sgdd_noisy_channel_and_a_wrong_flip(chain):
    """SGDD (uniform-noise prior, closed-form likelihood step) is close to p(x | y); SGDD
    told a flip probability 15% too high, and the prior itself, are rejected."""
    obs = NoisyChannel([1, 1, 1, 1], 0.5, 3)
    wrong = NoisyChannel([1, 1, 1, 1], 0.575, 3)
    _, post = posterior_law(chain, obs)
    tol = tv_tolerance(post, N) + BIAS
    prior = chain.denoiser(UniformProcess())
    good = sample(prior, obs, "sgdd", n=N, generator=gen(), outer_steps=50)
    bad = sample(prior, wrong, "sgdd", n=N, generator=gen(), outer_steps=50)
    assert good.nfe == 100
    assert dist(good.samples, post) < tol < dist(bad.samples, post)
    assert dist(chain.sample(N, 4, gen(3)), post) > tol  # the prior used as the posterior


def test_sgdd_masked_observation_holds_the_observed_tokens(chain):
    y, seen = torch.tensor([0, 2, 1, 0]), torch.tensor([True, False, False, True])
    obs = MaskedObservation(y, seen, 3)
    _, post = posterior_law(chain, obs)
    res = sample(chain.denoiser(UniformProcess()), obs, "sgdd", n=N, generator=gen(),
                 outer_steps=50)
    assert bool((res.samples[:, seen] == y[seen]).all())
    assert dist(res.samples, post) < tv_tolerance(post, N) + BIAS


def test_aps_anchored_remasking_on_an_inpainting_problem(chain):
    """APS with anchored remasking decodes the observed (certain) tokens first and lands on
    the exact posterior here; ignoring the likelihood (scale 0) or decoding in random order
    (first_hitting instead of anchored remasking) is rejected by the same check."""
    obs = MaskedObservation([0, 2, 1, 2], torch.tensor([False, True, False, True]), 3)
    _, post = posterior_law(chain, obs)
    tol = tv_tolerance(post, N) + BIAS
    res = sample(chain, obs, "aps", n=N, generator=gen())
    assert res.nfe == 4
    assert dist(res.samples, post) < tol
    no_lik = sample(chain, obs, "aps", n=N, generator=gen(), scale=0.0)
    assert dist(no_lik.samples, post) > tol
    random_order = sample(chain, obs, "aps", n=N, generator=gen(), remasking="first_hitting")
    assert dist(random_order.samples, post) > tol


def test_smc_with_the_log_likelihood_as_reward(chain):
    obs = NoisyChannel([1, 1, 1, 1], 0.5, 3)
    _, post = posterior_law(chain, obs)
    tol = tv_tolerance(post, N) + BIAS
    res = sample(chain, obs, "smc", n=N, generator=gen(), budget=64, sampler="first_hitting")
    assert res.nfe <= 64
    assert dist(res.samples, post) < tol
    one = sample(chain, obs, "smc", n=N, generator=gen(), budget=4, sampler="first_hitting")
    assert dist(one.samples, post) > tol  # one particle: the prior, not the posterior


def test_classifier_scores_are_exact_differences(chain):
    """The classifier's guidance table is log p(y | x with x_i = v) - log p(y | x)."""
    cls = Classifier(lambda x: -(x == 2).sum(-1).double() ** 2, 4, 3)
    anchor = torch.tensor([[2, 0, 2, 1]])
    g = cls.token_scores(anchor)[0]
    for i in range(4):
        for v in range(3):
            x = anchor.clone()
            x[0, i] = v
            want = cls.log_likelihood(x) - cls.log_likelihood(anchor)
            assert float(g[i, v]) == pytest.approx(float(want[0]))


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [-0.1, 1.5])
def test_flip_probability_outside_the_unit_interval(flip):
    with pytest.raises(ValueError, match="flip must lie in"):
        NoisyChannel([0, 1], flip, 3)


def test_observation_errors(chain):
    obs = NoisyChannel([0, 1, 2, 0], 0.1, 3)
    with pytest.raises(ValueError, match="length 4 but the sequences have 5"):
        sample(chain, obs, "aps", length=5)
    with pytest.raises(ValueError, match="token ids in"):
        NoisyChannel([0, 3], 0.1, 3)
    with pytest.raises(ValueError, match="over 4 symbols but the model predicts 3"):
        sample(chain, NoisyChannel([0, 1, 3, 0], 0.1, 4), "aps")
    with pytest.raises(ValueError, match="needs a uniform-diffusion prior"):
        sample(chain, obs, "sgdd")
    with pytest.raises(ValueError, match="observed must be a bool tensor"):
        MaskedObservation([0, 1], [1, 0], 3)
    bad = Classifier(lambda x: torch.zeros(x.shape[0], 2), 4, 3)
    with pytest.raises(ValueError, match="one value per sequence"):
        sample(chain, bad, "aps")
    with pytest.raises(ValueError, match="unknown discrete posterior method"):
        sample(chain, obs, "dps")

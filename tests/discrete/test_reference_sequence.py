"""The exact sequence models against brute-force enumeration."""

import itertools

import pytest
import torch

from reverie.discrete import UniformProcess
from reverie.reference import HiddenMarkovModel, MarkovChain


@pytest.fixture(scope="module")
def hmm():
    g = torch.Generator().manual_seed(5)
    return HiddenMarkovModel(
        torch.rand(2, generator=g), torch.rand(2, 2, generator=g), torch.rand(2, 3, generator=g)
    )


def _brute_joint(model, length):
    """p(x) by summing over hidden paths."""
    seqs = list(itertools.product(range(model.vocab_size), repeat=length))
    out = []
    for x in seqs:
        tot = 0.0
        for z in itertools.product(range(model.num_states), repeat=length):
            p = model.initial[z[0]] * model.emission[z[0], x[0]]
            for i in range(1, length):
                p = p * model.transition[z[i - 1], z[i]] * model.emission[z[i], x[i]]
            tot += float(p)
        out.append(tot)
    return torch.tensor(seqs), torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("which", ["hmm", "chain"])
def test_joint_matches_brute_force(which, hmm, chain):
    model = hmm if which == "hmm" else chain
    seqs, p = _brute_joint(model, 4)
    s2, p2 = model.joint(4)
    assert torch.equal(seqs, s2)
    torch.testing.assert_close(p2, p, rtol=1e-12, atol=1e-15)
    assert float(p2.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("which", ["hmm", "chain"])
def test_conditionals_of_every_mask_pattern(which, hmm, chain):
    """p(x_i = v | unmasked positions) equals the ratio of sums of the joint, for every mask
    pattern of a length-4 sequence."""
    model = hmm if which == "hmm" else chain
    L, V = 4, model.vocab_size
    seqs, p = model.joint(L)
    x_ref = torch.tensor([2, 0, 1, 2])
    for pattern in itertools.product([0, 1], repeat=L):
        m = torch.tensor(pattern, dtype=torch.bool)
        x = torch.where(m, torch.full_like(x_ref, V), x_ref)
        got = model.conditionals(x[None], V)[0]
        consistent = ((seqs == x_ref) | m).all(-1)
        for i in range(L):
            want = torch.stack([p[consistent & (seqs[:, i] == v)].sum() for v in range(V)])
            torch.testing.assert_close(got[i], want / want.sum(), rtol=1e-10, atol=1e-12)


def test_uniform_noise_posterior_matches_brute_force(chain):
    """p(x0_i | x_t) under uniform noise (evidence alpha [v = x_t] + (1 - alpha) / V)."""
    L, V, a = 3, 3, 0.4
    seqs, p = chain.joint(L)
    xt = torch.tensor([1, 1, 0])
    lik = (a * (seqs == xt).double() + (1 - a) / V).prod(-1)
    post_seq = p * lik
    den = chain.denoiser(UniformProcess("linear"))
    got = den(xt[None], torch.tensor([0.6])).double().exp()[0]  # alpha(0.6) = 0.4
    for i in range(L):
        want = torch.stack([post_seq[seqs[:, i] == v].sum() for v in range(V)])
        torch.testing.assert_close(got[i], want / want.sum(), rtol=1e-5, atol=1e-7)


def test_exact_samples_and_tv(chain):
    n, L = 20000, 4
    x = chain.sample(n, L, torch.Generator().manual_seed(0))
    floor = chain.tv_noise_floor(n, L)
    tv = chain.total_variation(x)
    assert 0.5 * floor < tv < 1.6 * floor
    # per-sample generators: sample k depends on its own generator only
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    a = chain.sample(3, L, gens)
    b = chain.sample(1, L, [torch.Generator().manual_seed(11)])
    assert torch.equal(a[1], b[0])


def test_log_prob_and_errors(chain):
    x = torch.tensor([[0, 1, 2]])
    lp = chain.log_prob(x)
    want = torch.log(chain.initial[0] * chain.transition[0, 1] * chain.transition[1, 2])
    assert float(lp[0]) == pytest.approx(float(want), rel=1e-12)
    with pytest.raises(ValueError, match="tokens must lie"):
        chain.log_prob(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="shape"):
        MarkovChain([0.5, 0.5], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="non-negative"):
        MarkovChain([0.5, -0.5], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="mask token"):
        chain.denoiser(mask_id=7)

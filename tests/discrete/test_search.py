"""Reward search for masked LMs (reverie.discrete.search) against exact answers of the
reference Markov chain: the tilted law p(x) exp(r(x)/T) / Z by enumeration (FK steering and
best-of-N with softmax selection), the exact expected best-of-N reward (E[max of N]), and
beam search against that exact random-search value; each check rejects a wrong variant."""

from __future__ import annotations

import json
import re

import pytest
import torch
from _exact import empirical, tv, tv_tolerance

from reverie.discrete import generate
from reverie.discrete.constraints import JsonSchema, Regex, TokenAutomaton, Vocabulary
from reverie.discrete.search import METHODS, run, tilted_law
from reverie.reference import MarkovChain

N = 2000
BIAS = 0.03  # allowance for each method's own bias, on top of the sampling-noise bound
T = 0.5


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def additive(length: int, seed: int = 3):
    w = torch.randn(length, 3, generator=gen(seed))

    def reward(x: torch.Tensor) -> torch.Tensor:
        return w[torch.arange(x.shape[1]), x].sum(-1).double()

    return reward


def expected_max(chain, reward, length: int, k: int) -> float:
    """E[max of k independent rewards] under the chain: sum_r r (F(r)^k - F(r-)^k)."""
    seqs, p = chain.joint(length)
    r, order = reward(seqs).sort()
    cdf = p[order].cumsum(0)
    prev = torch.cat([torch.zeros(1, dtype=cdf.dtype), cdf[:-1]])
    return float((r * (cdf**k - prev**k)).sum())


def test_registry_lists_the_methods():
    assert list(METHODS) == ["best_of_n", "fk", "beam"]
    assert METHODS["fk"].tilted and not METHODS["beam"].tilted


@pytest.mark.parametrize("method,options", [("fk", {}), ("fk", {"lookahead": 4}),
                                            ("best_of_n", {"selection": "softmax"})])
def test_tilted_law_is_reached(chain, method, options):
    """32 particles (96 NFE) per sample: FK steering (with the argmax estimate or a 4-draw
    soft value) and softmax best-of-N are within the noise bound of the exact tilted law."""
    law, tol, kw = _tilted_case(chain)
    res = run(chain, additive(3), method, generator=gen(), **kw, **options)
    assert res.nfe <= 96
    assert tv(empirical(res.samples, 3), law) < tol


def test_random_search_and_the_prior_are_rejected(chain):
    """The same check rejects plain best-of-N (random search, max selection) at the same
    budget and the untilted prior."""
    law, tol, kw = _tilted_case(chain)
    rand = run(chain, additive(3), "best_of_n", generator=gen(), **kw)
    assert tv(empirical(rand.samples, 3), law) > tol
    assert tv(empirical(chain.sample(N, 3, gen(4)), 3), law) > tol


def _tilted_case(chain):
    _, law = tilted_law(chain, additive(3), 3, T)
    kw = dict(budget=96, n=N, temperature=T, length=3, sampler="first_hitting")
    return law, tv_tolerance(law, N) + BIAS, kw


def test_best_of_n_mean_reward_is_the_exact_expected_maximum(chain):
    length, reward = 4, additive(4)
    res = run(chain, reward, "best_of_n", budget=32, n=N, length=length, generator=gen(),
              sampler="first_hitting")
    assert res.info["samples_per_result"] == 8
    exact = expected_max(chain, reward, length, 8)
    se = float(res.rewards.std()) / N**0.5
    assert abs(float(res.rewards.mean()) - exact) < 4 * se
    soft = run(chain, reward, "best_of_n", budget=32, n=N, length=length, generator=gen(),
               sampler="first_hitting", selection="softmax")
    assert abs(float(soft.rewards.mean()) - exact) > 4 * se  # not the maximum of 8


def test_beam_search_beats_random_search_at_equal_nfe(chain):
    """Beam search with the reward as verifier returns a higher mean reward than the exact
    best-of-N value at the same NFE; with a random verifier it does not."""
    length, reward = 4, additive(4)
    res = run(chain, reward, "beam", budget=64, n=500, length=length, generator=gen(),
              sampler="first_hitting", children=4)
    k = res.nfe // 4  # best-of-N with the same NFE draws nfe / NFE(sample) samples
    random_search = expected_max(chain, reward, length, k)
    se = float(res.rewards.std()) / 500**0.5
    assert float(res.rewards.mean()) > random_search + 4 * se

    noise = gen(7)
    blind = run(chain, lambda x: torch.rand(x.shape[0], generator=noise, dtype=torch.float64),
                "beam", budget=64, n=500, length=length, generator=gen(),
                sampler="first_hitting", children=4)
    assert float(reward(blind.samples).mean()) < random_search


def test_a_reward_and_a_regex_at_once():
    """Every method under a regular constraint: all outputs match, and the reward is higher
    than the constrained sampler's own; without the constraint some outputs do not match."""
    chain = MarkovChain.random(4, gen(0), sharpness=2.0)  # ids: 0 = EOS, 1..3 = a, b, c
    vocab = Vocabulary([None, "a", "b", "c"], eos_id=0, mask_id=4)
    pattern = "a[bc]+a?"
    auto = TokenAutomaton.from_regex(pattern, vocab)
    w = torch.randn(5, 4, generator=gen(3))

    def reward(x):
        return w[torch.arange(x.shape[1]), x].sum(-1).double()

    def valid(x):
        return [re.fullmatch(pattern, vocab.decode(row)) is not None for row in x.tolist()]

    base = generate(chain, length=5, steps=5, n=100, constraint=auto, generator=gen())
    assert all(valid(base))
    for method in METHODS:
        res = run(chain, reward, method, budget=40, n=100, length=5, constraint=auto,
                  generator=gen(), temperature=T)
        assert all(valid(res.samples)), method
        assert float(res.rewards.mean()) > float(reward(base).mean()) + 0.5, method
    free = run(chain, reward, "fk", budget=40, n=100, length=5, generator=gen(), temperature=T)
    assert not all(valid(free.samples))


def test_a_regex_on_a_model_with_a_tokenizer():
    """``Regex`` and ``JsonSchema`` (scaffolded) go through the model's tokenizer, as in
    ``generate``."""
    from test_constraints_generate import TOK, make_model

    model, _ = make_model(length=8)
    pattern = r"(cat|dog)s? [0-9]"

    def sevens(x):
        return torch.tensor([float("7" in TOK.decode(r)) for r in x.tolist()],
                            dtype=torch.float64)

    for method in METHODS:
        res = run(model, sevens, method, budget=32, n=8, length=8, constraint=Regex(pattern),
                  generator=gen())
        assert all(re.fullmatch(pattern, TOK.decode(r)) for r in res.samples.tolist()), method
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    res = run(model, sevens, "fk", budget=32, n=8, length=8, generator=gen(),
              constraint=JsonSchema(schema, scaffold=True))  # the skeleton is laid first
    assert all(isinstance(json.loads(TOK.decode(r))["a"], int) for r in res.samples.tolist())


def test_a_prompt_stays_fixed(chain):
    res = run(chain, additive(4), "fk", budget=24, n=50, length=4, prompt=torch.tensor([2]),
              generator=gen())
    assert bool((res.samples[:, 0] == 2).all()) and res.info["steps"] == 3


# ---- budgets and bad input -------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_budget_is_respected_and_a_budget_below_one_sample_refused(chain, method):
    reward = additive(4)
    for budget in (13, 29):
        res = run(chain, reward, method, budget=budget, n=3, length=4, generator=gen())
        assert res.nfe <= budget and res.nfe_total <= 3 * budget
        assert res.samples.shape == (3, 4)
        torch.testing.assert_close(res.rewards, reward(res.samples))
    with pytest.raises(ValueError, match="needs a budget of at least"):
        run(chain, reward, method, budget=3, length=4)


def test_bad_input(chain):
    reward = additive(4)
    with pytest.raises(ValueError, match="one value per sequence"):
        run(chain, lambda x: torch.zeros(x.shape[0], 2), "fk", budget=8, length=4)
    with pytest.raises(ValueError, match="finite"):
        run(chain, lambda x: torch.full((x.shape[0],), float("nan")), "fk", budget=8, length=4)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        run(chain, reward, "fk", budget=8, length=4, temperature=0.0)
    with pytest.raises(ValueError, match="pass budget="):
        run(chain, reward, "fk", length=4)
    with pytest.raises(ValueError, match="unknown discrete search method"):
        run(chain, reward, "mcts", budget=8, length=4)
    with pytest.raises(ValueError, match="has no option"):
        run(chain, reward, "fk", budget=8, length=4, children=3)
    with pytest.raises(ValueError, match="steps must be 4"):
        run(chain, reward, "fk", budget=8, length=4, steps=2, sampler="first_hitting")


def test_twisted_fk_reaches_the_tilted_law_with_few_particles(chain):
    """Twisted SMC (proposal="twisted": tokens drawn from the reward-tilted table, weights
    p/q times the soft-value ratio) is within the noise bound of the tilted law at 8
    particles (32 NFE, L = 4); the twisted proposal alone (one particle, no weighting) and
    plain FK at the same budget are rejected by the same check."""
    length, reward = 4, additive(4, seed=5)
    _, law = tilted_law(chain, reward, length, T)
    tol = tv_tolerance(law, N) + BIAS
    kw = dict(n=N, temperature=T, length=length, sampler="first_hitting", generator=gen())
    res = run(chain, reward, "fk", budget=8 * length, proposal="twisted", **kw)
    assert res.nfe <= 32 and res.info["proposal"] == "twisted"
    assert tv(empirical(res.samples, 3), law) < tol
    alone = run(chain, reward, "fk", budget=length, proposal="twisted", **kw)
    assert tv(empirical(alone.samples, 3), law) > tol
    plain = run(chain, reward, "fk", budget=8 * length, **kw)
    assert tv(empirical(plain.samples, 3), law) > tol


def test_twisted_fk_refuses_what_it_cannot_weigh(chain):
    auto = TokenAutomaton.from_regex("a[bc]+", Vocabulary([None, "a", "b"], eos_id=0,
                                                          mask_id=3))
    kw = dict(budget=12, length=3, proposal="twisted")
    with pytest.raises(ValueError, match="twisted.*low_confidence"):
        run(chain, additive(3), "fk", sampler="low_confidence", **kw)
    with pytest.raises(ValueError, match="lookahead must be 0"):
        run(chain, additive(3), "fk", lookahead=2, **kw)
    with pytest.raises(ValueError, match="proposal must be"):
        run(chain, additive(3), "fk", budget=12, length=3, proposal="tilted")
    with pytest.raises(ValueError, match="with a constraint"):
        run(chain, additive(3), "fk", constraint=auto, **kw)

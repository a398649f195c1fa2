"""Discrete Markov bridges (reverie.discrete.bridge) against brute force: the law of a pinned
CTMC on a time grid by enumerating every grid path with matrix exponentials (an independent
restatement), for the step-by-step h-transform sampler and the exact uniformisation sampler;
DMB's diagonalisable rate matrix against torch.linalg.matrix_exp, and its matrix-learning loss
against the mutual information of the end points. Each check rejects a wrong variant."""

from __future__ import annotations

import itertools

import pytest
import torch
from _exact import tv, tv_tolerance

from reverie.discrete.bridge import (
    DiagonalRate,
    MarkovBridge,
    TabularScore,
    exact_score,
    learn_rate,
    matrix_learning_loss,
    sample_reverse,
    score_entropy_loss,
    train_dmb,
)

N = 8000
TIMES = [0.0, 0.4, 0.9, 1.5]
START = [0.5, 0.3, 0.2]
END = [0.1, 0.2, 0.7]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rate(scale: float = 1.0) -> torch.Tensor:
    q = torch.rand(3, 3, dtype=torch.float64, generator=gen(5)) * scale
    q.fill_diagonal_(0)
    return q - torch.diag(q.sum(1))


def brute_force(q: torch.Tensor, times, start, end) -> torch.Tensor:
    """P(grid path) for the chain pinned at (a, b) ~ start x end: every path x_0..x_K weighs
    start(a) end(b) prod_k exp(dt_k Q)(x_k, x_{k+1}) / exp(T Q)(a, b)."""
    start, end = torch.tensor(start, dtype=torch.float64), torch.tensor(end, dtype=torch.float64)
    steps = [torch.linalg.matrix_exp(q * (s - t)) for t, s in zip(times, times[1:])]
    full = torch.linalg.matrix_exp(q * times[-1])
    law = []
    for path in itertools.product(range(3), repeat=len(times)):
        p = start[path[0]] * end[path[-1]] / full[path[0], path[-1]]
        for k, step in enumerate(steps):
            p = p * step[path[k], path[k + 1]]
        law.append(float(p))
    return torch.tensor(law, dtype=torch.float64)


def path_law(x: torch.Tensor) -> torch.Tensor:
    idx = (x * 3 ** torch.arange(x.shape[1] - 1, -1, -1)).sum(1)
    return torch.bincount(idx, minlength=3 ** x.shape[1]).double() / x.shape[0]


@pytest.mark.parametrize("sampler", ["grid", "paths"])
def test_bridge_samplers_match_path_enumeration(sampler):
    """Both samplers' grid paths are within the noise bound of the enumerated bridge law; the
    same check rejects the bridge of a rate 50% off (15% moves the pinned law by only 0.04 TV,
    below this noise bound) and the unpinned chain (no h-transform)."""
    q = random_rate()
    law = brute_force(q, TIMES, START, END)
    tol = tv_tolerance(law, N)
    bridge = MarkovBridge(q, START, END, horizon=TIMES[-1])
    assert torch.allclose(bridge.grid_law(TIMES)[1], law, atol=1e-12)
    if sampler == "grid":
        x = bridge.sample_grid(N, TIMES, gen())
    else:
        jumps, states = bridge.sample_paths(N, gen())
        x = MarkovBridge.at(jumps, states, TIMES)
    assert tv(path_law(x), law) < tol
    off = MarkovBridge(random_rate(1.5), START, END, horizon=TIMES[-1])
    assert tv(path_law(off.sample_grid(N, TIMES, gen())), law) > tol
    free = [torch.multinomial(torch.tensor(START, dtype=torch.float64), N, True, generator=gen())]
    for t, s in zip(TIMES, TIMES[1:]):
        step = torch.linalg.matrix_exp(q * (s - t))
        free.append(torch.multinomial(step[free[-1]], 1, generator=gen(1)).squeeze(1))
    assert tv(path_law(torch.stack(free, 1)), law) > tol


def test_the_chain_pinned_at_its_own_end_law_is_the_chain():
    """With start only, the end points are coupled by the chain itself, so the bridge's
    marginals are start @ exp(t Q) at every time (Doob's h-transform mixes back)."""
    q = random_rate()
    paths, p = MarkovBridge(q, START, horizon=1.5).grid_law(TIMES)
    for k, t in enumerate(TIMES):
        marg = torch.zeros(3, dtype=torch.float64).index_add_(0, paths[:, k], p)
        want = torch.tensor(START, dtype=torch.float64) @ torch.linalg.matrix_exp(q * t)
        assert torch.allclose(marg, want, atol=1e-12)
        if k == 2:
            assert not torch.allclose(marg, torch.tensor(START, dtype=torch.float64) @
                                      torch.linalg.matrix_exp(q * t * 1.15), atol=1e-3)


def test_diagonal_rate_is_a_valid_generator_with_a_closed_form_exponential():
    rate = DiagonalRate(4, permutation=[2, 0, 3, 1])
    with torch.no_grad():
        rate.theta.copy_(torch.tensor([0.3, -1.0, 0.8], dtype=torch.float64))
    q = rate.matrix().detach()
    off = q - torch.diag(torch.diagonal(q))
    assert bool((off >= 0).all()) and torch.allclose(q.sum(1), torch.zeros(4, dtype=q.dtype))
    for h in (0.3, 2.0):
        p = rate.transition(h).detach()
        assert torch.allclose(p, torch.linalg.matrix_exp(q * h), atol=1e-12)
        assert not torch.allclose(p, torch.linalg.matrix_exp(q * h * 1.15), atol=1e-3)
        assert bool((p[:, 1] > 0).all())  # every state reaches the absorbing one (last in P)
    assert torch.allclose(q[1], torch.zeros(4, dtype=q.dtype))


def test_matrix_learning_loss_is_the_mutual_information_and_learning_moves_it():
    data = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 2000, True, generator=gen())
    mu = torch.bincount(data, minlength=3).double() / 2000
    rate = DiagonalRate(3)

    def information(h):
        joint = mu[:, None] * rate.transition(h).detach()
        indep = mu[:, None] * joint.sum(0)[None, :]
        return float((joint * (joint / indep).log()).nansum())

    loss = float(matrix_learning_loss(rate, data, 1.0).detach())
    assert abs(loss - information(1.0)) < 1e-12
    assert abs(loss - information(1.15)) > 1e-3
    hist = learn_rate(rate, data, 1.0, steps=100)
    assert hist[-1] < 0.2 * hist[0]  # the prior term alone: absorb fast
    hist = learn_rate(rate, data, 1.0, steps=200, target=0.1)
    assert abs(hist[-1] - 0.1) < 1e-3


def test_learned_score_reverse_reaches_the_data_law():
    """DMB's alternation (matrix step, score step) on V = 4: the tabular score trained by
    denoising score entropy on forward samples drives the reverse CTMC from the prior
    mu exp(TQ) to the data law within the noise bound, like the brute-force exact score; the
    same check rejects the untrained score (all ratios 1) and the exact score of a wrong rate."""
    law = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    data = torch.repeat_interleave(torch.arange(4), (law * 1000).long())
    rate, score = DiagonalRate(4), TabularScore(4, horizon=1.0, steps=10)
    train_dmb(rate, score, data, rounds=2, matrix_steps=40, score_steps=100, target=0.3,
              generator=gen())
    assert abs(float(matrix_learning_loss(rate, data, 1.0).detach()) - 0.3) < 1e-2
    exact = exact_score(rate, law, score)
    tol = tv_tolerance(law, N)

    def err(table=None):
        x = sample_reverse(rate, score, data, N, gen(1), table=table)
        return tv(torch.bincount(x, minlength=4).double() / N, law)

    assert err() < tol  # the learned score
    assert err(exact) < tol
    wrong = DiagonalRate(4)
    with torch.no_grad():
        wrong.theta.copy_(rate.theta + 2)
    assert err(exact_score(wrong, law, score)) > tol
    assert err(torch.ones_like(exact)) > tol
    # the exact ratios minimise the loss: moving them raises it (same forward samples)
    with torch.no_grad():
        score.log_ratio.copy_(exact.log())
        at_exact = float(score_entropy_loss(rate, score, data, gen(3)))
        score.log_ratio.add_(0.2)
        assert float(score_entropy_loss(rate, score, data, gen(3))) > at_exact + 1e-3


def test_bad_input_is_refused():
    q = random_rate()
    with pytest.raises(ValueError, match="end-point laws"):
        MarkovBridge(q)
    with pytest.raises(ValueError, match="sum to 0"):
        MarkovBridge(q + 0.1, START, END)
    with pytest.raises(ValueError, match="off-diagonal"):
        MarkovBridge(-q, START, END)
    with pytest.raises(ValueError, match="cannot reach"):
        MarkovBridge(DiagonalRate(3).matrix(), START, END)  # the last state absorbs
    with pytest.raises(ValueError, match="probability vector"):
        MarkovBridge(q, [0.5, 0.5], END)
    with pytest.raises(ValueError, match="times must increase"):
        MarkovBridge(q, START, END).sample_grid(3, [0.0, 0.5])
    with pytest.raises(ValueError, match="permutation"):
        DiagonalRate(3, permutation=[0, 0, 1])
    with pytest.raises(ValueError, match="score table"):
        sample_reverse(DiagonalRate(3), TabularScore(3, steps=4), torch.tensor([0, 1]), 5,
                       table=torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="token ids"):
        score_entropy_loss(DiagonalRate(3), TabularScore(3), torch.tensor([0, 3]))

"""reverie.timeseries.scotch: SCOTCH (Wang et al. 2024) in miniature on linear SDEs with a known
sparse graph. The linear SDE's transition law is exact (Van Loan), so the Euler-Maruyama
likelihood is checked against it; the best graph of a linear drift is a closed-form least squares,
so the learned graph is checked against brute force over every graph; each check has a sibling
that a wrong variant fails."""

from __future__ import annotations

import pytest
import torch

from reverie.timeseries.scotch import (
    SCOTCH,
    LinearSDE,
    correlation_scores,
    edge_auroc,
    em_log_likelihood,
    fit_scotch,
    granger_scores,
    graph_f1,
    parents_to_graph,
    profile_scores,
    random_times,
)

# a chain 0 -> 1 -> 2 (row i: the parents of i)
A = torch.tensor([[-1.0, 0, 0], [1.0, -1, 0], [0, -1.0, -1.5]], dtype=torch.float64)
SDE = LinearSDE(A, torch.full((3,), 0.5))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def data():
    """20 paths observed at 50 irregular times on [0, 10] (exact simulation)."""
    t = random_times(50, 10.0, gen(0))
    return SDE.simulate(20, t, gen(1)), t


def test_exact_transition_and_euler_maruyama_likelihood():
    """The Van Loan transition keeps the stationary law (M P M^T + Q = P, exact) and the
    Euler-Maruyama log-likelihood of the true drift approaches the exact one at first order
    (gap per unit time falls by ~2 when h halves); a 15% wrong diffusion breaks both."""
    p = SDE.stationary_cov()
    m, q = SDE.transition(torch.tensor([0.3, 0.05]))
    assert torch.allclose(m @ p @ m.transpose(1, 2) + q, p.expand(2, 3, 3), atol=1e-12)
    assert torch.allclose(A @ p + p @ A.T, -torch.diag(SDE.sigma**2), atol=1e-12)
    wrong = LinearSDE(A, 1.15 * SDE.sigma)
    mw, qw = wrong.transition(torch.tensor([0.3]))
    assert float((mw[0] @ p @ mw[0].T + qw[0] - p).abs().max()) > 0.01

    def gaps(h: float, *sigmas: torch.Tensor) -> list[float]:
        t = torch.arange(0, 10, h, dtype=torch.float64)
        x = SDE.simulate(200, t, gen(2))
        exact = SDE.log_likelihood(x, t)
        return [float((exact - em_log_likelihood(x, t, lambda y: y @ A.T, s)).mean() / 10)
                for s in sigmas]

    (coarse,) = gaps(0.1, SDE.sigma)
    fine, wrong_sigma = gaps(0.025, SDE.sigma, 1.15 * SDE.sigma)
    assert 0 < fine < 0.07 and coarse / fine > 1.8
    assert wrong_sigma > 10 * fine  # the wrong diffusion does not converge


def test_brute_force_ranks_the_true_graph_first(data):
    """Over all 64 graphs the BIC profile score is highest for the true chain; every graph
    missing a true edge, the reversed chain and the graph of the transposed drift score far
    lower. The profile score of a graph is the Euler-Maruyama log-likelihood at its least-squares
    drift (two computations agree)."""
    x, t = data
    scores = profile_scores(x, t)
    assert len(scores) == 64
    best = max(scores, key=scores.get)
    assert torch.equal(parents_to_graph(best), SDE.graph())
    top = scores[best]
    for key, s in scores.items():
        g = parents_to_graph(key)
        if not bool(g[SDE.graph()].all()):  # a true edge missing (includes the reversed chain)
            assert s < top - 10
    # the same likelihood through em_log_likelihood at the least-squares drift of the chain
    model = SCOTCH(3)
    feats = torch.cat([torch.ones_like(x[..., :1]), x], -1)[:, :-1]
    h = t.diff()[None, :, None]
    y, a = (x[:, 1:] - x[:, :-1]) / h.sqrt(), feats * h.sqrt()
    with torch.no_grad():
        for i, ps in enumerate(best):
            cols = [0, 1 + i, *(1 + j for j in ps)]
            sol = torch.linalg.lstsq(a[..., cols].reshape(-1, len(cols)),
                                     y[..., i].reshape(-1, 1)).solution[:, 0]
            model.bias[i], model.linear[i, i] = sol[0], sol[1]
            model.linear[i, list(ps)] = sol[2:].float()
            resid = y[..., i] - a[..., cols] @ sol
            model.log_sigma[i] = 0.5 * torch.log((resid**2).mean())
    graph = SDE.graph().double()
    with torch.no_grad():
        ll = em_log_likelihood(x, t, lambda z: model.drift(z, graph),
                               model.log_sigma.exp().double()).sum()
    pen = 0.5 * torch.log(torch.tensor(20.0 * 49))
    assert float(ll - pen * 2) == pytest.approx(top, abs=0.05)


def test_scotch_learns_the_true_graph_and_baselines_do_not(data):
    """SCOTCH's posterior q(G) puts > 0.5 exactly on the true edges (F1 1, AUROC 1), the brute
    force's best graph; the check rejects the correlation graph at every threshold (symmetric:
    it cannot orient the chain) and the transposed graph."""
    x, t = data
    torch.manual_seed(0)
    model = fit_scotch(x, t, steps=60, lr=0.1, graphs=2, generator=gen(3))
    q = model.edge_probs().detach()
    truth = SDE.graph()
    assert graph_f1(q > 0.5, truth) == 1.0 and edge_auroc(q, truth) == 1.0
    corr = correlation_scores(x)
    assert max(graph_f1(corr > c, truth) for c in corr[corr > 0].tolist()) < 0.7
    assert graph_f1(q.T > 0.5, truth) == 0.0
    assert edge_auroc(granger_scores(x), truth) == 1.0  # Granger orients this easy chain too


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="stable"):
        LinearSDE(-A, torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        LinearSDE(A, torch.ones(2))
    with pytest.raises(ValueError, match="increasing"):
        SDE.simulate(2, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        SCOTCH(3).drift(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"x must be \[n, T = 3, d\]"):
        em_log_likelihood(torch.zeros(1, 4, 3), torch.arange(3.0), lambda y: y, torch.ones(3))

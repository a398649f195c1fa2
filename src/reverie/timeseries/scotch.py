"""SCOTCH in miniature: structure learning with a graph-masked neural SDE and variational
inference over graphs (Wang et al. 2024, "Neural Structure Learning with Stochastic
Differential Equations", ICLR).

The model of the paper: ``dX_t = f_G(X_t) dt + g(X_t) dW_t`` where component ``i`` of the drift
reads only the parents of ``i`` in a directed graph ``G`` (self-loops allowed), a posterior
``q(G)`` of independent Bernoulli edges, a sparsity prior ``p(G) ~ exp(-lambda |G|)`` and the
ELBO ``E_q(G)[log p(X | G, theta)] - KL(q(G) | p(G))`` maximised over ``q`` and the drift and
diffusion parameters ``theta`` (relaxed Bernoulli samples of ``G`` with a straight-through
estimator). Observations may come at irregular times.

What is in miniature here (docs/timeseries.md): the drift is a per-node one-hidden-layer MLP on
the parent-masked state (``hidden=0``: linear), the diffusion a learned constant per
coordinate, and ``log p(X | G, theta)`` the Euler-Maruyama transition likelihood between
consecutive observations of noise-free paths (the paper also learns a posterior over latent
paths for noisy observations; that is not here).

The data with a known graph is :class:`LinearSDE` (``dX = A X dt + diag(sigma) dW``): its
transition law over any gap is an exact Gaussian (Van Loan's matrix exponential), so it is
simulated exactly at irregular times and its exact likelihood is available. For a linear drift
the best score of each graph is a closed-form least squares (:func:`profile_scores`), so on
small graphs the best graph is found by brute force.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reverie._checks import positive, positive_int

__all__ = ["LinearSDE", "SCOTCH", "random_times", "em_log_likelihood", "fit_scotch",
           "profile_scores", "granger_scores", "correlation_scores", "graph_f1", "edge_auroc",
           "random_graph_sde", "parents_to_graph", "best_graph"]


def _check_graph(name: str, g: Tensor, d: int) -> Tensor:
    if not isinstance(g, Tensor) or g.shape != (d, d):
        shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(f"{name} must be a [{d}, {d}] tensor (row i: the parents of i), "
                         f"got {shape}")
    return g


@dataclass(frozen=True)
class LinearSDE:
    """``dX = A X dt + diag(sigma) dW`` on ``d`` coordinates: ``drift`` is ``A`` ``[d, d]``,
    ``sigma`` ``[d]``. Its graph: ``j`` is a parent of ``i`` iff ``A[i, j] != 0`` (``i != j``);
    row ``i`` of :meth:`graph` lists the parents of ``i``, the layout of every graph here."""

    drift: Tensor
    sigma: Tensor

    def __post_init__(self) -> None:
        a = torch.as_tensor(self.drift, dtype=torch.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"drift must be a square [d, d] matrix, got {tuple(a.shape)}")
        s = torch.as_tensor(self.sigma, dtype=torch.float64).reshape(-1)
        if s.shape != (a.shape[0],) or not bool((s > 0).all()):
            raise ValueError(f"sigma must hold {a.shape[0]} positive values, got "
                             f"{s.tolist()}")
        if not bool((torch.linalg.eigvals(a).real < 0).all()):
            raise ValueError("drift must be stable (every eigenvalue with a negative real part)")
        object.__setattr__(self, "drift", a)
        object.__setattr__(self, "sigma", s)

    @property
    def dim(self) -> int:
        return self.drift.shape[0]

    def graph(self) -> Tensor:
        """The true graph ``[d, d]`` bool, no self-loops (``[i, j]``: ``j -> i``)."""
        return (self.drift != 0) & ~torch.eye(self.dim, dtype=torch.bool)

    def transition(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The exact transition over gaps ``h`` ``[m]``: ``X_{t+h} | X_t ~ N(M X_t, Q)`` with
        ``M = e^{A h}`` and ``Q = int_0^h e^{A s} S e^{A^T s} ds`` (``S = diag(sigma^2)``), by
        Van Loan's block exponential ``exp([[-A, S], [0, A^T]] h) = [[., F12], [0, F22]]``,
        ``M = F22^T``, ``Q = F22^T F12``. Returns ``M, Q`` ``[m, d, d]``."""
        d = self.dim
        h = torch.as_tensor(h, dtype=torch.float64).reshape(-1, 1, 1)
        block = torch.zeros(2 * d, 2 * d, dtype=torch.float64)
        block[:d, :d], block[:d, d:] = -self.drift, torch.diag(self.sigma**2)
        block[d:, d:] = self.drift.T
        f = torch.linalg.matrix_exp(block * h)
        m = f[:, d:, d:].transpose(1, 2)
        q = m @ f[:, :d, d:]
        return m, 0.5 * (q + q.transpose(1, 2))

    def stationary_cov(self) -> Tensor:
        """The stationary covariance ``P``: ``A P + P A^T + S = 0`` (a Lyapunov equation)."""
        d, eye = self.dim, torch.eye(self.dim, dtype=torch.float64)
        op = torch.kron(eye, self.drift) + torch.kron(self.drift, eye)  # vec(AP + PA^T)
        p = torch.linalg.solve(op, -torch.diag(self.sigma**2).T.reshape(-1)).reshape(d, d).T
        return 0.5 * (p + p.T)

    def simulate(self, n: int, times: Tensor, generator: torch.Generator | None = None
                 ) -> Tensor:
        """``n`` exact paths ``[n, T, d]`` (float64) observed at ``times`` ``[T]``
        (increasing), started from the stationary law."""
        positive_int("n", n)
        times = _check_times(times)
        x = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = x @ torch.linalg.cholesky(self.stationary_cov()).T
        m, q = self.transition(times.diff())
        out = [x]
        for k in range(len(times) - 1):  # x_{k+1} = M_k x_k + Q_k^{1/2} eps
            eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            out.append(out[-1] @ m[k].T + eps @ torch.linalg.cholesky(q[k]).T)
        return torch.stack(out, 1)

    def log_likelihood(self, x: Tensor, times: Tensor) -> Tensor:
        """The exact log density ``[n]`` of the transitions of paths ``x`` ``[n, T, d]`` at
        ``times`` (given each path's first value)."""
        times = _check_times(times)
        m, q = self.transition(times.diff())
        mean = torch.einsum("kij,nkj->nki", m, x[:, :-1].double())
        law = torch.distributions.MultivariateNormal(mean, q)
        return law.log_prob(x[:, 1:].double()).sum(1)


def random_graph_sde(d: int, edges: int, generator: torch.Generator | None = None,
                     strength: float = 1.0, decay: float = 1.0, sigma: float = 0.5) -> LinearSDE:
    """A stable :class:`LinearSDE` with ``edges`` random off-diagonal edges of weight
    ``+-strength`` (random signs) and ``-decay`` (times a random factor in [1, 2]) on the
    diagonal, redrawn until stable (at most 1000 draws)."""
    positive_int("d", d)
    if not 0 < edges <= d * (d - 1):
        raise ValueError(f"edges must be in [1, {d * (d - 1)}] for d = {d}, got {edges}")
    off = [(i, j) for i in range(d) for j in range(d) if i != j]
    for _ in range(1000):
        a = -decay * torch.diag(1 + torch.rand(d, generator=generator, dtype=torch.float64))
        for k in torch.randperm(len(off), generator=generator)[:edges].tolist():
            sign = 1.0 if float(torch.rand(1, generator=generator)) < 0.5 else -1.0
            a[off[k]] = sign * strength
        if bool((torch.linalg.eigvals(a).real < -0.1 * decay).all()):
            return LinearSDE(a, torch.full((d,), sigma, dtype=torch.float64))
    raise ValueError(f"no stable drift in 1000 draws with strength {strength} and decay "
                     f"{decay}: lower the strength or raise the decay")


def _check_times(times: Tensor) -> Tensor:
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if times.numel() < 2 or not bool((times.diff() > 0).all()):
        raise ValueError(f"times must hold at least 2 strictly increasing values, got "
                         f"{times.tolist()[:6]}")
    return times


def random_times(count: int, t_end: float, generator: torch.Generator | None = None
                 ) -> Tensor:
    """``count`` irregular observation times: sorted uniform draws on ``[0, t_end]``."""
    positive_int("count", count)
    t = torch.rand(count, generator=generator, dtype=torch.float64) * positive("t_end", t_end)
    return t.sort().values


def em_log_likelihood(x: Tensor, times: Tensor, drift, sigma: Tensor) -> Tensor:
    """The Euler-Maruyama log-likelihood ``[n]`` of paths ``x`` ``[n, T, d]`` at ``times``
    ``[T]``: ``X_{k+1} | X_k ~ N(X_k + f(X_k) h_k, diag(sigma^2) h_k)``, ``h_k`` the gaps;
    ``drift`` maps ``[..., d]`` to ``[..., d]``, ``sigma`` ``[d]`` (the paper's eq. 6 with
    noise-free observations)."""
    times = _check_times(times).to(x.dtype)
    if x.ndim != 3 or x.shape[1] != times.numel():
        raise ValueError(f"x must be [n, T = {times.numel()}, d], got {tuple(x.shape)}")
    h = times.diff()[None, :, None]
    mean = x[:, :-1] + drift(x[:, :-1]) * h
    var = sigma**2 * h
    return (-0.5 * ((x[:, 1:] - mean) ** 2 / var + torch.log(2 * math.pi * var))).sum((1, 2))


class SCOTCH(nn.Module):
    """The graph-masked neural SDE with a Bernoulli graph posterior.

    ``edge_logits`` ``[d, d]``: the logits of ``q(G)``, all ``edge_init`` at the start
    (self-loops always on: each coordinate reads itself); the drift
    ``f_i(x) = w2_i . tanh(W1_i (G_i * x) + b1_i) + c_i . (G_i * x) + b_i`` (``hidden=0``: only
    the linear part); ``log_sigma`` ``[d]``: the diffusion."""

    def __init__(self, d: int, hidden: int = 0, edge_init: float = 3.0) -> None:
        super().__init__()
        self.d, self.hidden = positive_int("d", d), hidden
        # q starts near the full graph (0.95 at 3.0): each parent's effect is learned before
        # the sparsity prior prunes it (from q = 0.5, an MLP drift can lose true edges early)
        self.edge_logits = nn.Parameter(torch.full((d, d), float(edge_init)))
        self.linear = nn.Parameter(torch.zeros(d, d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.log_sigma = nn.Parameter(torch.zeros(d))
        if hidden:
            self.w1 = nn.Parameter(torch.randn(d, d, hidden) / math.sqrt(d))
            self.b1 = nn.Parameter(torch.randn(d, hidden))  # offsets: even functions too
            self.w2 = nn.Parameter(torch.zeros(d, hidden))

    def edge_probs(self) -> Tensor:
        """``q(j -> i)`` ``[d, d]`` with a zero diagonal."""
        return torch.sigmoid(self.edge_logits) * (1 - torch.eye(self.d))

    def drift(self, x: Tensor, graph: Tensor) -> Tensor:
        """``f_G(x)`` ``[..., d]``: node ``i`` sees ``x`` masked by row ``i`` of ``graph``."""
        g = _check_graph("graph", graph, self.d).to(x.dtype)
        g = torch.maximum(g, torch.eye(self.d, dtype=x.dtype))  # self-loops on
        seen = x[..., None, :] * g  # [..., i, j]: x_j if j -> i
        out = (seen * self.linear.to(x.dtype)).sum(-1) + self.bias.to(x.dtype)
        if self.hidden:
            h = torch.tanh(torch.einsum("...ij,ijh->...ih", seen, self.w1.to(x.dtype))
                           + self.b1.to(x.dtype))
            out = out + (h * self.w2.to(x.dtype)).sum(-1)
        return out

    def sample_graphs(self, n: int, temperature: float = 0.5,
                      generator: torch.Generator | None = None) -> Tensor:
        """``n`` graphs ``[n, d, d]`` from ``q``: relaxed Bernoulli (logistic noise at
        ``temperature``) rounded to 0/1 with a straight-through gradient."""
        u = torch.rand(n, self.d, self.d, generator=generator).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((self.edge_logits + u.log() - (-u).log1p()) / temperature)
        return (soft > 0.5).to(soft.dtype) + soft - soft.detach()

    def elbo(self, x: Tensor, times: Tensor, sparsity: float, graphs: int = 4,
             generator: torch.Generator | None = None) -> Tensor:
        """``E_q(G)[log p_EM(x | G)] - KL(q(G) | p(G))`` (``graphs`` Monte-Carlo graphs), the
        prior ``p(G) ~ exp(-sparsity |G|)``: independent edges of probability
        ``sigmoid(-sparsity)``."""
        sigma = self.log_sigma.exp().to(x.dtype)
        ll = torch.stack([em_log_likelihood(x, times, lambda y, g=g: self.drift(y, g),
                                            sigma).sum()
                          for g in self.sample_graphs(graphs, generator=generator)]).mean()
        q, rho = self.edge_probs(), torch.sigmoid(torch.tensor(-float(sparsity)))
        off = 1 - torch.eye(self.d)
        kl = (q * (q.clamp_min(1e-12) / rho).log()
              + (1 - q) * ((1 - q).clamp_min(1e-12) / (1 - rho)).log()) * off
        return ll - kl.sum()


def fit_scotch(x: Tensor, times: Tensor, hidden: int = 0, steps: int = 400, lr: float = 0.05,
               sparsity: float | None = None, graphs: int = 4,
               generator: torch.Generator | None = None) -> SCOTCH:
    """Fit :class:`SCOTCH` to paths ``x`` ``[n, T, d]`` observed at ``times`` by maximising
    the ELBO with Adam. ``sparsity=None``: ``log(n (T - 1)) / 2``, the BIC penalty of one
    parameter (the linear drift's one coefficient per edge)."""
    if x.ndim != 3:
        raise ValueError(f"x must be [n, T, d], got {tuple(x.shape)}")
    positive_int("steps", steps)
    lam = 0.5 * math.log(x.shape[0] * (x.shape[1] - 1)) if sparsity is None else sparsity
    model = SCOTCH(x.shape[-1], hidden)
    x = x.float()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):  # ascend the ELBO
        loss = -model.elbo(x, times, lam, graphs, generator) / x[:, 1:].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _parent_sets(d: int, i: int):
    others = [j for j in range(d) if j != i]
    for r in range(d):
        yield from itertools.combinations(others, r)


def _node_profile(x: Tensor, h: Tensor, i: int, parents: tuple[int, ...]) -> float:
    """The Euler-Maruyama log-likelihood of coordinate ``i`` maximised over a linear drift on
    ``(1, x_i, x_parents)`` and its diffusion: weighted least squares (``Delta x_i / sqrt h``
    on ``sqrt h * features``), ``sigma^2 = RSS / N``."""
    cols = [i, *parents]
    feats = torch.cat([torch.ones_like(x[..., :1]), x[..., cols]], -1)[:, :-1]
    feats = feats.reshape(-1, len(cols) + 1)
    hh = h.expand(x.shape[0], -1).reshape(-1, 1)
    y = (x[:, 1:, i] - x[:, :-1, i]).reshape(-1, 1) / hh.sqrt()
    a = feats * hh.sqrt()
    rss = float(((y - a @ torch.linalg.lstsq(a, y).solution) ** 2).sum())
    n = y.numel()
    return -0.5 * n * (math.log(2 * math.pi * rss / n) + 1) - 0.5 * float(hh.log().sum())


def profile_scores(x: Tensor, times: Tensor, penalty: float | None = None
                   ) -> dict[tuple[tuple[int, ...], ...], float]:
    """Brute force over every graph of ``d`` coordinates (self-loops always on): the score
    ``max_theta log p_EM(x | G, theta) - penalty |G|`` of linear drifts, exact by least
    squares. Keys: the parent tuples of nodes ``0..d-1``. ``penalty=None``: the BIC penalty
    ``log(n (T - 1)) / 2``; ``d <= 4``."""
    d = x.shape[-1]
    if d > 4:
        raise ValueError(f"brute force is for d <= 4 coordinates, got {d}")
    times = _check_times(times)
    x, h = x.double(), times.diff()[None]
    pen = 0.5 * math.log(x.shape[0] * (x.shape[1] - 1)) if penalty is None else penalty
    node = [{ps: _node_profile(x, h, i, ps) - pen * len(ps) for ps in _parent_sets(d, i)}
            for i in range(d)]
    return {combo: sum(node[i][ps] for i, ps in enumerate(combo))
            for combo in itertools.product(*[list(n) for n in node])}


def best_graph(x: Tensor, times: Tensor, penalty: float | None = None) -> Tensor:
    """The graph ``[d, d]`` of highest :func:`profile_scores` score, found node by node (the
    score is a sum over nodes of their own parent sets): ``2^(d-1)`` least squares a node."""
    times = _check_times(times)
    x, h, d = x.double(), times.diff()[None], x.shape[-1]
    pen = 0.5 * math.log(x.shape[0] * (x.shape[1] - 1)) if penalty is None else penalty
    best = tuple(max(_parent_sets(d, i), key=lambda ps, i=i: _node_profile(x, h, i, ps)
                     - pen * len(ps)) for i in range(d))
    return parents_to_graph(best)


def parents_to_graph(parents: tuple[tuple[int, ...], ...]) -> Tensor:
    """A key of :func:`profile_scores` as a bool graph ``[d, d]``."""
    g = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for i, ps in enumerate(parents):
        g[i, list(ps)] = True
    return g


def granger_scores(x: Tensor) -> Tensor:
    """Discrete-time Granger baseline: a VAR(1) ``x_{k+1} = B x_k + c`` fitted by least squares
    on consecutive observations, ignoring the time gaps; ``|t|`` statistics of ``B`` ``[d, d]``
    (row ``i``: the evidence for each parent of ``i``), diagonal zero."""
    x = x.double()
    d = x.shape[-1]
    a = torch.cat([torch.ones_like(x[..., :1]), x], -1)[:, :-1].reshape(-1, d + 1)
    y = x[:, 1:].reshape(-1, d)
    coef = torch.linalg.lstsq(a, y).solution  # [d + 1, d]
    resid = y - a @ coef
    s2 = (resid**2).sum(0) / (a.shape[0] - d - 1)
    se = (torch.linalg.inv(a.T @ a).diagonal()[:, None] * s2[None]).sqrt()
    t = (coef / se)[1:].T.abs()  # [i, j]
    return t * (1 - torch.eye(d, dtype=t.dtype))


def correlation_scores(x: Tensor) -> Tensor:
    """Correlation baseline: ``|corr(x_i, x_j)|`` over all observations (symmetric, no
    direction), diagonal zero."""
    c = torch.corrcoef(x.double().reshape(-1, x.shape[-1]).T).abs()
    return c * (1 - torch.eye(x.shape[-1], dtype=c.dtype))


def graph_f1(pred: Tensor, true: Tensor) -> float:
    """F1 of the predicted directed edges (off-diagonal) against the true ones."""
    off = ~torch.eye(true.shape[0], dtype=torch.bool)
    p, t = pred.bool()[off], true.bool()[off]
    tp = float((p & t).sum())
    return 0.0 if tp == 0 else 2 * tp / (float(p.sum()) + float(t.sum()))


def edge_auroc(scores: Tensor, true: Tensor) -> float:
    """Area under the ROC curve of off-diagonal edge ``scores`` against the true edges (the
    probability that a true edge outscores a non-edge, ties counted half)."""
    off = ~torch.eye(true.shape[0], dtype=torch.bool)
    s, t = scores.double()[off], true.bool()[off]
    pos, neg = s[t], s[~t]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("edge_auroc needs at least one edge and one non-edge")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())

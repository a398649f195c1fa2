"""Discrete Markov bridges: a continuous-time Markov chain (CTMC) on ``V`` states pinned at
both ends, and the learned diagonalisable rate matrix of the Discrete Markov Bridge (DMB, Li,
Wang, Zhu, Wu, Zheng 2025, arXiv 2505.19752; code ``Henry839/Discrete-Markov-Bridge``).

    rate = DiagonalRate(4)                                 # DMB's Q = P U diag(L) U^-1 P^T
    bridge = MarkovBridge(rate.matrix(), start=mu0, end=mu1, horizon=1.0)
    x = bridge.sample_grid(n, times=[0, .25, .5, .75, 1])  # [n, 5] states on the grid
    jump_times, states = bridge.sample_paths(n)            # exact continuous-time paths
    learn_rate(rate, data, horizon=1.0, steps=200)         # DMB's matrix learning
    score = TabularScore(4, horizon=1.0, steps=20)         # ratios p_t(y) / p_t(x) on a grid
    train_dmb(rate, score, data, rounds=3)                 # DMB's alternation (Q step, score)
    x = sample_reverse(rate, score, data, n)               # the reverse CTMC from the prior

A bridge with end-point laws draws its end points ``(a, b)`` from a coupling -- given, the
independent one ``start x end``, or the chain's own ``start(a) P_T(a, b)`` when no ``end`` is
given -- and then the chain conditioned on ``X_0 = a, X_T = b`` (Doob's h-transform):
``P(X_s = y | X_t = x, X_T = b) = P_{s-t}(x, y) P_{T-s}(y, b) / P_{T-t}(x, b)``.
:meth:`MarkovBridge.sample_grid` draws it on a time grid step by step with that kernel;
:meth:`MarkovBridge.sample_paths` draws whole continuous-time paths exactly by uniformisation
(Hobolth & Stone 2009, "Simulation from endpoint-conditioned, continuous-time Markov chains
on a finite state space", algorithm 5). :meth:`MarkovBridge.grid_law` is the exact law of the
grid path by enumeration (tiny state spaces).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive, positive_int
from reverie.discrete._sampling import uniform

__all__ = ["DiagonalRate", "MarkovBridge", "check_rate", "matrix_learning_loss", "learn_rate",
           "TabularScore", "exact_score", "score_entropy_loss", "learn_score", "train_dmb",
           "sample_reverse"]


def check_rate(q: Any, what: str = "rate matrix") -> Tensor:
    """A CTMC generator ``[V, V]``: off-diagonal entries >= 0, rows summing to 0 (float64)."""
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] < 2:
        raise ValueError(f"the {what} must be square [V, V] with V >= 2, got {tuple(q.shape)}")
    off = q - torch.diag(torch.diagonal(q))
    if bool((off < -1e-12).any()) or not bool(torch.isfinite(q).all()):
        raise ValueError(f"the {what} must have finite off-diagonal rates >= 0")
    if not torch.allclose(q.sum(1), torch.zeros(q.shape[0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"the rows of the {what} must sum to 0 (a generator), got row sums "
                         f"{q.sum(1).tolist()}")
    return q


def _law(p: Any, v: int, what: str) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if p.shape != (v,) or bool((p < 0).any()) or abs(float(p.sum()) - 1) > 1e-9:
        raise ValueError(f"{what} must be a probability vector over the {v} states, got "
                         f"{tuple(p.shape)} summing to {float(p.sum()):.4g}")
    return p


# ---------------------------------------------------------------------------------------------
# DMB's diagonalisable rate matrix
# ---------------------------------------------------------------------------------------------


class DiagonalRate(torch.nn.Module):
    """DMB's learned rate matrix ``Q = P U diag(L) U^{-1} P^T``: ``U`` the upper-triangular
    matrix of ones, ``P`` a permutation of the states, and eigenvalues
    ``L_k = -sum_{j >= k} softplus(theta_j)`` with ``L_{V-1} = 0`` (so
    ``L_0 <= ... <= L_{V-1} = 0``). In the permuted order state ``k`` jumps only to later
    states, at rate ``L_j - L_{j-1} >= 0`` to ``j > k``; the last state absorbs. Every
    parameter value is a valid generator (DMB's validity) and every state reaches the last one
    (accessibility), and ``exp(h Q) = P U diag(exp(h L)) U^{-1} P^T`` in closed form."""

    def __init__(self, vocab_size: int, permutation: Any = None, init: float = 0.0):
        super().__init__()
        v = positive_int("vocab_size", vocab_size)
        if v < 2:
            raise ValueError(f"vocab_size must be >= 2, got {v}")
        perm = torch.arange(v) if permutation is None else torch.as_tensor(permutation)
        if perm.dtype != torch.long or sorted(perm.tolist()) != list(range(v)):
            raise ValueError(f"permutation must order the {v} states (a LongTensor holding "
                             f"0..{v - 1}), got {perm.tolist()}")
        self.register_buffer("perm", perm)  # perm[k] = the state at position k
        self.theta = torch.nn.Parameter(torch.full((v - 1,), float(init), dtype=torch.float64))
        self.vocab_size = v

    def eigenvalues(self) -> Tensor:
        """``L`` ``[V]``: reverse cumulative sums of ``-softplus(theta)``, last 0."""
        neg = -torch.nn.functional.softplus(self.theta)
        tail = torch.cat([neg, neg.new_zeros(1)])
        return tail.flip(0).cumsum(0).flip(0)

    def _permuted(self, diag: Tensor) -> Tensor:
        v = self.vocab_size
        u = torch.triu(torch.ones(v, v, dtype=torch.float64))
        u_inv = torch.eye(v, dtype=torch.float64) - torch.diag(torch.ones(v - 1,
                                                                          dtype=torch.float64), 1)
        core = u @ torch.diag(diag) @ u_inv  # U diag U^-1 (U^-1: 1 on the diagonal, -1 above)
        out = torch.empty_like(core)
        out[self.perm[:, None], self.perm[None, :]] = core  # P core P^T
        return out

    def matrix(self) -> Tensor:
        """The generator ``Q`` ``[V, V]``."""
        return self._permuted(self.eigenvalues())

    def transition(self, horizon: float | Tensor) -> Tensor:
        """``exp(h Q)`` ``[V, V]`` in closed form (no matrix exponential)."""
        return self._permuted(torch.exp(torch.as_tensor(horizon, dtype=torch.float64)
                                        * self.eigenvalues()))


def _tokens(data: Any, v: int) -> Tensor:
    data = torch.as_tensor(data).reshape(-1)
    if data.dtype != torch.long or int(data.min()) < 0 or int(data.max()) >= v:
        raise ValueError(f"data must be token ids in [0, {v}), got {data.dtype}")
    return data


def matrix_learning_loss(rate: DiagonalRate, data: Tensor, horizon: float) -> Tensor:
    """DMB's matrix-learning objective ``E_{x0 ~ data} KL(P_h(x0, .) || mu_hat P_h)``, with
    ``mu_hat`` the empirical law of ``data`` (token ids, any shape): the prior term of the ELBO
    when the latent prior is the forward marginal (= the mutual information of ``X_0`` and
    ``X_h``)."""
    data = _tokens(data, v := rate.vocab_size)
    mu = torch.bincount(data, minlength=v).double() / data.numel()
    p = rate.transition(horizon)
    marg = mu @ p
    rows = p[mu > 0]
    kl = (rows * (torch.log(rows.clamp_min(1e-300)) - torch.log(marg.clamp_min(1e-300)))).sum(1)
    return (mu[mu > 0] * kl).sum()


def learn_rate(rate: DiagonalRate, data: Tensor, horizon: float, steps: int = 200,
               lr: float = 0.05, target: float | None = None) -> list[float]:
    """Matrix learning (DMB's Q step): ``steps`` Adam steps on :func:`matrix_learning_loss`;
    with ``target`` the loss is driven to that value instead (``(loss - target)^2``: a chosen
    information left in ``X_h``, since the loss alone is minimised by absorbing at once; in DMB
    the score-learning term of the ELBO plays that part). Returns the loss per step."""
    positive_int("steps", steps)
    positive("horizon", horizon)
    theta = rate.theta
    m = torch.zeros_like(theta)
    s = torch.zeros_like(theta)
    history = []
    for k in range(1, steps + 1):  # Adam (b1 0.9, b2 0.999) on the V - 1 parameters
        loss = matrix_learning_loss(rate, data, horizon)
        obj = loss if target is None else (loss - target) ** 2
        (grad,) = torch.autograd.grad(obj, theta)
        m, s = 0.9 * m + 0.1 * grad, 0.999 * s + 0.001 * grad**2
        with torch.no_grad():
            theta -= lr * (m / (1 - 0.9**k)) / ((s / (1 - 0.999**k)).sqrt() + 1e-8)
        history.append(float(loss.detach()))
    return history


# ---------------------------------------------------------------------------------------------
# The bridge and its samplers
# ---------------------------------------------------------------------------------------------


class MarkovBridge:
    """The CTMC of generator ``rate`` on ``[0, horizon]`` pinned at end points drawn from a
    coupling of ``start`` and ``end`` (see the module notes). ``coupling`` ``[V, V]``
    (``pi(a, b)``) overrides both laws."""

    def __init__(self, rate: Any, start: Any = None, end: Any = None, *,
                 coupling: Any = None, horizon: float = 1.0):
        self.q = check_rate(rate.detach() if isinstance(rate, Tensor) else rate)
        v = self.vocab_size = self.q.shape[0]
        self.horizon = positive("horizon", horizon)
        self.p_end = self.transition(self.horizon)
        if coupling is not None:
            pi = torch.as_tensor(coupling, dtype=torch.float64)
            if pi.shape != (v, v) or bool((pi < 0).any()) or abs(float(pi.sum()) - 1) > 1e-9:
                raise ValueError(f"coupling must be a joint law [{v}, {v}] of the end points")
        elif start is None:
            raise ValueError("a bridge needs its end-point laws: pass start= (with end=, or "
                             "alone for the chain's own end law) or coupling=")
        elif end is None:
            pi = _law(start, v, "start")[:, None] * self.p_end
        else:
            pi = _law(start, v, "start")[:, None] * _law(end, v, "end")[None, :]
        if bool(((pi > 0) & (self.p_end <= 0)).any()):
            a, b = ((pi > 0) & (self.p_end <= 0)).nonzero()[0].tolist()
            raise ValueError(f"the coupling pins {a} -> {b}, which the chain cannot reach")
        self.coupling = pi

    def transition(self, h: float) -> Tensor:
        """``P_h = exp(h Q)``."""
        return torch.linalg.matrix_exp(self.q * h)

    def _ends(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        idx = torch.multinomial(self.coupling.flatten(), n, replacement=True,
                                generator=generator)
        return idx // self.vocab_size, idx % self.vocab_size

    def _times(self, times: Any) -> list[float]:
        ts = [float(t) for t in times]
        if (len(ts) < 2 or abs(ts[0]) > 1e-12 or abs(ts[-1] - self.horizon) > 1e-12
                or any(b <= a for a, b in zip(ts, ts[1:]))):
            raise ValueError(f"times must increase from 0 to the horizon {self.horizon}, got "
                             f"{ts}")
        return ts

    def sample_grid(self, n: int, times: Any, generator: torch.Generator | None = None
                    ) -> Tensor:
        """``n`` bridge paths on the grid ``times`` (0 = t_0 < ... < t_K = horizon):
        ``[n, K + 1]`` states, each step drawn from the h-transformed kernel
        ``P_{dt}(x, y) P_{T - s}(y, b) / P_{T - t}(x, b)``."""
        ts = self._times(times)
        a, b = self._ends(positive_int("n", n), generator)
        out = [a]
        for t, s in zip(ts[:-2], ts[1:-1]):
            w = self.transition(s - t)[out[-1]] * self.transition(self.horizon - s)[:, b].T
            out.append(torch.multinomial(w / w.sum(1, keepdim=True), 1,
                                         generator=generator).squeeze(1))
        return torch.stack(out + [b], 1)

    def sample_paths(self, n: int, generator: torch.Generator | None = None,
                     tol: float = 1e-12) -> tuple[Tensor, Tensor]:
        """``n`` exact continuous-time bridge paths by uniformisation (Hobolth & Stone 2009):
        with ``lam = max_i -Q_ii`` and ``R = I + Q / lam``, the number of (possibly virtual)
        jumps is drawn from ``Pois(m; lam T) R^m(a, b) / P_T(a, b)``, their times are uniform
        order statistics on ``(0, T)``, and the states step by ``R(x, y) R^{m-k}(y, b) /
        R^{m-k+1}(x, b)``. Returns jump times ``[n, M]`` (``inf`` past a path's last jump) and
        states ``[n, M + 1]`` (the state after each jump; column 0 is ``X_0``)."""
        a, b = self._ends(positive_int("n", n), generator)
        v, t_end = self.vocab_size, self.horizon
        lam = float((-torch.diagonal(self.q)).max())
        r = torch.eye(v, dtype=torch.float64) + self.q / lam
        pois = [math.exp(-lam * t_end)]
        powers = [torch.eye(v, dtype=torch.float64)]
        while sum(pois) < 1 - tol:  # R^m until the Poisson tail is negligible
            pois.append(pois[-1] * lam * t_end / len(pois))
            powers.append(powers[-1] @ r)
        rp = torch.stack(powers)  # [M + 1, V, V]
        w = torch.tensor(pois, dtype=torch.float64)[:, None] * rp[:, a, b]  # [M + 1, n]
        cdf = (w / w.sum(0)).cumsum(0)
        m = (cdf < uniform((1, n), generator)).sum(0).clamp_max(len(pois) - 1)  # jumps
        big = len(pois) - 1
        jt = uniform((n, big), generator) * t_end  # m uniform times per path, then sorted
        jt = torch.where(torch.arange(big)[None, :] < m[:, None], jt, math.inf)
        jt = torch.sort(jt, 1).values  # (the inf padding goes last)
        states = [a]
        for k in range(1, big + 1):
            left = (m - k).clamp_min(0)
            x = states[-1]
            wk = r[x] * rp[left, :, b]  # R(x, y) R^{m-k}(y, b)
            wk = torch.where((k <= m)[:, None], wk, torch.nn.functional.one_hot(x, v).double())
            states.append(torch.multinomial(wk / wk.sum(1, keepdim=True), 1,
                                            generator=generator).squeeze(1))
        return jt, torch.stack(states, 1)

    @staticmethod
    def at(jump_times: Tensor, states: Tensor, times: Any) -> Tensor:
        """The states of continuous-time paths at ``times``: ``[n, len(times)]``."""
        t = torch.as_tensor([float(s) for s in times], dtype=torch.float64)
        count = (jump_times[:, None, :] <= t[None, :, None]).sum(-1)  # jumps up to each time
        return states.gather(1, count)

    def grid_law(self, times: Any) -> tuple[Tensor, Tensor]:
        """All ``V^(K+1)`` grid paths and their exact probabilities under the bridge (by
        enumeration): ``pi(a, b) prod_k P_{dt_k}(x_k, x_{k+1}) / P_T(a, b)``."""
        ts = self._times(times)
        v = self.vocab_size
        steps = [self.transition(s - t) for t, s in zip(ts, ts[1:])]
        paths = torch.tensor(list(itertools.product(range(v), repeat=len(ts))))
        ends = self.p_end[paths[:, 0], paths[:, -1]]
        p = torch.where(ends > 0, self.coupling[paths[:, 0], paths[:, -1]] / ends, 0.0)
        for k, pk in enumerate(steps):
            p = p * pk[paths[:, k], paths[:, k + 1]]
        return paths, p


# ---------------------------------------------------------------------------------------------
# DMB's score learning, its alternation with matrix learning, and the reverse sampler
# ---------------------------------------------------------------------------------------------


class TabularScore(torch.nn.Module):
    """A tabular concrete score for one token on a time grid ``t_k = k T / K`` (``k = 0..K``):
    ``s[k, x, y] ~ p_{t_k}(y) / p_{t_k}(x)``, stored as its log (so positive), 1 at init."""

    def __init__(self, vocab_size: int, horizon: float = 1.0, steps: int = 20):
        super().__init__()
        self.vocab_size, self.horizon = positive_int("vocab_size", vocab_size), positive(
            "horizon", horizon)
        self.steps = positive_int("steps", steps)
        self.log_ratio = torch.nn.Parameter(torch.zeros(self.steps + 1, self.vocab_size,
                                                        self.vocab_size, dtype=torch.float64))

    def times(self) -> Tensor:
        return torch.linspace(0, self.horizon, self.steps + 1, dtype=torch.float64)

    def forward(self, k: Tensor, x: Tensor) -> Tensor:
        """``s_{t_k}(x)`` ``[n, V]`` for grid indices ``k`` and states ``x`` ``[n]``."""
        return self.log_ratio[k, x].exp()


def exact_score(rate: DiagonalRate, mu: Tensor, score: TabularScore) -> Tensor:
    """The exact ratios ``p_t(y) / p_t(x)`` with ``p_t = mu exp(t Q)`` on ``score``'s grid
    ``[K + 1, V, V]`` (brute force for tiny ``V``)."""
    p = torch.stack([mu @ rate.transition(t).detach() for t in score.times()])  # [K + 1, V]
    return p[:, None, :] / p[:, :, None]


def score_entropy_loss(rate: DiagonalRate, score: TabularScore, data: Tensor,
                       generator: torch.Generator | None = None,
                       kernels: Tensor | None = None) -> Tensor:
    """DMB's score step, SEDD's denoising score entropy (Lou, Meng, Ermon 2024, eq. 8) on
    forward samples under the current rate (held fixed): ``x0 ~ data``, ``k`` uniform in
    ``1..K``, ``x ~ P_{t_k}(x0, .)``, and ``sum_{y != x} Q(y, x) [s_y - r_y log s_y +
    r_y (log r_y - 1)]`` with ``r_y = P_t(x0, y) / P_t(x0, x)``: minimised by
    ``s_y = E[r_y | x_t = x] = p_t(y) / p_t(x)``; 0 at the minimum of each sample's term.
    ``kernels`` ``[K + 1, V, V]``: the ``P_{t_k}`` (recomputed from ``rate`` when ``None``)."""
    x0 = _tokens(data, rate.vocab_size)
    q = rate.matrix().detach()
    if kernels is None:
        kernels = torch.stack([rate.transition(t).detach() for t in score.times()])
    k = torch.randint(1, score.steps + 1, (x0.numel(),), generator=generator)
    pt = kernels[k, x0]  # [n, V]: P_{t_k}(x0, .)
    x = torch.multinomial(pt, 1, generator=generator).squeeze(1)  # forward sample X_t
    r = pt / pt.gather(1, x[:, None])  # r_y = P_t(x0, y) / P_t(x0, x)
    w = q.T[x]  # Q(y, x): the forward rates into x (the reverse rates' weights)
    w = w.scatter(1, x[:, None], 0.0)  # y != x
    s = score(k, x)
    ent = s - r * s.log() + torch.xlogy(r, r) - r
    return (w * ent).sum(1).mean()


def learn_score(rate: DiagonalRate, score: TabularScore, data: Tensor, steps: int = 200,
                lr: float = 0.1, generator: torch.Generator | None = None) -> list[float]:
    """The score step: ``steps`` Adam steps on :func:`score_entropy_loss` (the rate fixed),
    learning rate decayed linearly to 0 (so the table settles on the sample mean)."""
    opt = torch.optim.Adam(score.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / positive_int("steps",
                                                                                   steps))
    kernels = torch.stack([rate.transition(t).detach() for t in score.times()])
    history = []
    for _ in range(steps):
        loss = score_entropy_loss(rate, score, data, generator, kernels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
    return history


def train_dmb(rate: DiagonalRate, score: TabularScore, data: Tensor, rounds: int = 3,
              matrix_steps: int = 100, score_steps: int = 200, target: float = 0.3,
              generator: torch.Generator | None = None) -> None:
    """DMB's alternation: ``rounds`` of a matrix step (:func:`learn_rate`, driven to
    ``target`` nats of information left in ``X_T``; see there) then a score step
    (:func:`learn_score` under the new rate, warm-started from the last table)."""
    for _ in range(positive_int("rounds", rounds)):
        learn_rate(rate, data, score.horizon, steps=matrix_steps, target=target)
        learn_score(rate, score, data, steps=score_steps, generator=generator)


def sample_reverse(rate: DiagonalRate, score: TabularScore, data: Tensor, n: int,
                   generator: torch.Generator | None = None, table: Tensor | None = None
                   ) -> Tensor:
    """``n`` draws of ``X_0`` by the reverse CTMC: ``X_T`` from the prior ``mu_hat exp(T Q)``
    (DMB's forward marginal at ``T``), then down ``score``'s grid, each step ``exp(dt R)``
    with the reverse generator ``R(x, y) = Q(y, x) s_{t_k}(x)_y`` (``y != x``) held at
    ``t_k``. ``table`` ``[K + 1, V, V]`` (e.g. :func:`exact_score`) replaces the learned one."""
    v, kk, horizon = rate.vocab_size, score.steps, score.horizon
    data = _tokens(data, v)
    table = score.log_ratio.detach().exp() if table is None else table
    if table.shape != (kk + 1, v, v):
        raise ValueError(f"the score table must be [{kk + 1}, {v}, {v}], got "
                         f"{tuple(table.shape)}")
    mu = torch.bincount(data, minlength=v).double() / data.numel()
    q = rate.matrix().detach()
    x = torch.multinomial(mu @ rate.transition(horizon).detach(), positive_int("n", n), True,
                          generator=generator)  # X_T from the forward marginal
    for k in range(kk, 0, -1):
        rev = q.T * table[k]  # R(x, y) = Q(y, x) p_t(y) / p_t(x)
        rev = rev - torch.diag(torch.diagonal(rev))
        rev = rev - torch.diag(rev.sum(1))  # a generator: rows sum to 0
        step = torch.linalg.matrix_exp(rev * horizon / kk).clamp_min(0)
        x = torch.multinomial(step[x], 1, generator=generator).squeeze(1)
    return x

"""Diffusion Tree Sampling and Diffusion Tree Search (Jain, Sareen, Pedramfar, Ravanbakhsh
2025, "Diffusion Tree Sampling: Scalable inference-time alignment of diffusion models",
Algorithm 1; project page diffusion-tree-sampling.github.io).

The reverse chain is a tree of depth ``steps``: a node is a state ``x_{t_i}`` with a soft
value estimate ``v(x)``; its children are draws of the sampler's Gaussian kernel (cached at
the node, so a new child costs no network call; evaluating the child's own kernel costs one).
Each iteration does

* selection -- from the root, while the node has its ``max_children`` children, move to a
  child drawn with probability ``prop. exp(v / T)`` (DTS) or to the child of largest ``v``
  (DTS*, optionally plus a UCT bonus), among children whose subtrees are not exhausted;
* expansion -- draw a new child of that node;
* rollout -- run the sampler from the new child to the clean end, adding every state;
* backup -- the leaf's value is its reward; every node on the path gets the soft Bellman
  value ``v(x) = T log mean_children exp(v(child) / T)`` (children are draws from the kernel,
  so the plain mean is the Monte Carlo estimate of ``E[exp(V/T)]``), or ``T log sum`` (every
  leaf weighted alike), or for DTS* the hard ``max`` (the ``T -> 0`` limit).

DTS returns a leaf reached by descending from the root with ``prop. exp(v / T)``; with the
mean backup this picks a leaf with probability ``prop. exp(r(leaf) / T) / prod(number of
children of its ancestors)`` (nested importance resampling), with the sum backup ``prop.
exp(r(leaf) / T)`` over all leaves. DTS* returns the best leaf found. One tree per returned
sample; the trees of a chunk are grown in lockstep and every batch of network calls covers all
trees whose rollout is at the same grid index.

Both estimators approach the tilted target as the budget grows when the tree's shape does
not depend on the values (``selection="uniform"``). With the paper's value-driven (Boltzmann)
growth they are biased at any budget short of the complete tree (``max_children ** steps``
leaves): with the mean backup a subtree left with few rollouts because its first rollout
scored low keeps those low leaves as the estimate of its whole mass (under-tilting); with the
sum backup the well-explored subtrees contribute more leaves (over-tilting, growing with the
budget). ``docs/search.md`` shows the measurements.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie._checks import in_range, positive_int
from reverie.samplers import State
from reverie.search._core import Context, logmeanexp, register

_MAX_STORED = 2**24  # stored state elements per chunk of trees (bounded memory)


@register(
    "dts", tilted=True, sampler="dpmpp_2m_sde", needs_stochastic=True,
    description="Diffusion Tree Sampling: soft-value tree search that samples the tilted target "
    "(Jain et al. 2025)",
)
def dts(
    ctx: Context, *, max_children: int = 4, selection: str = "boltzmann", backup: str = "mean",
    widening: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Diffusion Tree Sampling (Jain et al. 2025, Algorithm 1); see the module docstring.

    ``max_children``: children a node takes before selection moves below it.
    ``selection``: ``"boltzmann"`` (the paper: children drawn ``prop. exp(v / T)`` while the
    tree grows) or ``"uniform"`` (children drawn uniformly while the tree grows; the returned
    leaf is drawn ``prop. exp(v / T)`` in both cases). Uniform growth keeps the tree's shape
    independent of the values, so the returned leaf is an importance resample that approaches
    the tilted target as the budget grows; Boltzmann growth leaves a bias that does not shrink
    with the budget before the tree is complete (measured in ``reverie bench search``).
    ``backup``: ``"mean"`` (the soft Bellman estimate ``T log mean exp(v / T)`` over children,
    the paper's equation) or ``"sum"`` (``T log sum exp``: every leaf weighted alike).
    ``widening``: progressive widening (Couetoux et al. 2011) -- a node visited ``N`` times
    may hold ``min(max_children, ceil(N^widening))`` children; ``None`` keeps the fixed cap.
    """
    if selection not in ("boltzmann", "uniform"):
        raise ValueError(f"unknown selection {selection!r}; expected 'boltzmann' or 'uniform'")
    if backup not in ("mean", "sum"):
        raise ValueError(f"unknown backup {backup!r} for dts; expected 'mean' or 'sum'")
    return _tree_search(ctx, max_children, greedy=False, widening=widening,
                        uniform=selection == "uniform", backup=backup)


@register(
    "dts_star", tilted=False, sampler="dpmpp_2m_sde", needs_stochastic=True,
    description="Diffusion Tree Search (DTS*): greedy selection on tree values, best leaf "
    "(Jain et al. 2025)",
)
def dts_star(
    ctx: Context, *, max_children: int = 2, backup: str = "max", exploration: float = 0.0,
    widening: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Diffusion Tree Search, DTS* (Jain et al. 2025): DTS with greedy selection, returning the
    best leaf found. A small ``max_children`` sends the search deeper along the best path
    sooner, where new rollouts are cheap.

    ``backup``: ``"max"`` (default: a node's value is the best reward found below it, the
    ``T -> 0`` limit of the soft backup that matches greedy selection) or ``"mean"`` (the
    soft Bellman value at the run's temperature, as in DTS; the paper changes only the
    selection rule). At equal NFE the max backup finds higher rewards once the budget lets
    the search reach the middle of the chain (see ``reverie bench search``).
    ``exploration``: UCT constant ``c`` (in reward units): selection maximises
    ``v(child) + c sqrt(log N(node) / N(child))`` over visit counts ``N``; 0 is pure greedy.
    ``widening``: progressive widening, as in :func:`dts`.
    """
    if backup not in ("max", "mean"):
        raise ValueError(f"unknown backup {backup!r} for dts_star; expected 'max' or 'mean'")
    if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) \
            or not math.isfinite(exploration) or exploration < 0:
        raise ValueError(f"exploration must be a finite number >= 0, got {exploration!r}")
    return _tree_search(ctx, max_children, greedy=True, widening=widening, backup=backup,
                        exploration=float(exploration))


class _Forest:
    """``G`` trees stored as arrays ``[G, capacity, ...]``."""

    def __init__(self, ctx: Context, g: int, cap: int, C: int, widening: float | None):
        self.ctx = ctx
        self.widening = widening
        shape = ctx.shape
        self.x = torch.zeros((g, cap, *shape), dtype=ctx.dtype)      # node states
        self.mean = torch.zeros((g, cap, *shape), dtype=ctx.dtype)   # their kernel means
        self.std = torch.zeros((g, cap), dtype=torch.float64)        # ... and stds
        self.mem: list[Tensor] = []                                   # kernel memory slots
        self.mem_len: dict[int, int] = {-1: 0}                        # slots used at index i
        self.idx = torch.full((g, cap), -2, dtype=torch.long)         # grid index (root -1)
        self.parent = torch.full((g, cap), -1, dtype=torch.long)
        self.child = torch.full((g, cap, C), -1, dtype=torch.long)
        self.nch = torch.zeros((g, cap), dtype=torch.long)
        self.cap = torch.zeros((g, cap), dtype=torch.long)            # children allowed
        self.val = torch.zeros((g, cap), dtype=torch.float64)         # soft values
        self.open = torch.zeros((g, cap), dtype=torch.bool)           # subtree not exhausted
        self.visits = torch.zeros((g, cap), dtype=torch.long)
        self.count = torch.ones(g, dtype=torch.long)
        self.capacity = cap
        # the root: a dummy node whose kernel is the prior N(0, sigma(t_0)^2 I)
        self.idx[:, 0] = -1
        self.std[:, 0] = ctx.schedule.sigma[0]
        self.cap[:, 0] = C
        self.open[:, 0] = True

    def add(self, a: Tensor, parent: Tensor, x: Tensor, index: int | Tensor) -> Tensor:
        """New nodes ``x`` (children of ``parent``) in trees ``a``; returns their ids."""
        nid = self.count[a].clone()
        self.count[a] += 1
        self.x[a, nid] = x.to(self.x.dtype)
        self.idx[a, nid] = torch.as_tensor(index).expand_as(nid)
        self.parent[a, nid] = parent
        self.child[a, parent, self.nch[a, parent]] = nid
        self.nch[a, parent] += 1
        return nid

    def store(self, a: Tensor, nid: Tensor, mean: Tensor, std: float | Tensor,
              memory: tuple[Tensor, ...], i: int, C: int) -> None:
        """Cache a node's transition kernel."""
        self.mean[a, nid] = mean.to(self.mean.dtype)
        s = torch.as_tensor(std, dtype=torch.float64).expand(a.shape) if not (
            isinstance(std, Tensor) and std.ndim > 0) else std.to(torch.float64)
        self.std[a, nid] = s
        self.cap[a, nid] = torch.where(s > 0, C, 1)
        self.open[a, nid] = True
        for slot, m in enumerate(memory):
            if slot == len(self.mem):
                self.mem.append(torch.zeros((self.x.shape[0], self.capacity, *m.shape[1:]),
                                            dtype=m.dtype))
            self.mem[slot][a, nid] = m
        self.mem_len[i] = len(memory)

    def state(self, a: Tensor, nid: Tensor, i: int) -> State:
        """The sampler state of nodes ``nid`` (their memory is their parent's kernel memory)."""
        par = self.parent[a, nid]
        memory = tuple(self.mem[s][a, par] for s in range(self.mem_len[i - 1]))
        return State(self.x[a, nid], i, memory)

    def room(self, a: Tensor, nid: Tensor) -> Tensor:
        """Whether nodes may take another child (progressive widening when ``widening``)."""
        cap = self.cap[a, nid]
        if self.widening is not None:
            pw = torch.ceil(self.visits[a, nid].clamp(min=1).double() ** self.widening).long()
            cap = torch.where(cap > 1, torch.minimum(cap, pw), cap)
        return self.nch[a, nid] < cap

    def kids(self, a: Tensor, nid: Tensor) -> tuple[Tensor, Tensor]:
        k = self.child[a, nid]
        return k.clamp(min=0), k >= 0


def _tree_search(
    ctx: Context, C: int, greedy: bool, widening: float | None, uniform: bool = False,
    backup: str = "mean", exploration: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    positive_int("max_children", C)
    in_range("widening", widening, 0, 1, lo_open=True, none_ok=True)
    traj = ctx.trajectory_nfe
    ctx.need(traj, "one rollout from the root")
    S, T, budget = ctx.steps, ctx.temperature, ctx.budget
    cap = 2 * budget + S + 2
    numel = math.prod(ctx.shape)
    per_chunk = max(1, _MAX_STORED // (cap * numel))
    out_x = torch.zeros((ctx.n, *ctx.shape), dtype=ctx.dtype)
    out_r = torch.zeros(ctx.n, dtype=torch.float64)
    spent_all = torch.zeros(ctx.n, dtype=torch.long)
    iters_all = torch.zeros(ctx.n, dtype=torch.long)
    for lo in range(0, ctx.n, per_chunk):
        groups = torch.arange(lo, min(lo + per_chunk, ctx.n))
        g = groups.numel()
        f = _Forest(ctx, g, cap, C, widening)
        spent = torch.zeros(g, dtype=torch.long)
        iters = torch.zeros(g, dtype=torch.long)
        active = torch.ones(g, dtype=torch.bool)
        while bool(active.any()):
            A = torch.nonzero(active).flatten()
            cur, path = _select(ctx, f, A, groups, S, math.inf if uniform else T, greedy,
                                exploration)
            # expansion node: its rollout must fit in the budget (and in the storage)
            d = f.idx[A, cur]
            cost = torch.tensor([ctx.cost(int(i) + 1) for i in d.tolist()], dtype=torch.long)
            fits = (spent[A] + cost <= budget) & (f.count[A] + (S - d) <= cap)
            active[A[~fits]] = False
            A, cur, path, d = A[fits], cur[fits], path[fits], d[fits]
            if A.numel() == 0:
                break
            iters[A] += 1
            # expansion: a new child from the node's cached kernel (no network call)
            z = ctx.rng.randn(groups[A], ctx.shape, ctx.dtype, ctx.device)
            std = f.std[A, cur].reshape(-1, *([1] * len(ctx.shape))).to(ctx.dtype)
            child = f.mean[A, cur] + std * z
            ctx.check_finite(child, max(int(d.max()), 0))
            node = f.add(A, cur, child, d + 1)
            path[torch.arange(A.numel()), d + 2] = node
            # rollout to the clean end, batched over trees at the same grid index
            pend_i = d + 1
            for j in range(int(pend_i.min()), S):
                sel = torch.nonzero(pend_i == j).flatten()
                if sel.numel() == 0:
                    continue
                a, nd = A[sel], path[sel, j + 1]
                st = f.state(a, nd, j)
                tr = ctx.transition(st, groups[a])
                spent[a] += tr.nfe
                f.store(a, nd, tr.mean, tr.std, tr.memory, j, C)
                nxt = ctx.draw(tr, st, groups[a])
                ctx.check_finite(nxt.x, j)
                path[sel, j + 2] = f.add(a, nd, nxt.x, j + 1)
                pend_i[sel] = j + 1
            # backup: leaf reward, then soft Bellman values and exhaustion up the path
            leaf = path[:, S + 1]
            f.val[A, leaf] = ctx.reward(f.x[A, leaf])
            f.open[A, leaf] = False
            for level in range(S, -1, -1):
                nd = path[:, level]
                kids, valid = f.kids(A, nd)
                v = f.val[A[:, None], kids]
                if backup == "max":    # hard Bellman backup: the best leaf below
                    f.val[A, nd] = v.masked_fill(~valid, -math.inf).amax(1)
                elif backup == "sum":  # T log sum exp: every leaf below weighted alike
                    f.val[A, nd] = T * torch.logsumexp((v / T).masked_fill(~valid, -math.inf), 1)
                else:                  # soft Bellman: T log of the children's mean of exp(v/T)
                    f.val[A, nd] = T * logmeanexp(v / T, valid)
                f.visits[A, nd] += 1
                open_kid = (f.open[A[:, None], kids] & valid).any(1)
                f.open[A, nd] = (f.nch[A, nd] < f.cap[A, nd]) | open_kid
            done = (~f.open[A, 0]) | (spent[A] >= budget)
            active[A[done]] = False
        x, r = _answer(ctx, f, groups, S, T, greedy)
        out_x[groups], out_r[groups] = x, r
        spent_all[groups], iters_all[groups] = spent, iters
    info = {
        "max_children": C,
        "selection": "greedy" if greedy else ("uniform" if uniform else "boltzmann"),
        "backup": backup,
        "rollouts_mean": float(iters_all.double().mean()),
    }
    return out_x, out_r, spent_all, info


def _select(ctx: Context, f: _Forest, A: Tensor, groups: Tensor, S: int, T: float,
            greedy: bool, exploration: float = 0.0) -> tuple[Tensor, Tensor]:
    """Descend from the root of every tree in ``A`` to the first node that may take another
    child; ``path[:, i + 1]`` is the node at grid index ``i`` (the root at column 0)."""
    m = A.numel()
    cur = torch.zeros(m, dtype=torch.long)
    path = torch.full((m, S + 2), -1, dtype=torch.long)
    path[:, 0] = 0
    go = _descend(f, A, cur)
    for _ in range(S + 1):
        if not bool(go.any()):
            break
        r = torch.nonzero(go).flatten()
        a, c = A[r], cur[r]
        kids, valid = f.kids(a, c)
        ok = valid & f.open[a[:, None], kids]
        score = f.val[a[:, None], kids]
        if greedy and exploration > 0:  # UCT: v + c sqrt(log N(node) / N(child))
            n_kid = f.visits[a[:, None], kids].clamp(min=1).double()
            n_node = f.visits[a, c].clamp(min=1).double()
            score = score + exploration * torch.sqrt(torch.log(n_node)[:, None] / n_kid)
        if not greedy:  # Boltzmann policy prop. exp(v / T), by the Gumbel-max trick
            score = score / T + ctx.rng.gumbel(groups[a], kids.shape[1])  # (T = inf: uniform)
        score = score.masked_fill(~ok, -math.inf)
        nxt = kids[torch.arange(r.numel()), score.argmax(1)]
        cur[r] = nxt
        path[r, f.idx[a, nxt] + 1] = nxt
        go[r] = _descend(f, a, nxt)
    return cur, path


def _descend(f: _Forest, a: Tensor, nid: Tensor) -> Tensor:
    """Selection moves on from a node without room for a child if it has an open child."""
    kids, valid = f.kids(a, nid)
    return ~f.room(a, nid) & (valid & f.open[a[:, None], kids]).any(1)


def _answer(ctx: Context, f: _Forest, groups: Tensor, S: int, T: float,
            greedy: bool) -> tuple[Tensor, Tensor]:
    """DTS: a leaf drawn by descending with ``prop. exp(v / T)``; DTS*: the best leaf."""
    g = groups.numel()
    ar = torch.arange(g)
    if greedy:
        leaves = f.idx == S
        v = f.val.masked_fill(~leaves, -math.inf)
        best = v.argmax(1)
        return f.x[ar, best], f.val[ar, best]
    cur = torch.zeros(g, dtype=torch.long)
    for _ in range(S + 1):
        kids, valid = f.kids(ar, cur)
        score = f.val[ar[:, None], kids] / T + ctx.rng.gumbel(groups, kids.shape[1])
        score = score.masked_fill(~valid, -math.inf)
        cur = kids[ar, score.argmax(1)]
    return f.x[ar, cur], f.val[ar, cur]

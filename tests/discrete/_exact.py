"""Exact output laws of token samplers on tiny problems, by enumerating partial sequences.

Independent re-statements of each scheme's transition probabilities (not the package code), so
a sampler's empirical law can be compared with its exact law, and the exact law with the data.
"""

from __future__ import annotations

import itertools
import math

import torch

M = -1  # a masked position in a state tuple


_CONDITIONALS: dict[int, tuple[object, dict]] = {}  # id(model) -> (model, {state: [L, V]})


def conditionals(model, state: tuple[int, ...]) -> torch.Tensor:
    """Exact p(x0^i = v | unmasked positions of state) for the reference model, [L, V].
    Memoised per model and state (the enumerations below revisit each of the (V + 1)^L states
    thousands of times; the model is fixed, so the value is the same)."""
    _, cache = _CONDITIONALS.setdefault(id(model), (model, {}))  # keeps the model: no id reuse
    if state not in cache:
        v = model.vocab_size
        x = torch.tensor([[v if s == M else s for s in state]], dtype=torch.long)
        cache[state] = model.conditionals(x, v)[0]
    return cache[state]


def _expand(state, options):
    """All outcomes of independent per-position options [(value, prob), ...]."""
    for combo in itertools.product(*options):
        p = math.prod(q for _, q in combo)
        if p > 0:
            yield tuple(val for val, _ in combo), p


def _step(dist, kernel):
    out: dict[tuple, float] = {}
    for y, py in dist.items():
        for y2, p in _expand(y, kernel(y)):
            out[y2] = out.get(y2, 0.0) + py * p
    return out


def law_to_vector(dist, model, length):
    """Exact law over the V^L complete sequences, in HiddenMarkovModel.joint order."""
    v = model.vocab_size
    vec = torch.zeros(v**length, dtype=torch.float64)
    for y, p in dist.items():
        idx = 0
        for s in y:
            idx = idx * v + s
        vec[idx] += p
    return vec


def masked_grid_law(model, length, steps, unmask_prob):
    """Law of a masked sampler that, from t_j = 1 - j/S to s = t_{j+1}, unmasks each masked
    position independently with probability unmask_prob(t, s) into x0 ~ p(x0 | state)."""
    dist = {(M,) * length: 1.0}
    for j in range(steps):
        t, s = 1 - j / steps, max(1 - (j + 1) / steps, 0.0)
        pi = 1.0 if s == 0 else unmask_prob(t, s)

        def kernel(y, pi=pi):
            c = conditionals(model, y)
            opts = []
            for i, yi in enumerate(y):
                if yi != M:
                    opts.append([(yi, 1.0)])
                else:
                    opts.append(
                        [(M, 1.0 - pi)] + [(v, pi * float(c[i, v])) for v in range(c.shape[1])]
                    )
            return opts

        dist = _step(dist, kernel)
    return dist


def theta_law(model, length, steps, theta, weight):
    """Law of the theta-trapezoidal scheme for the masked process (weight(t) = -a'/(1-a))."""
    a1 = 1 / (2 * theta * (1 - theta))
    a2 = ((1 - theta) ** 2 + theta**2) / (2 * theta * (1 - theta))
    dist = {(M,) * length: 1.0}
    for j in range(steps):
        t, s = 1 - j / steps, max(1 - (j + 1) / steps, 0.0)
        dt = t - s
        rho = t - theta * dt
        out: dict[tuple, float] = {}
        for y, py in dist.items():
            c = conditionals(model, y)
            if s == 0:  # last step: every masked position from p(x0 | y)
                opts = [
                    [(yi, 1.0)] if yi != M else [(v, float(c[i, v])) for v in range(c.shape[1])]
                    for i, yi in enumerate(y)
                ]
                for y2, p in _expand(y, opts):
                    out[y2] = out.get(y2, 0.0) + py * p
                continue
            lam_t = weight(t)
            q1 = 1 - math.exp(-theta * dt * lam_t)
            opts1 = [
                [(yi, 1.0)]
                if yi != M
                else [(M, 1 - q1)] + [(v, q1 * float(c[i, v])) for v in range(c.shape[1])]
                for i, yi in enumerate(y)
            ]
            for ys, p1 in _expand(y, opts1):
                cs = conditionals(model, ys)
                lam_r = weight(rho)
                opts2 = []
                for i, yi in enumerate(ys):
                    if yi != M:
                        opts2.append([(yi, 1.0)])
                        continue
                    mu = [
                        max(a1 * lam_r * float(cs[i, v]) - a2 * lam_t * float(c[i, v]), 0.0)
                        for v in range(c.shape[1])
                    ]
                    tot = sum(mu)
                    q2 = 1 - math.exp(-(1 - theta) * dt * tot)
                    opts2.append(
                        [(M, 1 - q2)]
                        + [(v, q2 * mu[v] / tot if tot > 0 else 0.0) for v in range(len(mu))]
                    )
                for y2, p2 in _expand(ys, opts2):
                    out[y2] = out.get(y2, 0.0) + py * p1 * p2
        dist = out
    return dist


def uniform_ancestral_law(model, process, length, steps):
    """Law of ancestral sampling for the uniform process with the exact posterior, starting
    from the uniform prior. States are complete sequences; returns a V^L vector."""
    v = model.vocab_size
    seqs, _ = model.joint(length)
    n = seqs.shape[0]
    dist = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for j in range(steps):
        t, s = 1 - j / steps, max(1 - (j + 1) / steps, 0.0)
        at, as_ = float(process.alpha(t)), float(process.alpha(s))
        onehot = torch.nn.functional.one_hot(seqs, v).double()
        p0 = model.posterior(at * onehot + (1 - at) / v)  # [n, L, V]  p(x0_i | x_t)
        # q(x_s = y | x_t = x, x0 = u) for each position, marginalised over p0 (D3PM eq. 4)
        a_ts = at / as_ if as_ > 0 else 0.0
        kern = torch.zeros(n, length, v, dtype=torch.float64)
        for y in range(v):
            q_t_given_s = a_ts * (seqs == y).double() + (1 - a_ts) / v  # q(x_t = x | x_s = y)
            tot = 0
            for u in range(v):
                q_s = as_ * (1.0 if y == u else 0.0) + (1 - as_) / v
                q_t = at * (seqs == u).double() + (1 - at) / v
                tot = tot + p0[..., u] * q_s / q_t
            kern[..., y] = q_t_given_s * tot
        kern = kern / kern.sum(-1, keepdim=True)
        # transition matrix T[x, x'] = prod_i kern[x, i, x'_i]
        trans = torch.ones(n, n, dtype=torch.float64)
        for i in range(length):
            trans = trans * kern[:, i, :][:, seqs[:, i]]
        dist = dist @ trans
    return dist


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def tv_tolerance(p: torch.Tensor, n: int, delta: float = 1e-4) -> float:
    """A rigorous bound that the TV between the empirical law of n samples from p and p
    exceeds with probability < delta: E[TV] <= 1/2 sum sqrt(p (1 - p) / n) (Jensen) plus
    the McDiarmid deviation sqrt(log(1/delta) / (2 n)) (one sample moves TV by <= 1/n)."""
    mean = 0.5 * float(torch.sqrt(p * (1 - p) / n).sum())
    return mean + math.sqrt(math.log(1 / delta) / (2 * n))


def empirical(samples: torch.Tensor, v: int) -> torch.Tensor:
    powers = v ** torch.arange(samples.shape[1] - 1, -1, -1)
    idx = (samples * powers).sum(-1)
    c = torch.bincount(idx, minlength=v ** samples.shape[1]).double()
    return c / c.sum()

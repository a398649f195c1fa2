"""DGM² in miniature: forecasting sparse multivariate series through the transitions of latent
clusters, with a gated dynamic Gaussian mixture (Wu et al. 2021, "Dynamic Gaussian Mixture
based Deep Generative Model For Robust Forecasting on Sparse Multivariate Time Series", AAAI).

The model of the paper: a latent cluster ``z_t`` among ``K`` learned centres ``mu_k``, whose
distribution moves with time (the transition of the clusters), a *dynamic Gaussian mixture*
that gates between that transition and a basic (static) mixture, and emissions
``x_t ~ N(mu_{z_t}, diag(s^2))`` of which only some entries are observed (sparse series).

Here, in miniature (docs/timeseries.md):

* the transition is a learned ``K x K`` matrix acting on the previous cluster posterior (the
  paper uses a recurrent network or an ODE);
* the gate is ``beta_t = sigmoid(a H(q_{t-1}) / log K + b)`` with ``H`` the entropy of the
  previous cluster posterior: when the series has been too sparse to tell the cluster, the
  mixture falls back to the basic one. The prior weights of ``z_t`` are
  ``(1 - beta_t) q_{t-1} P + beta_t phi``;
* the inference is the exact forward filter of that model (missing entries are marginalised
  out of the diagonal emissions), so the training objective is the exact log-likelihood
  rather than the paper's ELBO with a structured inference network on imputed inputs.

The data with a known law is :class:`RegimeSeries`, a hidden Markov chain of regimes with
Gaussian emissions: its forecast law given any sparse past is an exact Gaussian mixture
(the same forward filter with the true parameters, checked against brute force over all
regime paths).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.timeseries.metrics import crps_gaussian

__all__ = ["RegimeSeries", "DGM2", "fit_dgm2", "sparse_mask", "forward_filter",
           "crps_mixture", "mixture_crps", "sample_mixture", "last_value_forecast", "ar1_forecast"]


def _check_series(x: Tensor, mask: Tensor, d: int | None) -> tuple[Tensor, Tensor]:
    """``x`` ``[n, T, d]`` (any ``d`` if None) and its bool observation mask, or an error."""
    if not isinstance(x, Tensor) or x.ndim != 3 or (d is not None and x.shape[-1] != d):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be [n, T, d{'' if d is None else f' = {d}'}], got {shape}")
    if not isinstance(mask, Tensor) or mask.shape != x.shape or mask.dtype != torch.bool:
        got = (f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor)
               else type(mask).__name__)
        raise ValueError(f"mask must be a bool tensor of x's shape {tuple(x.shape)} (true = "
                         f"observed), got {got}")
    return x, mask


def forward_filter(x: Tensor, mask: Tensor, means: Tensor, std: Tensor, init: Tensor,
                   step: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The forward filter of a latent-cluster model with emissions ``N(means[k], diag(std^2))``
    observed where ``mask`` is true: ``init`` ``[K]`` the prior weights of ``z_0``, ``step``
    maps the cluster posterior ``[n, K]`` at ``t - 1`` to the prior weights of ``z_t``.

    Returns ``(log p(x_obs) [n], posteriors [n, T, K], priors [n, T, K])``."""
    m = mask.to(means.dtype)
    prior = init.expand(x.shape[0], -1)
    ll, posts, priors = torch.zeros(x.shape[0], dtype=means.dtype), [], []
    for t in range(x.shape[1]):
        if t:
            prior = step(posts[-1])  # the prior weights of z_t given the past
        # log N(x_t,obs; mu_k,obs, s^2): missing entries marginalised out
        z = (x[:, t, None, :].to(means.dtype) - means) / std
        log_e = (-0.5 * (z**2 + math.log(2 * math.pi)) - std.log()) * m[:, t, None, :]
        joint = prior.clamp_min(1e-30).log() + log_e.sum(-1)
        norm = torch.logsumexp(joint, -1)
        ll = ll + norm
        posts.append((joint - norm[:, None]).exp())
        priors.append(prior)
    return ll, torch.stack(posts, 1), torch.stack(priors, 1)


def _ahead(post: Tensor, step: Callable[[Tensor], Tensor], horizon: int) -> Tensor:
    """Cluster weights ``[n, horizon, K]`` of the next ``horizon`` steps (nothing observed)."""
    out, q = [], post
    for _ in range(positive_int("horizon", horizon)):
        q = step(q)
        out.append(q)
    return torch.stack(out, 1)


@dataclass(frozen=True)
class RegimeSeries:
    """A hidden Markov chain of ``K`` regimes on ``d`` coordinates: ``z_0 ~ initial``,
    ``z_t | z_{t-1} ~ transition[z_{t-1}]``, ``x_t ~ N(means[z_t], noise^2 I)``.

    Defaults: 3 sticky regimes (stay with probability 0.85) on 3 coordinates, noise 0.5."""

    means: Tensor = None  # type: ignore[assignment]
    transition: Tensor = None  # type: ignore[assignment]
    initial: Tensor = None  # type: ignore[assignment]
    noise: float = 0.5

    def __post_init__(self) -> None:
        mu = (torch.tensor([[2.0, 0.0, -1.0], [-1.0, 2.0, 0.0], [0.0, -2.0, 2.0]])
              if self.means is None else torch.as_tensor(self.means)).double()
        k = mu.shape[0]
        p = (torch.full((k, k), 0.15 / (k - 1)).fill_diagonal_(0.85) if self.transition is None
             else torch.as_tensor(self.transition)).double()
        pi = (torch.full((k,), 1.0 / k) if self.initial is None
              else torch.as_tensor(self.initial)).double()
        if mu.ndim != 2 or p.shape != (k, k) or pi.shape != (k,):
            raise ValueError(f"means must be [K, d], transition [K, K], initial [K]; got "
                             f"{tuple(mu.shape)}, {tuple(p.shape)}, {tuple(pi.shape)}")
        if not (torch.allclose(p.sum(1), torch.ones(k, dtype=torch.float64), atol=1e-6)
                and bool((p >= 0).all())):
            raise ValueError("transition must be a stochastic matrix (rows of non-negative "
                             "probabilities summing to 1)")
        if abs(float(pi.sum()) - 1) > 1e-6 or not bool((pi >= 0).all()):
            raise ValueError(f"initial must be probabilities summing to 1, got {pi.tolist()}")
        p, pi = p / p.sum(1, keepdim=True), pi / pi.sum()  # exact sums after float32 input
        if not self.noise > 0:
            raise ValueError(f"noise must be positive, got {self.noise}")
        for name, v in (("means", mu), ("transition", p), ("initial", pi)):
            object.__setattr__(self, name, v)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, length: int, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """``n`` series: values ``[n, length, d]`` and regimes ``[n, length]``."""
        positive_int("n", n), positive_int("length", length)
        z = [torch.multinomial(self.initial.expand(n, -1), 1, generator=generator)[:, 0]]
        for _ in range(length - 1):
            z.append(torch.multinomial(self.transition[z[-1]], 1, generator=generator)[:, 0])
        zs = torch.stack(z, 1)
        eps = torch.randn(n, length, self.dim, generator=generator, dtype=torch.float64)
        return self.means[zs] + self.noise * eps, zs

    def step(self, q: Tensor) -> Tensor:
        return q @ self.transition

    def filter(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The exact :func:`forward_filter` of the chain."""
        x, mask = _check_series(x, mask, self.dim)
        std = torch.full((self.dim,), self.noise, dtype=torch.float64)
        return forward_filter(x, mask, self.means, std, self.initial, self.step)

    def forecast_law(self, x: Tensor, mask: Tensor, horizon: int) -> tuple[Tensor, Tensor,
                                                                             Tensor]:
        """The exact law of the next ``horizon`` values given the observed past: a mixture
        with weights ``[n, horizon, K]`` of ``N(means [K, d], std [d])``."""
        _, post, _ = self.filter(x, mask)
        std = torch.full((self.dim,), self.noise, dtype=torch.float64)
        return _ahead(post[:, -1], self.step, horizon), self.means, std


def sparse_mask(shape: tuple[int, ...], observed: float,
                generator: torch.Generator | None = None) -> Tensor:
    """A bool mask of ``shape``: each entry observed independently with probability
    ``observed``."""
    if not 0 < observed <= 1:
        raise ValueError(f"observed must be a probability in (0, 1], got {observed}")
    return torch.rand(shape, generator=generator) < observed


class DGM2(nn.Module):
    """The dynamic Gaussian mixture model of the module docstring: ``clusters`` learned
    centres on ``d`` coordinates, a transition matrix, a basic mixture, a gate and the
    emission scales."""

    def __init__(self, d: int, clusters: int) -> None:
        super().__init__()
        self.d, self.k = positive_int("d", d), positive_int("clusters", clusters)
        self.centres = nn.Parameter(torch.randn(clusters, d))
        self.trans_logits = nn.Parameter(2.0 * torch.eye(clusters))
        self.basic_logits = nn.Parameter(torch.zeros(clusters))
        self.init_logits = nn.Parameter(torch.zeros(clusters))
        self.gate = nn.Parameter(torch.tensor([0.0, -2.0]))  # a, b of beta = sigmoid(a H + b)
        self.log_std = nn.Parameter(torch.zeros(d))

    def step(self, q: Tensor) -> Tensor:
        """The dynamic mixture weights of ``z_t`` from the cluster posterior ``q`` at ``t-1``:
        ``(1 - beta) q P + beta phi``, ``beta = sigmoid(a H(q) / log K + b)``."""
        p = torch.softmax(self.trans_logits, -1).to(q.dtype)
        phi = torch.softmax(self.basic_logits, -1).to(q.dtype)
        ent = -(q * q.clamp_min(1e-30).log()).sum(-1, keepdim=True) / math.log(max(self.k, 2))
        beta = torch.sigmoid(self.gate[0] * ent + self.gate[1]).to(q.dtype)
        return (1 - beta) * (q @ p) + beta * phi

    def _params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        return (self.centres.to(dtype), self.log_std.exp().to(dtype),
                torch.softmax(self.init_logits, -1).to(dtype))

    def log_likelihood(self, x: Tensor, mask: Tensor) -> Tensor:
        """``log p(x_obs)`` ``[n]`` (exact: the forward filter)."""
        x, mask = _check_series(x, mask, self.d)
        mu, std, init = self._params(x.dtype)
        return forward_filter(x, mask, mu, std, init, self.step)[0]

    def assignments(self, x: Tensor, mask: Tensor) -> Tensor:
        """The cluster posteriors ``q(z_t | x_{<=t})`` ``[n, T, K]``."""
        x, mask = _check_series(x, mask, self.d)
        mu, std, init = self._params(x.dtype)
        return forward_filter(x, mask, mu, std, init, self.step)[1]

    def forecast_law(self, x: Tensor, mask: Tensor, horizon: int) -> tuple[Tensor, Tensor,
                                                                             Tensor]:
        """The forecast mixture: weights ``[n, horizon, K]``, centres ``[K, d]``, std
        ``[d]``."""
        mu, std, _ = self._params(x.dtype)
        post = self.assignments(x, mask)
        return _ahead(post[:, -1], self.step, horizon), mu, std

    @torch.no_grad()
    def forecast(self, x: Tensor, mask: Tensor, horizon: int, samples: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """``samples`` draws ``[n, samples, horizon, d]`` of the next ``horizon`` values."""
        return sample_mixture(*self.forecast_law(x, mask, horizon), samples, generator)


def sample_mixture(weights: Tensor, means: Tensor, std: Tensor, samples: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """Draws ``[n, samples, H, d]`` of the mixtures ``weights [n, H, K]`` of
    ``N(means [K, d], diag(std^2))``."""
    n, h, k = weights.shape
    z = torch.multinomial(weights.reshape(-1, k).float(), positive_int("samples", samples),
                          replacement=True, generator=generator)  # [n h, samples]
    mu = means[z].reshape(n, h, samples, -1).transpose(1, 2)
    return mu + std * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)


def crps_mixture(samples: Tensor, weights: Tensor, means: Tensor, std: Tensor) -> float:
    """The expected CRPS of the sample forecast ``[s, d]`` (or a point ``[d]``) when the truth
    is drawn from the mixture ``weights [K]`` of ``N(means [K, d], diag(std^2))``, averaged
    over coordinates: ``sum_k w_k CRPS_k`` (:func:`reverie.timeseries.crps_gaussian`; the
    sample term does not depend on the truth)."""
    s = samples[None].repeat(2, 1) if samples.ndim == 1 else samples
    return sum(float(w) * crps_gaussian(s, means[k], std)
               for k, w in enumerate(weights.tolist()))


def _masked_kmeans(x: Tensor, mask: Tensor, k: int, generator: torch.Generator | None,
                   iters: int = 10) -> Tensor:
    """k-means++ seeding and Lloyd steps on the time steps with an observed entry, distances
    over the observed coordinates only (``[k, d]``)."""
    rows, m = x.reshape(-1, x.shape[-1]).double(), mask.reshape(-1, x.shape[-1]).double()
    keep = m.sum(1) > 0
    if not bool(keep.any()):
        raise ValueError("mask observes nothing")
    rows, m = rows[keep], m[keep]
    col = (rows * m).sum(0) / m.sum(0).clamp_min(1)

    def dist(c: Tensor) -> Tensor:  # [N, k]: mean squared gap over the observed coordinates
        return (m[:, None] * (rows[:, None] - c[None]) ** 2).sum(-1) / m.sum(1, keepdim=True)

    first = int(torch.randint(rows.shape[0], (1,), generator=generator))
    c = torch.where(m[first] > 0, rows[first], col)[None]
    while c.shape[0] < k:  # k-means++: the next centre drawn with probability ~ D^2
        d2 = dist(c).min(1).values
        i = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        c = torch.cat([c, torch.where(m[i] > 0, rows[i], col)[None]])
    for _ in range(iters):  # Lloyd: masked means of the assigned rows
        a = torch.nn.functional.one_hot(dist(c).argmin(1), k).double()  # [N, k]
        num, den = a.T @ (rows * m), a.T @ m
        c = torch.where(den > 0, num / den.clamp_min(1e-12), c)
    return c.float()


def mixture_crps(weights: Tensor, means: Tensor, std: Tensor) -> float:
    """The exact law's own expected CRPS (the floor of :func:`crps_mixture`), averaged over
    coordinates: ``E|Y - Y'| / 2`` for ``Y, Y'`` drawn from the mixture, with
    ``Y - Y' ~ N(mu_k - mu_l, 2 s^2)`` for each pair of components and
    ``E|N(m, v)| = sqrt(v) 2 phi(m / sqrt v) + m (2 Phi(m / sqrt v) - 1)``."""
    m = means[:, None] - means[None]  # [K, K, d]
    sd = (2 * std**2).sqrt()
    z = m / sd
    normal = torch.distributions.Normal(0.0, 1.0)
    e_abs = sd * 2 * normal.log_prob(z).exp() + m * (2 * normal.cdf(z) - 1)
    w = weights.to(means.dtype)
    return float(0.5 * torch.einsum("k,l,kld->d", w, w, e_abs).mean())


def fit_dgm2(x: Tensor, mask: Tensor, clusters: int, steps: int = 300, lr: float = 0.05,
             generator: torch.Generator | None = None) -> DGM2:
    """Fit :class:`DGM2` to sparse series ``x`` ``[n, T, d]`` (observed where ``mask``) by
    maximising the exact log-likelihood with Adam, the centres started by k-means on the
    observed entries (:func:`_masked_kmeans`)."""
    x, mask = _check_series(x, mask, None)
    positive_int("steps", steps)
    model = DGM2(x.shape[-1], clusters)
    with torch.no_grad():
        model.centres.copy_(_masked_kmeans(x, mask, clusters, generator))
        model.log_std.fill_(float(x[mask].std().log()))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xf = x.float()
    for _ in range(steps):  # ascend the log-likelihood per observed entry
        loss = -model.log_likelihood(xf, mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _last_observed(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The last observed value ``[n, d]`` and its time index (``-1``: never observed)."""
    t = torch.arange(x.shape[1])[None, :, None].expand_as(mask)
    idx = torch.where(mask, t, torch.full_like(t, -1)).max(1).values
    val = x.gather(1, idx.clamp_min(0)[:, None]).squeeze(1)
    return val, idx


def last_value_forecast(x: Tensor, mask: Tensor, horizon: int) -> Tensor:
    """Baseline: the last observed value of each coordinate (its observed mean if never
    observed), repeated ``[n, horizon, d]``."""
    val, idx = _last_observed(x, mask)
    mean = (x * mask).sum((0, 1)) / mask.sum((0, 1)).clamp_min(1)
    val = torch.where(idx >= 0, val, mean.expand_as(val))
    return val[:, None].expand(-1, positive_int("horizon", horizon), -1)


def ar1_forecast(x: Tensor, mask: Tensor, horizon: int) -> Tensor:
    """Baseline: a per-coordinate AR(1) ``x_{t+1} - m = rho (x_t - m)`` fitted on the observed
    consecutive pairs of all series, forecast from the last observed value over its gap:
    ``m + rho^gap (x_last - m)`` ``[n, horizon, d]``."""
    m = (x * mask).sum((0, 1)) / mask.sum((0, 1)).clamp_min(1)
    pair = mask[:, 1:] & mask[:, :-1]
    a, b = (x[:, :-1] - m) * pair, (x[:, 1:] - m) * pair
    rho = ((a * b).sum((0, 1)) / (a * a).sum((0, 1)).clamp_min(1e-12)).clamp(-1, 1)
    val, idx = _last_observed(x, mask)
    gap = (x.shape[1] - idx)[:, None, :] + torch.arange(positive_int("horizon", horizon)
                                                         )[None, :, None]
    dev = torch.where(idx >= 0, val - m, torch.zeros_like(val))[:, None]
    return m + rho**gap * dev

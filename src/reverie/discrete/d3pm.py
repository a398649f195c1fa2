"""D3PM with structured transition matrices (Austin et al. 2021, "Structured denoising diffusion
models in discrete state-spaces", Sec. 3 and App. A), in discrete time ``t = 1..T``.

Each position of ``x0 in {0..K-1}^L`` is corrupted independently by a Markov chain with one-step
matrices ``Q_t`` (rows: from): ``q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t)``, so
``q(x_t | x0) = Cat(x0 Qbar_t)``, ``Qbar_t = Q_1 ... Q_t``. For ordinal vocabularies (pixel
values, counts) the structured matrices move a token preferably to *nearby* tokens:

* ``gaussian`` -- the discretised Gaussian (App. A.2.2): ``[Q_t]_ij ∝ exp(-4 |i-j|^2 /
  ((K-1)^2 beta_t))`` for ``i != j``, normalised over ``-(K-1)..K-1``; the diagonal takes the rest;
* ``band`` -- nearest-neighbour (band-diagonal) transitions: ``[Q_t]_ij = beta_t / K`` for
  ``0 < |i-j| <= bandwidth``, the diagonal takes the rest;
* ``uniform`` -- ``(1 - beta_t) I + beta_t 11^T / K`` (for comparison).

All three are symmetric and doubly stochastic, so the uniform law is stationary: sampling starts
from ``x_T ~ Uniform``. The exact posterior (eq. 3) is ``q(x_{t-1} | x_t, x0) ∝ Q_t[:, x_t] *
Qbar_{t-1}[x0, :]``; the model is ``p(x_{t-1} | x_t) = sum_x0 p(x0 | x_t) q(x_{t-1} | x_t, x0)``
(the x0-parameterisation, eq. 4). :func:`hybrid_loss` is D3PM's ``L_vb + lambda L_CE`` (eq. 5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reverie._random import Generators
from reverie._registry import Registry
from reverie.discrete._sampling import sample_categorical, uniform

__all__ = [
    "TRANSITIONS",
    "gaussian_transition",
    "band_transition",
    "uniform_transition",
    "StructuredProcess",
    "hybrid_loss",
]

#: Structured one-step transition matrices by name: ``fn(K, beta, **options) -> [K, K]``.
TRANSITIONS: Registry[Callable[..., Tensor]] = Registry("transition", "TRANSITIONS")


def _register(name: str):
    def wrap(fn):
        TRANSITIONS.add(fn, name)
        return fn

    return wrap


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0.0 < beta <= 1.0):
        raise ValueError(f"beta must lie in (0, 1], got {beta!r}")
    return float(beta)


def _fill_diagonal(off: Tensor) -> Tensor:
    """Rows with the diagonal taking ``1 - sum of the off-diagonal``."""
    off = off.fill_diagonal_(0.0)
    return off + torch.diag(1.0 - off.sum(-1))


@_register("gaussian")
def gaussian_transition(k: int, beta: float) -> Tensor:
    """D3PM's discretised Gaussian transition matrix (App. A.2.2), ``[K, K]`` float64."""
    beta = _check_beta(beta)
    n = torch.arange(-(k - 1), k, dtype=torch.float64)
    w = torch.exp(-4.0 * n**2 / ((k - 1) ** 2 * beta))
    d = torch.arange(k, dtype=torch.float64)
    off = torch.exp(-4.0 * (d[:, None] - d[None, :]) ** 2 / ((k - 1) ** 2 * beta)) / w.sum()
    return _fill_diagonal(off)


@_register("band")
def band_transition(k: int, beta: float, bandwidth: int = 1) -> Tensor:
    """Nearest-neighbour (band-diagonal) transitions: ``beta / K`` to each token within
    ``bandwidth`` (D3PM Sec. 3.1), ``[K, K]`` float64."""
    beta = _check_beta(beta)
    if not (isinstance(bandwidth, int) and 1 <= bandwidth < k):
        raise ValueError(f"bandwidth must be an integer in [1, {k - 1}], got {bandwidth!r}")
    d = torch.arange(k)
    near = (d[:, None] - d[None, :]).abs() <= bandwidth
    return _fill_diagonal(near.double() * beta / k)


@_register("uniform")
def uniform_transition(k: int, beta: float) -> Tensor:
    """``(1 - beta) I + beta 11^T / K`` (D3PM uniform)."""
    beta = _check_beta(beta)
    return (1.0 - beta) * torch.eye(k, dtype=torch.float64) + beta / k


def check_stochastic(q: Tensor, name: str = "transition matrix") -> Tensor:
    """``q`` as float64 if it is a stack of row-stochastic matrices, else a ``ValueError``."""
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.ndim < 2 or q.shape[-1] != q.shape[-2]:
        raise ValueError(f"{name} must be square [K, K] (or [T, K, K]), got {list(q.shape)}")
    if not bool(torch.isfinite(q).all()) or bool((q < -1e-12).any()):
        raise ValueError(f"{name} must have finite non-negative entries")
    err = float((q.sum(-1) - 1.0).abs().max())
    if err > 1e-9:
        raise ValueError(f"the rows of {name} must sum to 1 (off by up to {err:.3g})")
    return q.clamp_min(0.0)


def _linear_betas(steps: int, lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * j / max(steps - 1, 1) for j in range(steps)]


class StructuredProcess:
    """D3PM in discrete time with the one-step matrices ``Q_1..Q_T`` (``matrices``:
    ``[T, K, K]``, row-stochastic), or built by :meth:`make` from a :data:`TRANSITIONS` name."""

    kind = "structured"

    def __init__(self, matrices: Tensor):
        q = check_stochastic(matrices, "matrices")
        if q.ndim != 3:
            raise ValueError(f"matrices must have shape [T, K, K], got {list(q.shape)}")
        self.q = q
        self.steps, self.vocab_size = q.shape[0], q.shape[-1]
        bars = [torch.eye(self.vocab_size, dtype=torch.float64)]
        for qt in q:
            bars.append(bars[-1] @ qt)  # Qbar_t = Qbar_{t-1} Q_t
        self.qbar = torch.stack(bars)  # [T + 1, K, K], qbar[0] = I

    @classmethod
    def make(
        cls,
        name: str,
        vocab_size: int,
        steps: int,
        betas: tuple[float, float] | list[float] = (0.02, 1.0),
        **options,
    ) -> StructuredProcess:
        """``T = steps`` matrices ``TRANSITIONS[name](K, beta_t, **options)``; ``betas`` is a
        list of ``T`` values or ``(lo, hi)`` for D3PM's linear schedule (Gaussian: 0.02 to 1)."""
        fn = TRANSITIONS[name]
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        b = _linear_betas(steps, *betas) if isinstance(betas, tuple) else list(betas)
        if len(b) != steps:
            raise ValueError(f"betas must be (lo, hi) or {steps} values, got {len(b)}")
        return cls(torch.stack([fn(vocab_size, beta, **options) for beta in b]))

    # ---- forward -------------------------------------------------------------------------
    def _t(self, t: Tensor | int, lo: int) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        if bool((t < lo).any()) or bool((t > self.steps).any()):
            raise ValueError(f"t must lie in [{lo}, {self.steps}], got {t.tolist()}")
        return t

    def marginal(self, x0: Tensor, t: Tensor | int) -> Tensor:
        """``q(x_t | x0) = x0 Qbar_t``: ``[B, L, K]`` for ``x0`` ``[B, L]`` and ``t`` ``[B]``."""
        t = self._t(t, 0).expand(x0.shape[0])
        return self.qbar[t[:, None], x0]

    def add_noise(self, x0: Tensor, t: Tensor | int, generator: Generators = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)``."""
        self._check_tokens(x0)
        probs = self.marginal(x0, t)
        return sample_categorical(probs.log(), uniform(x0.shape, generator))

    def posterior(self, xt: Tensor, x0_probs: Tensor, t: Tensor | int) -> Tensor:
        """``sum_x0 p(x0) q(x_{t-1} | x_t, x0)`` with ``q(x_{t-1} | x_t, x0) ∝ Q_t[x_{t-1}, x_t]
        Qbar_{t-1}[x0, x_{t-1}]`` (D3PM eqs. 3-4), ``[B, L, K]``; ``x0_probs`` ``[B, L, K]``
        (a one-hot gives the exact posterior given ``x0``)."""
        t = self._t(t, 1).expand(xt.shape[0])
        like = self.q[t - 1].gather(-1, xt.unsqueeze(1).expand(-1, self.vocab_size, -1))
        like = like.transpose(1, 2)  # [B, L, K]: q(x_t | x_{t-1} = y) for each y
        prev = self.qbar[t - 1]  # [B, K(x0), K(y)]
        # q(x_{t-1}=y | x_t, x0) = like(y) prev[x0, y] / sum_y' like(y') prev[x0, y']
        joint = like.unsqueeze(2) * prev.unsqueeze(1)  # [B, L, K(x0), K(y)]
        cond = joint / joint.sum(-1, keepdim=True).clamp_min(1e-300)
        return (x0_probs.double().unsqueeze(-1) * cond).sum(-2)

    # ---- sampling ------------------------------------------------------------------------
    def sample(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        n: int,
        length: int,
        generator: Generators = None,
    ) -> Tensor:
        """Ancestral sampling ``x_T ~ Uniform`` (the stationary law), ``x_{t-1} ~ p(x_{t-1} |
        x_t)`` with ``model(x_t, t) -> log p(x0 | x_t)`` (``[n, L, K]``, ``t`` integer
        ``[n]``); the last step draws ``x0 ~ p(x0 | x_1)``."""
        k = self.vocab_size
        x = (uniform((n, length), generator) * k).long().clamp_max(k - 1)  # x_T
        for t in range(self.steps, 0, -1):
            tt = torch.full((n,), t, dtype=torch.long)
            p0 = model(x, tt).double().exp()  # p(x0 | x_t)
            probs = p0 if t == 1 else self.posterior(x, p0, tt)
            x = sample_categorical(probs.clamp_min(1e-300).log(), uniform((n, length), generator))
        return x

    def exact_model(self, hmm) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact ``log p(x0 | x_t)`` of a :class:`reverie.reference.HiddenMarkovModel`
        under this process (forward-backward with evidence ``Qbar_t[:, x_t^i]``)."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            ev = self.qbar[t[:, None], :, x]  # [B, L, K(x0)] = q(x_t^i | x0^i)
            return torch.log(hmm.posterior(ev))

        return fn

    def _check_tokens(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dtype != torch.long or x.ndim != 2:
            raise TypeError("tokens must be a LongTensor [batch, length]")
        if bool((x < 0).any()) or bool((x >= self.vocab_size).any()):
            raise ValueError(f"tokens must lie in [0, {self.vocab_size - 1}]")

    def __repr__(self) -> str:
        return f"StructuredProcess(T={self.steps}, K={self.vocab_size})"


def _kl(p: Tensor, q: Tensor) -> Tensor:
    """``sum_y p log(p / q)`` over the last axis (0 log 0 = 0)."""
    p = p.double()
    ratio = torch.log(p.clamp_min(1e-300)) - torch.log(q.double().clamp_min(1e-300))
    return torch.where(p > 0, p * ratio, torch.zeros_like(p)).sum(-1)


def vb_term(
    proc: StructuredProcess, logp0: Tensor, xt: Tensor, x0: Tensor, t: Tensor | int
) -> Tensor:
    """D3PM's ``L_{t-1}``, summed over positions, ``[B]``: ``KL(q(x_{t-1} | x_t, x0) ||
    p(x_{t-1} | x_t))`` for ``t >= 2`` and ``-log p(x0 | x_1)`` for ``t = 1``."""
    t = proc._t(t, 1).expand(xt.shape[0])
    p0 = logp0.double().exp()
    onehot = torch.nn.functional.one_hot(x0, proc.vocab_size).double()
    kl = _kl(proc.posterior(xt, onehot, t), proc.posterior(xt, p0, t)).sum(-1)
    nll = -logp0.double().gather(-1, x0.unsqueeze(-1)).squeeze(-1).sum(-1)
    return torch.where(t == 1, nll, kl)


def prior_term(proc: StructuredProcess, x0: Tensor) -> Tensor:
    """``L_T = KL(q(x_T | x0) || Uniform)``, summed over positions, ``[B]`` (no parameters)."""
    q_t = proc.marginal(x0, proc.steps)
    return _kl(q_t, torch.full_like(q_t, 1.0 / proc.vocab_size)).sum(-1)


def hybrid_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    proc: StructuredProcess,
    x0: Tensor,
    *,
    hybrid_coeff: float = 0.001,
    generator: Generators = None,
) -> Tensor:
    """D3PM's hybrid loss ``L_vb + lambda E[-log p(x0 | x_t)]`` (eq. 5), one ``t ~ U{1..T}``
    per sequence, ``[B]`` (keeps gradients). ``T * L_{t-1} + L_T`` is an unbiased estimate of
    the full ``L_vb`` (the negative ELBO of ``x0``)."""
    proc._check_tokens(x0)
    if not (isinstance(hybrid_coeff, (int, float)) and hybrid_coeff >= 0):
        raise ValueError(f"hybrid_coeff must be >= 0, got {hybrid_coeff!r}")
    b = x0.shape[0]
    t = 1 + (uniform((b,), generator) * proc.steps).long().clamp_max(proc.steps - 1)
    xt = proc.add_noise(x0, t, generator)
    logp0 = torch.log_softmax(model(xt, t).double(), -1)
    ce = -logp0.gather(-1, x0.unsqueeze(-1)).squeeze(-1).sum(-1)
    vb = proc.steps * vb_term(proc, logp0, xt, x0, t) + prior_term(proc, x0)
    return vb + hybrid_coeff * ce


"""Exact discrete sequence models: hidden Markov models and Markov chains over a few symbols.

A hidden Markov model ``z_1 -> z_2 -> ...`` (hidden states ``K``) emitting ``x_i ~ E[z_i]``
(symbols ``V``) answers every question a discrete diffusion sampler asks, exactly, by the
forward-backward algorithm (Rabiner 1989):

* ``p(x0^i = v | x_t)`` for *any* corruption that acts independently per position, given as
  per-position evidence ``e_i(v) = q(x_t^i | x0^i = v)``: a masked position has ``e_i = 1``,
  a clean one ``e_i = onehot``, a uniformly-noised one ``alpha [v = x_t^i] + (1 - alpha) / V``;
* ``log p(x0)`` and the full joint law over ``V^L`` sequences (for total-variation distances);
* exact samples.

:meth:`HiddenMarkovModel.denoiser` turns it into a :class:`reverie.discrete.TokenDenoiser`
for the masked or the uniform process, so samplers can be tested against the exact joint; the
model itself is also a token denoiser for masked diffusion (mask id ``V``), so
``reverie.discrete.generate(chain, length=4, steps=4, sampler="first_hitting")`` works directly.
Everything is computed in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reverie._random import Generators
from reverie.discrete.denoiser import TokenDenoiserBase

__all__ = ["HiddenMarkovModel", "MarkovChain"]


def _stochastic(m: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
    if tuple(m.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(m.shape)}")
    if not bool((m >= 0).all()) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} must be non-negative and finite")
    s = m.sum(-1, keepdim=True)
    if not bool((s > 0).all()):
        raise ValueError(f"every row of {name} needs a positive entry")
    return m / s


class HiddenMarkovModel(TokenDenoiserBase):
    """``p(x) = sum_z pi(z_1) E(z_1, x_1) prod_i A(z_{i-1}, z_i) E(z_i, x_i)`` over sequences
    of any length.

    ``initial``: ``[K]``; ``transition``: ``[K, K]`` (rows: from); ``emission``: ``[K, V]``.
    Rows are normalised here. As a token denoiser (masked process, linear schedule, mask id
    ``V``) a call returns the exact ``log p(x0 | x_t)``.
    """

    time_conditioned = False
    takes_padding = True  # left-padded rows: the chain starts at each row's first real token

    def __init__(
        self,
        initial: Tensor | Sequence[float],
        transition: Tensor | Sequence[Sequence[float]],
        emission: Tensor | Sequence[Sequence[float]],
    ):
        pi = torch.as_tensor(initial, dtype=torch.float64)
        k = pi.shape[0] if pi.ndim == 1 else -1
        if pi.ndim != 1:
            raise ValueError(f"initial must have shape [K], got {list(pi.shape)}")
        self.initial = _stochastic(pi, "initial", (k,))
        self.transition = _stochastic(
            torch.as_tensor(transition, dtype=torch.float64), "transition", (k, k)
        )
        e = torch.as_tensor(emission, dtype=torch.float64)
        if e.ndim != 2 or e.shape[0] != k:
            raise ValueError(f"emission must have shape [{k}, V], got {list(e.shape)}")
        self.emission = _stochastic(e, "emission", (k, e.shape[1]))
        self._masked = self.denoiser()
        self.mask_id = self._masked.mask_id
        self.process = self._masked.process

    def __call__(
        self, x: Tensor, t: float | Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Exact ``log p(x0 | x_t)`` for masked diffusion (SUBS applied), ``[B, L, V]``; with
        ``attention_mask`` (True = a real token) left padding is skipped, so a padded row gets
        the conditionals of its real part alone."""
        return self._masked(x, t, attention_mask)

    @property
    def num_states(self) -> int:
        return self.initial.shape[0]

    @property
    def vocab_size(self) -> int:
        """Number of symbols ``V``."""
        return self.emission.shape[1]

    # ---- sampling and likelihood -----------------------------------------------------------
    def sample(self, n: int, length: int, generator: Generators = None) -> Tensor:
        """``n`` exact samples, ``LongTensor[n, length]``."""
        from reverie.discrete._sampling import uniform

        u = uniform((n, length, 2), generator).permute(1, 2, 0).unsqueeze(-1)  # [L, 2, n, 1]
        cdf_a = self.transition.cumsum(-1)
        cdf_e = self.emission.cumsum(-1)
        k = self.num_states
        z = torch.searchsorted(
            self.initial.cumsum(-1).expand(n, k).contiguous(), u[0, 0].contiguous(), right=True
        )
        z = z.squeeze(-1).clamp_max(k - 1)
        out = torch.empty(n, length, dtype=torch.long)
        for i in range(length):
            if i > 0:
                z = (
                    torch.searchsorted(cdf_a[z], u[i, 0].contiguous(), right=True)
                    .squeeze(-1)
                    .clamp_max(k - 1)
                )
            x = torch.searchsorted(cdf_e[z], u[i, 1].contiguous(), right=True).squeeze(-1)
            out[:, i] = x.clamp_max(self.vocab_size - 1)
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)``, ``[B]`` float64 (the forward algorithm)."""
        x = self._check_tokens(x)
        ev = torch.zeros(*x.shape, self.vocab_size, dtype=torch.float64).scatter_(
            -1, x.unsqueeze(-1), 1.0
        )
        _, _, log_z = self._forward(ev)
        return log_z

    def joint(self, length: int) -> tuple[Tensor, Tensor]:
        """All ``V^length`` sequences in lexicographic order (row ``j`` spells ``j`` in base
        ``V``) and their exact probabilities."""
        if self.vocab_size**length > 2_000_000:
            raise ValueError(f"V^L = {self.vocab_size}^{length} sequences is too many to enumerate")
        seqs = torch.tensor(
            list(itertools.product(range(self.vocab_size), repeat=length)), dtype=torch.long
        )
        return seqs, self.log_prob(seqs).exp()

    def index(self, x: Tensor) -> Tensor:
        """Each sequence's row in :meth:`joint` (its base-``V`` number)."""
        x = self._check_tokens(x)
        powers = self.vocab_size ** torch.arange(x.shape[1] - 1, -1, -1, dtype=torch.long)
        return (x * powers).sum(-1)

    def total_variation(self, samples: Tensor) -> float:
        """``TV(empirical law of samples, exact law) = 1/2 sum_x |p_hat(x) - p(x)|``."""
        samples = self._check_tokens(samples)
        _, p = self.joint(samples.shape[1])
        counts = torch.bincount(self.index(samples), minlength=p.shape[0]).double()
        return 0.5 * float((counts / counts.sum() - p).abs().sum())

    def tv_noise_floor(self, n: int, length: int) -> float:
        """Expected TV between the empirical law of ``n`` exact samples and the exact law, to
        leading order: ``E|p_hat - p| = sqrt(2 p (1 - p) / (pi n))`` per sequence (normal
        approximation of the binomial), halved and summed."""
        _, p = self.joint(length)
        return 0.5 * float(torch.sqrt(2.0 * p * (1.0 - p) / (math.pi * n)).sum())

    # ---- conditionals ----------------------------------------------------------------------
    def posterior(self, evidence: Tensor, real: Tensor | None = None) -> Tensor:
        """``p(x^i = v | all evidence)`` for per-position likelihoods ``evidence[b, i, v] =
        p(observation_i | x^i = v)``, ``[B, L, V]`` float64 (forward-backward). ``real``
        (bool ``[B, L]``): positions of the sequence; the others (left padding) are skipped."""
        ev = torch.as_tensor(evidence, dtype=torch.float64)
        if ev.ndim != 3 or ev.shape[-1] != self.vocab_size:
            raise ValueError(
                f"evidence must have shape [B, L, {self.vocab_size}], got {list(ev.shape)}"
            )
        pred, _, _ = self._forward(ev, real)
        back = self._backward(ev)
        w = pred * back  # p(z_i, evidence except at i), up to a constant per position
        post = (w @ self.emission) * ev  # sum_z w(z) E(z, v) e_i(v)
        return post / post.sum(-1, keepdim=True)

    def conditionals(self, x: Tensor, mask_id: int, real: Tensor | None = None) -> Tensor:
        """``p(x0^i = v | the unmasked positions of x)`` for every position, ``[B, L, V]``
        (``real``: see :meth:`posterior`)."""
        masked = x == mask_id
        xv = torch.where(masked, torch.zeros_like(x), x)
        self._check_tokens(xv)
        ev = torch.zeros(*x.shape, self.vocab_size, dtype=torch.float64).scatter_(
            -1, xv.unsqueeze(-1), 1.0
        )
        ev[masked] = 1.0
        return self.posterior(ev, real)

    def denoiser(self, process=None, *, mask_id: int | None = None):
        """The exact token denoiser for ``process`` (default: masked diffusion, linear schedule).

        Masked: ``p(x0^i | x_t)`` from the unmasked positions; the mask token is the extra id
        ``mask_id = V`` (as in MD4) unless another id ``>= V`` is given. Uniform: ``p(x0^i | x_t)``
        with the per-position evidence ``alpha_t [v = x_t^i] + (1 - alpha_t) / V``. Not time
        conditioned for the masked process (the exact conditionals do not depend on ``t``).
        """
        from reverie.discrete.denoiser import TokenDenoiser
        from reverie.discrete.process import MaskedProcess

        process = MaskedProcess() if process is None else process
        v = self.vocab_size
        if process.kind == "masked":
            mid = v if mask_id is None else mask_id
            if mid != v:
                raise ValueError(
                    f"the exact model's mask token is the extra id {v}, got mask_id={mid}"
                )

            def fn(x: Tensor, t: Tensor, attention_mask: Tensor | None = None) -> Tensor:
                return torch.log(self.conditionals(x, mid, attention_mask)).float()

            return TokenDenoiser(
                fn, mask_id=mid, vocab_size=v, process=process, time_conditioned=False,
                padding=True,
            )

        def fn_uniform(x: Tensor, t: Tensor) -> Tensor:
            a = process.alpha(t.double()).reshape(-1, 1, 1)
            onehot = torch.zeros(*x.shape, v, dtype=torch.float64).scatter_(
                -1, x.unsqueeze(-1), 1.0
            )
            return torch.log(self.posterior(a * onehot + (1.0 - a) / v)).float()

        return TokenDenoiser(
            fn_uniform, mask_id=None, vocab_size=v, process=process, time_conditioned=True
        )

    # ---- internals -------------------------------------------------------------------------
    def _check_tokens(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.long or x.ndim != 2:
            raise TypeError("sequences must be a LongTensor [batch, length]")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(
                f"tokens must lie in [0, {self.vocab_size}), got [{int(x.min())}, {int(x.max())}]"
            )
        return x

    def _forward(self, ev: Tensor, real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Scaled forward pass: ``pred[:, i] ∝ p(z_i | evidence before i)``, the filtered
        ``alpha``, and ``log p(all evidence)``; positions outside ``real`` (left padding) pass
        the initial law on unchanged."""
        b, n, _ = ev.shape
        k = self.num_states
        eh = ev @ self.emission.T  # [B, L, K]: p(obs_i | z_i)
        pred = torch.empty(b, n, k, dtype=torch.float64)
        filt = torch.empty(b, n, k, dtype=torch.float64)
        log_z = torch.zeros(b, dtype=torch.float64)
        p = self.initial.expand(b, k)
        for i in range(n):
            pred[:, i] = p
            a = p * eh[:, i]
            s = a.sum(-1, keepdim=True)
            filt[:, i] = a / s
            nxt = filt[:, i] @ self.transition
            log_s = torch.log(s.squeeze(-1))
            if real is not None:  # padding: no emission, no step of the chain
                pad = ~real[:, i].to(torch.bool)
                log_s = torch.where(pad, torch.zeros_like(log_s), log_s)
                nxt = torch.where(pad[:, None], p, nxt)
            log_z = log_z + log_s
            p = nxt
        return pred, filt, log_z

    def _backward(self, ev: Tensor) -> Tensor:
        """Scaled backward messages ``beta_i(z) ∝ p(evidence after i | z_i)``."""
        b, n, _ = ev.shape
        eh = ev @ self.emission.T
        back = torch.empty(b, n, self.num_states, dtype=torch.float64)
        m = torch.ones(b, self.num_states, dtype=torch.float64)
        for i in range(n - 1, -1, -1):
            back[:, i] = m
            m = (eh[:, i] * m) @ self.transition.T
            m = m / m.sum(-1, keepdim=True)
        return back

    def __repr__(self) -> str:
        return f"HiddenMarkovModel(K={self.num_states}, V={self.vocab_size})"


class MarkovChain(HiddenMarkovModel):
    """A first-order Markov chain over ``V`` symbols: ``p(x) = pi(x_1) prod_i A(x_{i-1}, x_i)``
    (the hidden Markov model with identity emissions)."""

    def __init__(
        self,
        initial: Tensor | Sequence[float],
        transition: Tensor | Sequence[Sequence[float]],
    ):
        pi = torch.as_tensor(initial, dtype=torch.float64)
        if pi.ndim != 1:
            raise ValueError(f"initial must have shape [V], got {list(pi.shape)}")
        super().__init__(pi, transition, torch.eye(pi.shape[0], dtype=torch.float64))

    @classmethod
    def random(
        cls, vocab_size: int, generator: torch.Generator | None = None, sharpness: float = 2.0
    ) -> MarkovChain:
        """A random chain whose rows are ``softmax(sharpness * N(0, I))``: larger sharpness
        gives strongly dependent neighbours, so parallel decoding is visibly wrong."""
        g = torch.randn(vocab_size + 1, vocab_size, generator=generator, dtype=torch.float64)
        p = torch.softmax(sharpness * g, dim=-1)
        return cls(p[0], p[1:])

    def __repr__(self) -> str:
        return f"MarkovChain(V={self.vocab_size})"

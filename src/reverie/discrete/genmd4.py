"""GenMD4: masked diffusion with state-dependent masking schedules (Shi et al. 2024,
"Simplified and generalized masked diffusion for discrete data", Sec. 5 "GenMD4").

Each token value ``v`` has its own schedule ``alpha_t(v) = 1 - t^{w_v}`` (MD4's polynomial
schedule with a per-token exponent ``w_v > 0``): a token ``x0^i = v`` is still clean at time
``t`` with probability ``alpha_t(v)``, masked otherwise. Tokens with a small ``w_v`` are masked
early (and unmasked late in generation).

* the reverse rates: a masked position unmasks into ``y`` at rate ``h_t(y) p(x0^i = y | x_t)``,
  ``h_t(y) = -alpha_t'(y) / (1 - alpha_t(y)) = w_y / t``, where the posterior ``p(x0^i | x_t)``
  already knows that position ``i`` is still masked (evidence ``1 - alpha_t(v)``);
* the ELBO (GenMD4's eq.; the generalised KL of :mod:`reverie.discrete.process` with these
  rates): per masked position ``h^T mu - h(x0) - h(x0) log mu(x0)``, ``mu = p(. | x_t)``;
* the ancestral step ``t -> s``: a masked position becomes ``y`` with probability
  ``mu(y) (alpha_s(y) - alpha_t(y)) / (1 - alpha_t(y))`` and stays masked otherwise.

:class:`GenMD4Process` is a :class:`~reverie.discrete.process.DiscreteProcess`, so
:func:`reverie.discrete.nelbo` estimates its ELBO; it samples with its own
:meth:`GenMD4Process.sample` (``discrete.generate``'s samplers assume one schedule for all tokens
and refuse it).

Learning the exponents (:class:`LearnedExponents`, :meth:`GenMD4Process.rloo_nelbo`): the
ELBO depends on ``w`` through the hazard ``w / t`` in the integrand (a pathwise gradient) and
through the law of the masking events ``x_t ~ q(. | x0; w)``, which are discrete; the paper
estimates the second part with REINFORCE leave-one-out over two draws of ``x_t`` at the same
``t`` (md4's ``GenMD4.reinforce_loss``): ``1/2 (L_1 - L_2) grad(log q(x_t^1) - log q(x_t^2))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from reverie._random import Generators
from reverie._tensor import as64
from reverie.discrete._sampling import sample_categorical, uniform
from reverie.discrete.process import DiscreteProcess, PolynomialSchedule

__all__ = ["GenMD4Process", "LearnedExponents"]


class GenMD4Process(DiscreteProcess):
    """State-dependent masking with per-token exponents ``w`` (``[V]``, each ``> 0``):
    ``alpha_t(v) = 1 - t^{w_v}``. The mask token is the extra id ``V``."""

    kind = "genmd4"

    def __init__(self, exponents: Sequence[float] | Tensor):
        w = torch.as_tensor(exponents, dtype=torch.float64)
        if w.ndim != 1 or w.numel() < 2:
            raise ValueError(f"exponents must be a vector [V] with V >= 2, got {list(w.shape)}")
        if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ValueError(f"schedule exponents must be finite and > 0, got {w.tolist()}")
        super().__init__(PolynomialSchedule(float(w.detach().mean())))  # (the average, for display)
        self.w = w
        self.vocab_size = w.numel()
        self.mask_id = self.vocab_size

    # ---- schedules per token value ------------------------------------------------------
    def alpha_v(self, t: float | Tensor) -> Tensor:
        """``alpha_t(v)`` for every ``v``: ``[..., V]`` for ``t`` of shape ``[...]``."""
        t = as64(t)
        if bool((t < 0).any()) or bool((t > 1).any()):
            raise ValueError(f"t must lie in [0, 1], got {t.tolist()}")
        return 1.0 - t.unsqueeze(-1) ** self.w

    def masked_v(self, t: float | Tensor) -> Tensor:
        """``1 - alpha_t(v) = t^{w_v}`` (computed directly: no cancellation near ``t = 0``)."""
        self.alpha_v(t)  # (range check)
        return as64(t).unsqueeze(-1) ** self.w

    def hazard(self, t: float | Tensor) -> Tensor:
        """``h_t(v) = -alpha_t'(v) / (1 - alpha_t(v)) = w_v / t``, ``[..., V]``."""
        t = as64(t)
        return self.w / t.unsqueeze(-1)

    # ---- forward --------------------------------------------------------------------------
    def add_noise(self, x0: Tensor, t: Tensor, ids=None, generator: Generators = None) -> Tensor:
        self._check_tokens(x0)
        a = self.alpha_v(torch.as_tensor(t, dtype=torch.float64).reshape(-1))  # [B, V]
        keep = a.gather(-1, x0.to(a.device))  # alpha_t(x0^i), [B, L]
        u = uniform(x0.shape, generator, device=x0.device)
        return torch.where(u >= keep, torch.full_like(x0, self.mask_id), x0)

    def evidence(self, xt: Tensor, t: Tensor) -> Tensor:
        """``q(x_t^i | x0^i = v)`` for every ``v``, ``[B, L, V]`` (for exact posteriors)."""
        m = self.masked_v(torch.as_tensor(t, dtype=torch.float64).reshape(-1))[:, None, :]
        masked = (xt == self.mask_id).unsqueeze(-1)
        onehot = torch.zeros(*xt.shape, self.vocab_size, dtype=torch.float64)
        onehot.scatter_(-1, xt.clamp_max(self.vocab_size - 1).unsqueeze(-1), 1.0)
        return torch.where(masked, m, (1.0 - m) * onehot)

    # ---- reverse --------------------------------------------------------------------------
    def reverse_rates(self, logp: Tensor, x: Tensor, t: Tensor, ids=None) -> Tensor:
        h = self.hazard(torch.as_tensor(t, dtype=torch.float64).reshape(-1))[:, None, :]
        masked = (x == self.mask_id).unsqueeze(-1)
        p = logp.double().exp()[..., : self.vocab_size]
        return torch.where(masked, h * p, torch.zeros((), dtype=torch.float64))

    def nelbo_integrand(self, logp: Tensor, xt: Tensor, x0: Tensor, t: Tensor, ids=None) -> Tensor:
        # per masked position: h^T mu - h(x0) - h(x0) log mu(x0)  (GenMD4 ELBO)
        h = self.hazard(torch.as_tensor(t, dtype=torch.float64).reshape(-1))[:, None, :]
        lp = logp.double()[..., : self.vocab_size]
        h0 = h.expand_as(lp).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        lp0 = lp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        term = (h * lp.exp()).sum(-1) - h0 - h0 * lp0
        term = torch.where(xt == self.mask_id, term, torch.zeros_like(term))
        return term.sum(-1).to(logp.dtype)

    def log_q(self, xt: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """``log q(x_t | x0)`` summed over positions, ``[B]``, differentiable in ``w``: a
        position of token ``v`` is masked with probability ``t^{w_v}``."""
        logt = torch.log(torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1))
        wlogt = self.w[x0] * logt  # log t^{w_{x0}}, [B, L]
        masked = xt == self.mask_id
        clean = torch.where(masked, -torch.ones_like(wlogt), wlogt)  # (no 0 * inf gradient)
        return torch.where(masked, wlogt, torch.log(-torch.expm1(clean))).sum(-1)

    def rloo_nelbo(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        *,
        t: Tensor | None = None,
        generator: Generators = None,
    ) -> Tensor:
        """GenMD4's training loss with learned exponents, ``[B]`` (Shi et al. 2024, Sec. 5):
        its value is the mean of two NELBO integrands at one time ``t ~ U(0, 1]`` per row
        (``x_t^1, x_t^2 ~ q(. | x0)``), an unbiased NELBO estimate; its gradient in ``w`` is the
        pathwise part plus the leave-one-out REINFORCE term for the masking events (a term of
        value zero). ``model(x_t, t) -> log p(x0 | x_t)``, ``[B, L, V]``; ``t``: ``[B]``."""
        self._check_tokens(x0)
        if t is None:
            t = 1.0 - uniform((x0.shape[0],), generator)  # in (0, 1]
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        losses, logqs = [], []
        for _ in range(2):
            xt = self.add_noise(x0, t, generator=generator)
            losses.append(self.nelbo_integrand(model(xt, t), xt, x0, t).double())
            lq = self.log_q(xt, x0, t)
            logqs.append(lq - lq.detach())  # value 0, gradient grad log q(x_t | x0; w)
        # RLOO with two draws: each draw's baseline is the other's loss
        reinforce = 0.5 * (losses[0] - losses[1]).detach() * (logqs[0] - logqs[1])
        return 0.5 * (losses[0] + losses[1]) + reinforce

    def step_probabilities(self, logp: Tensor, x: Tensor, t: float, s: float) -> Tensor:
        """``p(x_s | x_t)`` per position over ``V + 1`` outcomes (the last: stay masked),
        ``[B, L, V + 1]``; clean positions keep their token."""
        mt, ms = self.masked_v(torch.tensor(t)), self.masked_v(torch.tensor(s))
        frac = torch.where(mt > 0, (mt - ms) / mt, torch.ones_like(mt))
        mu = logp.double().exp()[..., : self.vocab_size]
        move = mu * frac  # into y: mu(y) (alpha_s(y) - alpha_t(y)) / (1 - alpha_t(y))
        stay = (1.0 - move.sum(-1, keepdim=True)).clamp_min(0.0)
        probs = torch.cat([move, stay], -1)
        clean = torch.zeros_like(probs).scatter_(-1, x.unsqueeze(-1), 1.0)
        return torch.where((x == self.mask_id).unsqueeze(-1), probs, clean)

    def sample(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        n: int,
        length: int,
        steps: int,
        generator: Generators = None,
    ) -> Tensor:
        """Ancestral sampling on the grid ``t_j = 1 - j / steps`` from all-masked;
        ``model(x_t, t) -> log p(x0 | x_t)`` (``[n, L, V]``, e.g. a
        :class:`~reverie.discrete.TokenDenoiser` with ``mask_id = V``)."""
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        x = torch.full((n, length), self.mask_id, dtype=torch.long)
        for j in range(steps):
            t, s = 1.0 - j / steps, max(1.0 - (j + 1) / steps, 0.0)
            logp = model(x, torch.full((n,), t, dtype=torch.float64))
            probs = self.step_probabilities(logp, x, t, s)
            x = sample_categorical(probs.clamp_min(1e-300).log(), uniform((n, length), generator))
        return x

    def exact_denoiser(self, hmm):
        """The exact token denoiser of a :class:`reverie.reference.HiddenMarkovModel` under
        this process (forward-backward with the state-dependent evidence)."""
        from reverie.discrete.denoiser import TokenDenoiser

        if hmm.vocab_size != self.vocab_size:
            raise ValueError(
                f"the model has {hmm.vocab_size} tokens, the schedule {self.vocab_size}"
            )

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return torch.log(hmm.posterior(self.evidence(x, t.double()))).float()

        return TokenDenoiser(fn, mask_id=self.mask_id, vocab_size=self.vocab_size, process=self)

    def _check_tokens(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dtype != torch.long or x.ndim != 2:
            raise TypeError("x0 must be a LongTensor [batch, length]")
        if bool((x < 0).any()) or bool((x >= self.vocab_size).any()):
            raise ValueError(f"x0 tokens must lie in [0, {self.vocab_size - 1}]")

    def __repr__(self) -> str:
        return f"GenMD4Process(exponents={[round(v, 4) for v in self.w.tolist()]})"


class LearnedExponents(torch.nn.Module):
    """Learnable per-token exponents ``w = softplus(raw)`` (float64, ``[V]``; md4's
    ``LearnableVecMaskingSchedule``); :meth:`process` is the :class:`GenMD4Process` with the
    current ``w``, through which :meth:`GenMD4Process.rloo_nelbo` back-propagates."""

    def __init__(self, vocab_size: int, init: float = 1.0):
        super().__init__()
        if not (isinstance(vocab_size, int) and vocab_size >= 2):
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if not init > 0:
            raise ValueError(f"init must be > 0, got {init!r}")
        raw = torch.full((vocab_size,), float(init), dtype=torch.float64)
        self.raw = torch.nn.Parameter(torch.log(torch.expm1(raw)))

    @property
    def w(self) -> Tensor:
        return torch.nn.functional.softplus(self.raw)

    def process(self) -> GenMD4Process:
        return GenMD4Process(self.w)

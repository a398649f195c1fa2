"""Blackout diffusion (Santos et al. 2023, "Blackout diffusion: generative diffusion models in
discrete-state spaces"): a pure-death forward process on counts ``n in {0..N}``.

Forward: every unit of a count dies independently at rate ``r`` (``death_rate``), so
``n_t | n0 ~ Binomial(n0, p_t)``, ``p_t = exp(-r t)``; at ``t_end`` (large) every count is
(nearly) 0 -- "blackout". Reverse: a birth process. Its exact rate from ``n`` to ``n + 1``
given ``n0`` is ``r (n0 - n) p_t / (1 - p_t)`` (time reversal of the death rate ``r (n+1)``),
so the model only needs ``E[n0 | n_t]`` (Blackout's network output) for the rates:
``rate(n, t) = r (E[n0 | n_t] - n) p_t / (1 - p_t)``.

Samplers (:meth:`BlackoutProcess.sample`):

* ``"bridge"`` -- exact jumps: draw ``n0 ~ p(n0 | n_t)``, then ``n_s = n_t + Binomial(n0 -
  n_t, (p_s - p_t) / (1 - p_t))`` (the binomial bridge of the death process); exact in law
  at any step count when ``p(n0 | n_t)`` is exact (counts evolving independently);
* ``"tau_leaping"`` -- births ``~ Poisson(int_s^t rate)`` with ``E[n0 | n_t]`` frozen over the
  step (the integral is ``(E[n0 | n_t] - n) log((1 - p_t) / (1 - p_s))``), clamped to ``N``;
  the last step (to ``t = 0``) draws ``n0`` from the posterior.

``model(n_t, t) -> p(n0 | n_t)``, ``[B, L, N + 1]`` probabilities, ``t`` float64 ``[B]``; a
trained network that outputs only ``E[n0 | n_t]`` (``[B, L]``, Blackout's parameterisation)
samples with ``"tau_leaping"``, whose last step then draws ``n0 - n_t ~ Poisson(E[n0 | n_t] -
n_t)``.

Training (:meth:`BlackoutProcess.nelbo`): the continuous-time ELBO, the integral over time of the
generalised KL between the true birth rates given ``n0``, ``c_t (n0 - n)`` with ``c_t = r p_t /
(1 - p_t)``, and the model's ``c_t (m - n)``, ``m = E_theta[n0 | n_t]``:

    c_t [ (m - n) - (n0 - n) + (n0 - n) log((n0 - n) / (m - n)) ];

its ``theta``-dependent part ``c_t [(m - n) - (n0 - n) log(m - n)]`` is the Poisson-likelihood
loss on the births ``n0 - n_t`` (the continuous-time form of Blackout's loss), minimised by
``m = E[n0 | n_t]``. Times are drawn uniformly in ``p_t`` (``c_t dt = dp / (1 - p)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._random import Generators
from reverie.discrete._sampling import sample_categorical, uniform

__all__ = ["BlackoutProcess", "SAMPLERS_BLACKOUT"]

#: The reverse samplers of :meth:`BlackoutProcess.sample`.
SAMPLERS_BLACKOUT = ("bridge", "tau_leaping")


def _torch_gen(generator: Generators) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise TypeError("Blackout sampling takes one torch.Generator (or None)")


class BlackoutProcess:
    """Pure-death forward process on counts ``0..max_count`` with death rate ``death_rate``
    per unit, run to ``t_end`` (Blackout diffusion)."""

    def __init__(self, max_count: int, *, death_rate: float = 1.0, t_end: float = 15.0):
        if not (isinstance(max_count, int) and max_count >= 1):
            raise ValueError(f"max_count must be an integer >= 1, got {max_count!r}")
        if not (isinstance(death_rate, (int, float)) and death_rate > 0):
            raise ValueError(f"death_rate must be > 0, got {death_rate!r}")
        if not (isinstance(t_end, (int, float)) and t_end > 0):
            raise ValueError(f"t_end must be > 0, got {t_end!r}")
        self.max_count, self.death_rate, self.t_end = max_count, float(death_rate), float(t_end)

    def survival(self, t: float | Tensor) -> Tensor:
        """``p_t = exp(-r t)``: the chance that a unit is alive at ``t``."""
        return torch.exp(-self.death_rate * torch.as_tensor(t, dtype=torch.float64))

    def _check_counts(self, n: Tensor) -> Tensor:
        if not isinstance(n, Tensor) or n.dtype != torch.long:
            raise TypeError("counts must be a LongTensor")
        if bool((n < 0).any()):
            raise ValueError(f"counts must be >= 0, got a minimum of {int(n.min())}")
        if bool((n > self.max_count).any()):
            raise ValueError(f"counts must be <= max_count={self.max_count}, got {int(n.max())}")
        return n

    def marginal(self, n0: Tensor, t: float | Tensor) -> Tensor:
        """``q(n_t = k | n0) = Binomial(k; n0, p_t)`` for ``k = 0..N``: ``[..., N + 1]``."""
        self._check_counts(n0)
        k = torch.arange(self.max_count + 1, dtype=torch.float64)
        return self._binomial(n0.double().unsqueeze(-1), k, self.survival(t))

    @staticmethod
    def _binomial(n: Tensor, k: Tensor, p: Tensor) -> Tensor:
        """``Binomial(k; n, p)`` (broadcast), 0 where ``k > n``."""
        logc = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma((n - k).clamp_min(0) + 1)
        logp = logc + torch.special.xlogy(k, p) + torch.special.xlog1py(n - k, -p)
        return torch.where(k <= n, logp.exp(), torch.zeros_like(logp))

    def add_noise(self, n0: Tensor, t: float, generator: Generators = None) -> Tensor:
        """Draw ``n_t ~ Binomial(n0, p_t)``."""
        self._check_counts(n0)
        p = torch.full(n0.shape, float(self.survival(t)), dtype=torch.float64)
        return torch.binomial(n0.double(), p, generator=_torch_gen(generator)).long()

    def reverse_rate(self, mean_n0: Tensor, n: Tensor, t: float | Tensor) -> Tensor:
        """The birth rate ``r (E[n0 | n_t] - n) p_t / (1 - p_t)`` from ``n`` at time ``t``."""
        p = self.survival(t)
        return self.death_rate * (mean_n0.double() - n.double()).clamp_min(0.0) * p / (1.0 - p)

    def exact_model(self, prior) -> Callable[[Tensor, Tensor], Tensor]:
        """``p(n0^i | n_t)`` for counts drawn independently from ``prior`` (``[N + 1]``), or
        for dependent sites drawn from a :class:`reverie.reference.HiddenMarkovModel` over the
        ``N + 1`` count values (forward-backward with the binomial evidence of every site)."""
        if hasattr(prior, "posterior"):
            if prior.vocab_size != self.max_count + 1:
                raise ValueError(f"the sequence model has {prior.vocab_size} values, "
                                 f"the counts {self.max_count + 1}")

            def fn_seq(n: Tensor, t: Tensor) -> Tensor:
                return prior.posterior(self.evidence(n, t))

            return fn_seq
        prior = torch.as_tensor(prior, dtype=torch.float64)
        if prior.shape != (self.max_count + 1,) or bool((prior < 0).any()):
            raise ValueError(f"prior must be a non-negative vector [{self.max_count + 1}]")

        def fn(n: Tensor, t: Tensor) -> Tensor:
            w = prior * self.evidence(n, t)  # p(n0 | n_t) ∝ prior(n0) Binomial(n_t; n0, p_t)
            return w / w.sum(-1, keepdim=True)

        return fn

    def evidence(self, n: Tensor, t: Tensor) -> Tensor:
        """``q(n_t | n0 = v) = Binomial(n_t; v, p_t)`` for every ``v = 0..N``, ``[B, L, N + 1]``
        (``t``: ``[B]``); a network can multiply it into its own prior over ``n0``."""
        v = torch.arange(self.max_count + 1, dtype=torch.float64)
        p = self.survival(t).reshape(-1, 1, 1)
        return self._binomial(v, n.double().unsqueeze(-1), p)

    def mean_model(self, model: Callable[[Tensor, Tensor], Tensor]) -> Callable:
        """``E[n0 | n_t]`` (``[B, L]``) from a posterior model ``p(n0 | n_t)``."""
        values = torch.arange(self.max_count + 1, dtype=torch.float64)
        return lambda n, t: (model(n, t).double() * values).sum(-1)

    # ---- the ELBO (training loss) --------------------------------------------------------
    def nelbo_integrand(self, mean: Tensor, n0: Tensor, n: Tensor) -> Tensor:
        """``(1 - p_t)`` times the ELBO integrand per unit ``p``, summed over sites, ``[B]``:
        ``(m - n) - (n0 - n) + (n0 - n) log((n0 - n) / (m - n))`` (the generalised KL between
        the birth rates ``c_t (n0 - n)`` and ``c_t (m - n)``, ``c_t dt = dp / (1 - p)``);
        keeps the gradient through ``mean``."""
        births = (n0 - n).to(mean.dtype)
        room = mean - n.to(mean.dtype)  # the model's expected births m - n
        if bool((room < -1e-9).any()):
            raise ValueError("the model's E[n0 | n_t] must be >= n_t")
        room = room.clamp_min(0.0)  # (rounding below n_t)
        some = births > 0  # (log of 1 elsewhere: keeps the unselected branch's gradient 0)
        one = torch.ones_like(room)
        log_ratio = torch.log(torch.where(some, births, one) / torch.where(some, room, one))
        return (room - births + births * log_ratio).sum(-1)

    def nelbo(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        n0: Tensor,
        *,
        samples: int = 1,
        generator: Generators = None,
    ) -> Tensor:
        """Unbiased Monte-Carlo estimate of the negative ELBO of counts ``n0`` (``[B, L]``),
        nats per row: ``int_{p_T}^1 E[integrand] dp / (1 - p)`` with ``p`` uniform (stratified
        over ``samples``), plus the start term ``KL(Binomial(n0, p_T) || Binomial(N, p_T))``
        per site (the reverse process starts from ``Binomial(N, p_T)``, within ``N p_T`` of
        the blackout state 0: ``2e-6`` for ``N = 6`` at the default ``t_end``).
        ``model(n_t, t) -> E[n0 | n_t]`` (``[B, L]``, ``>= n_t``); the gradient is Blackout's
        Poisson loss, so this is the training loss (divide by ``L`` per site)."""
        self._check_counts(n0)
        if n0.ndim != 2:
            raise ValueError(f"n0 must be [batch, sites], got {list(n0.shape)}")
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        gen = _torch_gen(generator)
        b = n0.shape[0]
        p_end = float(self.survival(self.t_end))
        u = torch.rand(b, generator=gen, dtype=torch.float64)
        total = torch.zeros(b, dtype=torch.float64)
        for k in range(samples):
            p = p_end + (1.0 - p_end) * torch.remainder(u + k / samples, 1.0)  # stratified p_t
            t = -torch.log(p) / self.death_rate
            n = torch.binomial(n0.double(), p[:, None].expand(n0.shape), generator=gen).long()
            mean = model(n, t)
            total = total + (1.0 - p_end) * self.nelbo_integrand(mean, n0, n) / (1.0 - p)
        values = torch.arange(self.max_count + 1, dtype=torch.float64)
        q_end = self._binomial(n0.double().unsqueeze(-1), values, torch.tensor(p_end))
        ref = self._binomial(torch.tensor(float(self.max_count)), values, torch.tensor(p_end))
        start = (torch.special.xlogy(q_end, q_end) - torch.special.xlogy(q_end, ref)).sum((-1, -2))
        return total / samples + start

    def grid(self, steps: int) -> list[float]:
        """Times ``t_end = t_0 > ... > t_steps = 0`` uniform in ``p_t`` (the survival)."""
        p0 = math.exp(-self.death_rate * self.t_end)
        ps = [p0 + (1.0 - p0) * j / steps for j in range(steps + 1)]
        return [-math.log(p) / self.death_rate for p in ps]

    def sample(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        n: int,
        length: int,
        steps: int,
        *,
        method: str = "bridge",
        generator: Generators = None,
    ) -> Tensor:
        """Reverse sampling from blackout (all counts 0 at ``t_end``) to ``t = 0``."""
        if method not in SAMPLERS_BLACKOUT:
            raise ValueError(f"unknown method {method!r}; expected one of {SAMPLERS_BLACKOUT}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        gen = _torch_gen(generator)
        x = torch.zeros(n, length, dtype=torch.long)
        times = self.grid(steps)
        for t, s in zip(times[:-1], times[1:]):
            post = model(x, torch.full((n,), t, dtype=torch.float64)).double()
            pt, ps = float(self.survival(t)), float(self.survival(s))
            if post.shape == x.shape:  # a mean model E[n0 | n_t]: tau-leaping only
                if method != "tau_leaping":
                    raise ValueError("a model of E[n0 | n_t] alone samples with "
                                     "method='tau_leaping' (the bridge needs p(n0 | n_t))")
                # births ~ Poisson(int_s^t rate); over the last step all n0 - n_t births
                frac = 1.0 if s == 0.0 else math.log((1.0 - pt) / (1.0 - ps))
                lam = (post - x).clamp_min(0.0) * frac
                x = (x + torch.poisson(lam, generator=gen).long()).clamp_max(self.max_count)
            elif method == "bridge" or s == 0.0:
                # n0 ~ p(n0 | n_t); n_s = n_t + Binomial(n0 - n_t, (p_s - p_t) / (1 - p_t))
                n0 = sample_categorical(post.clamp_min(1e-300).log(), uniform(x.shape, gen))
                n0 = torch.maximum(n0, x)
                frac = torch.full(x.shape, (ps - pt) / (1.0 - pt), dtype=torch.float64)
                x = x + torch.binomial((n0 - x).double(), frac.clamp(0, 1), generator=gen).long()
            else:
                # Poisson births with E[n0 | n_t] frozen over [s, t]
                mean = (post * torch.arange(self.max_count + 1, dtype=torch.float64)).sum(-1)
                lam = (mean - x).clamp_min(0.0) * math.log((1.0 - pt) / (1.0 - ps))
                x = (x + torch.poisson(lam, generator=gen).long()).clamp_max(self.max_count)
        return x

    def __repr__(self) -> str:
        return (f"BlackoutProcess(max_count={self.max_count}, death_rate={self.death_rate:g}, "
                f"t_end={self.t_end:g})")

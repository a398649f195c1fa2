"""Exact reward-tilted targets of a Gaussian mixture under a linear reward.

With a linear reward ``r(x) = w . x + b`` and a mixture prior ``p = sum_k pi_k N(mu_k, S_k)``,
the tilted distribution ``p(x) exp(r(x) / T) / Z`` is again a Gaussian mixture (completing
the square in each component):

    means    mu_k + S_k w / T,   covariances S_k,
    weights  pi_k exp(w . mu_k / T + w' S_k w / (2 T^2))   (normalised),
    log Z  = b / T + logsumexp_k(log pi_k + w . mu_k / T + w' S_k w / (2 T^2)).

The soft value of the diffusion (FK steering, Singhal et al. 2025; DTS, Jain et al. 2025)

    V_t(x) = T log E[exp(r(x0) / T) | x_t = x]

is closed form too: ``E[exp(r/T) | x_t] = int p(x0) q(x_t | x0) e^{r/T} dx0 / p_t(x_t)
= Z ptilde_t(x_t) / p_t(x_t)``, so ``V_t(x) = T (log Z + log ptilde_t(x) - log p_t(x))`` with
``ptilde_t`` the marginal of the tilted mixture under the same process. Both marginals are
:class:`~reverie.reference.GaussianMixture` log-densities, so no new Gaussian algebra is needed.

The law of the reward itself under ``p`` is a 1-D mixture (means ``w . mu_k + b``, variances
``w' S_k w``), which gives best-of-N exactly: the best of ``N`` independent samples has reward
CDF ``F(r)^N``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference.gaussian import GaussianMixture

__all__ = ["TiltedMixture"]


class TiltedMixture:
    """``p(x) exp((w . x + b) / T) / Z`` for a :class:`GaussianMixture` ``p``.

    ``weight`` is ``w`` (``D`` numbers; samples of any shape are flattened), ``bias`` is ``b``
    and ``temperature`` is ``T > 0``. :attr:`target` is the tilted mixture itself.
    """

    def __init__(
        self,
        mixture: GaussianMixture,
        weight: Tensor | Sequence[float],
        temperature: float = 1.0,
        bias: float = 0.0,
    ):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        w = torch.as_tensor(weight, dtype=torch.float64).flatten()
        if w.numel() != mixture.dim:
            raise ValueError(f"weight must have {mixture.dim} entries, got {w.numel()}")
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.mixture = mixture
        self.weight = w
        self.bias = float(bias)
        self.temperature = temperature
        t = temperature
        covs = mixture.covariances                                        # [K, D, D]
        s_w = covs @ w                                                    # S_k w, [K, D]
        quad = s_w @ w                                                    # w' S_k w, [K]
        logits = mixture.log_weights + mixture.means @ w / t + quad / (2 * t * t)
        self.log_normalizer = float(torch.logsumexp(logits, 0)) + self.bias / t
        new_means = mixture.means + s_w / t
        cov_arg = mixture.evals if mixture.evecs is None else covs
        self.target = GaussianMixture(new_means, cov_arg, torch.softmax(logits, 0))
        self._reward_means = mixture.means @ w + self.bias                # [K]
        self._reward_vars = quad.clamp(min=0.0)                           # [K]

    # ---- the reward and its exact statistics ------------------------------------------------
    def reward(self, x: Tensor) -> Tensor:
        """``r(x) = w . x + b`` for ``x`` of shape ``[B, ...]`` (flattened), in ``x``'s dtype."""
        flat = x.reshape(x.shape[0], -1)
        return flat @ self.weight.to(flat.dtype) + self.bias

    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` exact samples of the tilted target, float64 ``[n, D]``."""
        return self.target.sample(n, generator)

    def mean_reward(self) -> float:
        """``E_target[r(x)]``, exact."""
        return float(self.target.mean() @ self.weight) + self.bias

    def prior_mean_reward(self) -> float:
        """``E_p[r(x)]`` under the untilted mixture."""
        return float(self.mixture.mean() @ self.weight) + self.bias

    def reward_mixture(self) -> GaussianMixture:
        """The law of ``r(x)`` for ``x ~ p``: a 1-D mixture."""
        return GaussianMixture(self._reward_means[:, None], self._reward_vars, self.mixture.weights)

    def reward_cdf(self, r: Tensor | float) -> Tensor:
        """``F(r) = P_p(r(x) <= r)``."""
        r = torch.as_tensor(r, dtype=torch.float64)
        std = self._reward_vars.sqrt().clamp(min=1e-300)
        z = (r[..., None] - self._reward_means) / std
        return (self.mixture.weights * torch.special.ndtr(z)).sum(-1)

    def best_of_n_reward_cdf(self, r: Tensor | float, n: int) -> Tensor:
        """CDF of the reward of the best of ``n`` independent samples of ``p``: ``F(r)^n``."""
        return self.reward_cdf(r) ** positive_int("n", n)

    def best_of_n_reward_moments(self, n: int, points: int = 40001) -> tuple[float, float]:
        """Mean and standard deviation of the best-of-``n`` reward, by quadrature of
        ``E[X] = a + int_a^b (1 - F^n)`` and ``E[X^2]`` on ``[a, b]`` covering all components
        to 12 standard deviations."""
        n = positive_int("n", n)
        std = self._reward_vars.sqrt()
        lo = float((self._reward_means - 12 * std).min()) - 1e-9
        hi = float((self._reward_means + 12 * std).max()) + 1e-9
        r = torch.linspace(lo, hi, points, dtype=torch.float64)
        survive = 1.0 - self.best_of_n_reward_cdf(r, n)
        mean = lo + float(torch.trapezoid(survive, r))
        # E[(X - a)^2] = int 2 (r - a) (1 - G(r)) dr
        second = float(torch.trapezoid(2 * (r - lo) * survive, r))
        var = max(second - (mean - lo) ** 2, 0.0)
        return mean, math.sqrt(var)

    # ---- the soft value -----------------------------------------------------------------------
    def soft_value_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """``V(x) = T log E[exp(r(x0)/T) | x_t = x]`` where ``x_t = alpha x0 + sigma eps``;
        float64 ``[B]``. At ``sigma = 0, alpha = 1`` this is ``r(x)``."""
        log_tilted = self.target.log_prob_at(x, alpha, sigma)
        log_prior = self.mixture.log_prob_at(x, alpha, sigma)
        return self.temperature * (self.log_normalizer + log_tilted - log_prior)

    def soft_value(self, x: Tensor, t: Tensor | float, process: GaussianProcess) -> Tensor:
        """:meth:`soft_value_at` at time ``t`` of ``process``."""
        return self.soft_value_at(x, process.alpha(t), process.sigma(t))

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """The exact denoiser of the tilted target (what a perfectly steered sampler follows)."""
        return self.target.denoiser(process)

    def __repr__(self) -> str:
        return (
            f"TiltedMixture(K={self.mixture.n_components}, D={self.mixture.dim}, "
            f"temperature={self.temperature})"
        )


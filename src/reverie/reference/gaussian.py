"""Exact Gaussian and Gaussian-mixture data distributions.

A Gaussian mixture stays a Gaussian mixture under every Gaussian process:

    p_t(x) = sum_k w_k N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I),

so its denoiser ``E[x0 | x_t]``, score and log-density are closed form at every ``t``
(DESIGN.md, "How correctness is shown"). Covariances are diagonalised once
(``Sigma_k = U_k diag(s_k) U_k^T``); then every time costs rotations only, and isotropic
covariances skip the rotations entirely. Everything is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reverie._random import Generators, randn
from reverie._tensor import as64
from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess

__all__ = ["GaussianMixture", "Gaussian"]

_LOG2PI = math.log(2 * math.pi)


class GaussianMixture:
    """``sum_k w_k N(mu_k, Sigma_k)`` in ``D`` dimensions.

    ``means``: ``[K, D]``. ``covs``: ``None`` (identity), a scalar or ``[K]`` (isotropic
    variances), ``[K, D]`` (diagonal) or ``[K, D, D]`` (full, symmetric positive semi-definite).
    ``weights``: ``[K]``, positive (normalised here; uniform if ``None``).
    """

    def __init__(
        self,
        means: Tensor | Sequence[Sequence[float]],
        covs: Tensor | float | None = None,
        weights: Tensor | Sequence[float] | None = None,
    ):
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(mu.shape)}")
        k, d = mu.shape
        self.means = mu
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten()
            if w.shape != (k,) or not bool((w > 0).all()):
                raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
            w = w / w.sum()
        self.weights = w
        self.log_weights = torch.log(w)

        c = (
            torch.ones((), dtype=torch.float64)
            if covs is None
            else torch.as_tensor(covs, dtype=torch.float64)
        )
        self.evecs: Tensor | None  # [K, D, D] or None when covariances are diagonal
        if c.ndim == 0 or c.shape == (k,):
            self.evals = c.reshape(-1, 1).expand(k, d).clone()
            self.evecs = None
        elif c.shape == (k, d):
            self.evals = c.clone()
            self.evecs = None
        elif c.shape == (k, d, d):
            if not torch.allclose(c, c.transpose(-1, -2), atol=1e-10):
                raise ValueError("covariance matrices must be symmetric")
            evals, evecs = torch.linalg.eigh(c)
            self.evals, self.evecs = evals.clamp(min=0.0), evecs
        else:
            raise ValueError(
                f"covs must be None, a scalar, [K]={k}, [K, D]=[{k}, {d}] or [K, D, D]; "
                f"got shape {tuple(c.shape)}"
            )
        if bool((self.evals < -1e-12).any()):
            raise ValueError("covariances must be positive semi-definite")

    # ---- basic properties -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def covariances(self) -> Tensor:
        """Full ``[K, D, D]`` covariance matrices."""
        if self.evecs is None:
            return torch.diag_embed(self.evals)
        return self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(-1, -2)

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Covariance of the mixture (law of total covariance)."""
        m = self.mean()
        diff = self.means - m
        within = (self.weights[:, None, None] * self.covariances).sum(0)
        return within + (self.weights[:, None, None] * diff[:, :, None] * diff[:, None, :]).sum(0)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    # ---- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` exact samples, float64 ``[n, D]``; returns the components too via
        :meth:`sample_with_components`."""
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: Generators = None) -> tuple[Tensor, Tensor]:
        if isinstance(generator, (list, tuple)):
            pairs = [self.sample_with_components(1, g) for g in generator]
            return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = randn((n, self.dim), generator, dtype=torch.float64)
        scaled = z * self.evals[comp].sqrt()
        if self.evecs is not None:  # rotate per component (no [n, D, D] gather)
            rotated = torch.empty_like(scaled)
            for k in comp.unique().tolist():
                sel = comp == k
                rotated[sel] = scaled[sel] @ self.evecs[k].T
            scaled = rotated
        return self.means[comp] + scaled, comp

    # ---- closed forms at any (alpha, sigma) ---------------------------------------------------
    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample, per-component quantities of ``p_t`` at ``x`` (``[B, D]``):
        log-likelihoods ``[B, K]``, residuals in the eigenbasis ``r = U^T (x - alpha mu)``
        ``[B, K, D]`` and the variances ``alpha^2 s + sigma^2`` ``[B or 1, K, D]``."""
        a = alpha.reshape(-1, 1, 1)
        s = sigma.reshape(-1, 1, 1)
        diff = x[:, None, :] - a * self.means[None]  # [B, K, D]
        r = diff if self.evecs is None else torch.einsum("kji,bkj->bki", self.evecs, diff)
        var = a**2 * self.evals[None] + s**2  # [B|1, K, D]
        loglik = -0.5 * ((r**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * _LOG2PI)
        return loglik, r, var

    def _at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float):
        """``(alpha, loglik, r, var)`` of :meth:`_components` for ``x`` of any shape [B, ...]."""
        x64 = _flat64(x, self.dim)
        alpha = as64(alpha).to(x64.device)
        loglik, r, var = self._components(x64, alpha, as64(sigma).to(x64.device))
        return alpha, loglik, r, var

    def log_prob_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """``log p_t(x)`` for ``x_t = alpha x0 + sigma eps``; ``alpha``/``sigma`` scalars or [B]."""
        _, loglik, _, _ = self._at(x, alpha, sigma)
        return torch.logsumexp(self.log_weights + loglik, dim=-1)

    def responsibilities_at(
        self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float
    ) -> Tensor:
        """Posterior component probabilities ``p(k | x_t = x)``, ``[B, K]``."""
        _, loglik, _, _ = self._at(x, alpha, sigma)
        return torch.softmax(self.log_weights + loglik, dim=-1)

    def denoise_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """``E[x0 | x_t = x] = sum_k p(k|x) (mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^-1
        (x - alpha mu_k))``, in ``x``'s dtype and shape."""
        if self.evecs is None and bool((self.evals == self.evals[:, :1]).all()):
            return self._denoise_isotropic(x, alpha, sigma)
        a, loglik, r, var = self._at(x, alpha, sigma)
        resp = torch.softmax(self.log_weights + loglik, dim=-1)  # [B, K]
        gain = a.reshape(-1, 1, 1) * self.evals[None] / var  # [B|1, K, D]
        corr = gain * r
        if self.evecs is not None:
            corr = torch.einsum("kij,bkj->bki", self.evecs, corr)
        post = self.means[None] + corr  # [B, K, D]
        out = (resp[..., None] * post).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def _denoise_isotropic(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """:meth:`denoise_at` for isotropic components ``Sigma_k = v_k I`` with matrix products
        only (no ``[B, K, D]`` tensors): ``|x - a mu_k|^2 = |x|^2 - 2 a x.mu_k + a^2 |mu_k|^2``
        and ``sum_k p_k (mu_k + g_k (x - a mu_k))`` with ``g_k = a v_k / (a^2 v_k + s^2)``."""
        x64 = _flat64(x, self.dim)
        a = as64(alpha).to(x64.device).reshape(-1, 1)                      # [B|1, 1]
        s = as64(sigma).to(x64.device).reshape(-1, 1)
        v = self.evals[:, 0][None]                                            # [1, K]
        var = a**2 * v + s**2                                                 # [B|1, K]
        sq = ((x64**2).sum(1, keepdim=True) - 2 * a * (x64 @ self.means.T)
              + a**2 * (self.means**2).sum(1)[None]).clamp(min=0.0)           # [B, K]
        loglik = -0.5 * (sq / var + self.dim * (torch.log(var) + _LOG2PI))
        resp = torch.softmax(self.log_weights + loglik, dim=-1)
        rg = resp * (a * v / var)
        out = resp @ self.means + rg.sum(1, keepdim=True) * x64 - a * (rg @ self.means)
        return out.reshape(x.shape).to(x.dtype)

    def score_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """``grad_x log p_t(x)``, in ``x``'s dtype and shape."""
        _, loglik, r, var = self._at(x, alpha, sigma)
        resp = torch.softmax(self.log_weights + loglik, dim=-1)
        g = -r / var
        if self.evecs is not None:
            g = torch.einsum("kij,bkj->bki", self.evecs, g)
        out = (resp[..., None] * g).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    # ---- in process time ----------------------------------------------------------------------
    def log_prob(
        self, x: Tensor, t: Tensor | float | None = None, process: GaussianProcess | None = None
    ) -> Tensor:
        """Log-density of the data (``t=None``) or of the marginal ``p_t`` of ``process``."""
        if t is None:
            return self.log_prob_at(x, 1.0, 0.0)
        _need(process)
        t = _common_time(t)
        return self.log_prob_at(x, process.alpha(t), process.sigma(t))

    def score(self, x: Tensor, t: Tensor | float, process: GaussianProcess) -> Tensor:
        t = _common_time(t)
        return self.score_at(x, process.alpha(t), process.sigma(t))

    def denoise(self, x: Tensor, t: Tensor | float, process: GaussianProcess) -> Tensor:
        t = _common_time(t)
        return self.denoise_at(x, process.alpha(t), process.sigma(t))

    def marginal(self, process: GaussianProcess, t: float) -> GaussianMixture:
        """The marginal ``p_t`` itself as a mixture."""
        a, s = float(process.alpha(t)), float(process.sigma(t))
        covs = a**2 * self.covariances + s**2 * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(a * self.means, covs, self.weights)

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """The exact denoiser of this distribution under ``process`` (prediction ``"x0"``)."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            t = _common_time(t)
            return self.denoise_at(x, process.alpha(t), process.sigma(t))

        return Denoiser(fn, process, prediction="x0")

    def prior_sample(
        self, process: GaussianProcess, t: float, n: int, generator: Generators = None
    ) -> Tensor:
        """Exact samples of ``x_t`` (data pushed through the forward process)."""
        x0 = self.sample(n, generator)
        eps = randn(x0.shape, generator, dtype=torch.float64)
        return process.add_noise(x0, eps, t)

    def classify(self, x: Tensor) -> Tensor:
        """The most probable component of each clean sample, ``[B]``."""
        return self.responsibilities_at(x, 1.0, 0.0).argmax(-1)


class Gaussian(GaussianMixture):
    """A single Gaussian ``N(mean, cov)``; adds the closed-form probability-flow ODE map."""

    def __init__(self, mean: Tensor | Sequence[float], cov: Tensor | float | None = None):
        mu = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        c = None if cov is None else torch.as_tensor(cov, dtype=torch.float64)
        if c is not None and c.ndim >= 1:
            c = c.unsqueeze(0)
        super().__init__(mu, c)

    def ode_map(self, x: Tensor, t_from: float, t_to: float, process: GaussianProcess) -> Tensor:
        """Exact probability-flow ODE solution from ``t_from`` to ``t_to``:

            x_to = a1 mu + (a1^2 S + s1^2)^(1/2) (a0^2 S + s0^2)^(-1/2) (x - a0 mu)

        in the eigenbasis of the covariance ``S`` (all matrices commute; the ODE is linear)."""
        x64 = _flat64(x, self.dim)
        a0, s0 = float(process.alpha(t_from)), float(process.sigma(t_from))
        a1 = float(process.alpha(t_to))
        s1 = 0.0 if t_to == process.t_clean else float(process.sigma(t_to))
        mu, ev = self.means[0], self.evals[0]
        ratio = torch.sqrt(a1**2 * ev + s1**2) / torch.sqrt(a0**2 * ev + s0**2)
        diff = x64 - a0 * mu
        if self.evecs is not None:
            u = self.evecs[0]
            out = a1 * mu + (diff @ u) * ratio @ u.T
        else:
            out = a1 * mu + diff * ratio
        return out.reshape(x.shape).to(x.dtype)


def _common_time(t: Tensor | float) -> Tensor | float:
    """A ``[batch]`` time tensor whose entries are all equal, as a scalar (cheaper closed forms)."""
    if isinstance(t, Tensor) and t.ndim == 1 and t.numel() > 1 and bool((t == t[0]).all()):
        return t[0]
    return t


def _flat64(x: Tensor, dim: int) -> Tensor:
    if x.shape[-1] != dim and x[0].numel() != dim:
        raise ValueError(f"expected samples of dimension {dim}, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], dim).to(torch.float64)


def _need(process: GaussianProcess | None) -> None:
    if process is None:
        raise ValueError("pass the process whose marginal p_t is meant")

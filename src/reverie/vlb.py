"""The variational bound of the discrete Gaussian chain, with learned reverse variances.

Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), "Deep Unsupervised Learning using
Nonequilibrium Thermodynamics": a forward chain ``q(x_k | x_{k-1}) = N(sqrt(1 - beta_k)
x_{k-1}, beta_k)`` and a learned reverse chain ``p(x_{k-1} | x_k) = N(mu_theta, Sigma_theta)``
(mean *and* variance learned), trained by the bound on the log-likelihood (their eq. 14,
written as Gaussian KLs as in Ho et al. 2020, eq. 5):

    -log p(x0) <= L = KL(q(x_T | x0) || N(0, I))                         (prior)
                     + sum_{k>=2} KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))
                     - log p(x0 | x_1)                                    (decoder).

Here the chain is a discrete :class:`~reverie.process.VP` (latent ``x_{k+1}`` at process time
``k``, ``alpha(k)^2 = abar_k``), the mean is DDPM's posterior mean with the denoiser's ``x0``,
and :class:`ReverseVariance` holds the variance per step: free (``log Sigma_k``) or Nichol &
Dhariwal's (2021, eq. 15) interpolation ``exp(v log beta_k + (1 - v) log beta_tilde_k)``.
:func:`gaussian_optimal_variance` is the exact answer for Gaussian data (the exact reverse
conditional is Gaussian then), :func:`nll_bits_per_dim` the bound in bits per dimension. The
decoder is a Gaussian density (continuous data), not the discretised 8-bit decoder for images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie._random import Generators, randn_like
from reverie.process import VP

__all__ = ["chain_tables", "ReverseVariance", "gaussian_optimal_variance", "gaussian_kl",
           "vlb_terms", "nll_bits_per_dim"]

MODES = ("free", "interpolate")


def _check_vp(process: object) -> VP:
    if not isinstance(process, VP):
        raise TypeError(
            f"the chain needs a discrete reverie.VP process, got {type(process).__name__}")
    return process


def chain_tables(process: VP) -> tuple[Tensor, Tensor, Tensor]:
    """``(abar [T], beta [T], beta_tilde [T])`` of the chain; ``beta_tilde_0 = 0``."""
    abar = _check_vp(process).alphas_cumprod
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / prev  # q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k)
    return abar, beta, (1 - prev) / (1 - abar) * beta  # DDPM eq. 7's posterior variance


def gaussian_optimal_variance(process: VP, data_var: float) -> Tensor:
    """Exact ``Var(x_{k-1} | x_k)`` per step for data ``N(m, data_var)`` per dimension:
    ``V_{k-1} beta_k / V_k`` with ``V_k = abar_k data_var + 1 - abar_k`` (``V_{-1} = data_var``);
    the Gaussian reverse kernel's optimal variance (its mean is then the posterior mean)."""
    if data_var <= 0:
        raise ValueError(f"data_var must be > 0, got {data_var}")
    abar, beta, _ = chain_tables(process)
    v = abar * data_var + 1 - abar
    return torch.cat([v.new_tensor([data_var]), v[:-1]]) * beta / v


class ReverseVariance(nn.Module):
    """Learned reverse variances ``Sigma_k`` of the chain of ``process``, one per step.
    ``mode="free"``: ``Sigma_k = exp(p_k)``; ``"interpolate"``: ``exp(v_k log beta_k + (1 - v_k)
    log beta_tilde_k)`` (Improved DDPM eq. 15; ``beta_tilde_0`` clipped to ``beta_tilde_1``).
    Initialised at DDPM's ``beta_tilde`` (``init="beta_tilde"``) or ``beta``. Called as
    ``(t_from, t_to) -> Sigma`` on the chain's own grid: the ``variance=`` of the ddpm sampler."""

    def __init__(self, process: VP, mode: str = "interpolate", init: str = "beta_tilde"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if init not in ("beta", "beta_tilde"):
            raise ValueError(f"init must be 'beta' or 'beta_tilde', got {init!r}")
        self.process, self.mode = _check_vp(process), mode
        _, beta, bt = chain_tables(process)
        bt = torch.cat([bt[1:2], bt[1:]])
        self.register_buffer("log_beta", beta.log())
        self.register_buffer("log_bt", bt.log())
        start = self.log_beta if init == "beta" else self.log_bt
        if mode == "free":
            self.param = nn.Parameter(start.clone())
        else:
            self.param = nn.Parameter(torch.full_like(beta, 1.0 if init == "beta" else 0.0))

    def variances(self) -> Tensor:
        """``Sigma_k`` for every step ``k = 0 .. T-1`` (float64)."""
        if self.mode == "free":
            return self.param.exp()
        return torch.exp(self.param * self.log_beta + (1 - self.param) * self.log_bt)

    def forward(self, t_from: float, t_to: float) -> Tensor:
        k = round(float(t_from))
        prev = k - 1 if k > 0 else self.process.t_clean
        off = abs(float(t_from) - k) > 1e-6 or abs(float(t_to) - prev) > 1e-6
        if off or not 0 <= k < self.param.numel():
            raise ValueError(f"learned variances are per chain step k -> k-1 (integer process "
                             f"times); got a step {float(t_from):g} -> {float(t_to):g}")
        return self.variances()[k]


def gaussian_kl(m1: Tensor, v1: Tensor | float, m2: Tensor, v2: Tensor | float) -> Tensor:
    """``KL(N(m1, v1 I) || N(m2, v2 I))`` per row, summed over the other dimensions."""
    v1, v2 = torch.as_tensor(v1, dtype=m1.dtype), torch.as_tensor(v2, dtype=m1.dtype)
    kl = 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)
    return kl.reshape(m1.shape[0], -1).sum(1)


Variance = ReverseVariance | Tensor


def vlb_terms(denoiser: Callable[[Tensor, float], Tensor], variance: Variance, x0: Tensor,
              process: VP, generator: Generators = None) -> Tensor:
    """The terms of ``L`` per sample, ``[B, T + 1]`` in nats: column 0 the decoder ``-log
    p(x0 | x_1)``, column ``k`` (1 .. T-1) the KL of step ``k``, column ``T`` the prior KL. Each
    term draws its own ``x_k ~ q(x_k | x0)`` (an unbiased estimate of ``L``); differentiable in
    the denoiser's and the variances' parameters. ``variance``: a :class:`ReverseVariance` or
    a ``[T]`` tensor of ``Sigma_k``."""
    abar, beta, bt = chain_tables(process)
    if isinstance(variance, ReverseVariance):
        sig = variance.variances()
    else:
        sig = torch.as_tensor(variance)
    if sig.shape != abar.shape:
        raise ValueError(
            f"need {abar.numel()} reverse variances (one per step), got {tuple(sig.shape)}")
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    terms = []
    for k in range(abar.numel()):
        a, s = float(abar[k].sqrt()), float((1 - abar[k]).sqrt())
        x = a * x0 + s * randn_like(x0, generator)  # x_{k+1} ~ q(. | x0)
        x0_hat = denoiser(x, float(k))
        c0 = float(prev[k].sqrt() * beta[k] / (1 - abar[k]))  # DDPM eq. 7: posterior mean coefs
        ck = float((1 - beta[k]).sqrt() * (1 - prev[k]) / (1 - abar[k]))
        mu = c0 * x0_hat + ck * x  # the model's mean mu_theta(x_k)
        v = sig[k].to(x0.dtype)
        if k == 0:  # decoder -log N(x0; mu, Sigma_0)
            nll = 0.5 * ((x0 - mu) ** 2 / v + torch.log(2 * math.pi * v))
            terms.append(nll.reshape(x0.shape[0], -1).sum(1))
        else:  # KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))
            terms.append(gaussian_kl(c0 * x0 + ck * x, float(bt[k]), mu, v))
    a_t, s2_t = float(abar[-1].sqrt()), float(1 - abar[-1])
    terms.append(gaussian_kl(a_t * x0, s2_t, torch.zeros_like(x0), 1.0))  # prior KL
    return torch.stack(terms, dim=1)


def nll_bits_per_dim(denoiser: Callable[[Tensor, float], Tensor], variance: Variance, x0: Tensor,
                     process: VP, generator: Generators = None) -> Tensor:
    """The bound ``L`` of every sample in bits per dimension (an upper bound on ``-log_2 p``
    per dimension of the continuous density)."""
    d = x0[0].numel()
    return vlb_terms(denoiser, variance, x0, process, generator).sum(1) / (d * math.log(2))

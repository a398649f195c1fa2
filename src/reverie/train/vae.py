"""Training a variational autoencoder by the ELBO with the reparameterisation trick: Kingma &
Welling 2014, "Auto-Encoding Variational Bayes" (AEVB).

For a Gaussian encoder ``q(z | x) = N(mu(x), diag exp(logvar(x)))``, the prior ``N(0, I)`` and
a decoder ``p(x | z)`` the evidence lower bound of ``log p(x)`` is

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))                       (eq. 3)

and its SGVB estimators draw ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (the
reparameterisation trick, Sec. 2.4), so the estimate is a differentiable function of the
encoder's and decoder's parameters: estimator B (eq. 7 and 10, the default) with the KL term
in closed form (Appendix B), estimator A (eq. 6) with ``log p(z) - log q(z | x)`` at the
draw. The decoder is ``"gaussian"`` (mean = the decoder's output, log-variance
``obs_logvar``, learned by default: a scalar) or ``"bernoulli"`` (logits = the decoder's
output; data in [0, 1]). :func:`train_vae` is Algorithm 1 (minibatches, one noise draw per
example, a gradient step; Adam here instead of Adagrad).

The VAE is a diffusers ``AutoencoderKL`` (``encode(x).latent_dist``, ``decode(z).sample``;
it then plugs into reverie's latent pipelines, :mod:`reverie.pipelines`) or any module whose
``encode(x)`` returns ``(mean, logvar)`` and ``decode(z)`` the decoder's output, e.g.
:class:`reverie.nets.vae.MLPVAE`. Exact checks: :mod:`reverie.reference.ppca` (the linear VAE's
closed-form ELBO and its optimum, probabilistic PCA).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reverie._checks import in_range, positive_int
from reverie._progress import progress_bar

__all__ = ["ESTIMATORS", "LIKELIHOODS", "VAEResult", "decode", "elbo", "gaussian_kl",
           "latent_scale", "log_likelihood", "posterior", "train_vae"]

LIKELIHOODS = ("gaussian", "bernoulli")
ESTIMATORS = ("B", "A")
LOG_2PI = math.log(2 * math.pi)


def posterior(vae: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, logvar)`` of the encoder's Gaussian ``q(z | x)``."""
    channels = getattr(getattr(vae, "config", None), "in_channels", None)  # AutoencoderKL
    if channels is not None and (x.ndim != 4 or x.shape[1] != channels):
        raise ValueError(f"the VAE expects images [B, {channels}, H, W], got {list(x.shape)}")
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)  # diffusers' AutoencoderKL
    if dist is not None:
        return dist.mean, dist.logvar
    if isinstance(out, tuple) and len(out) == 2:
        return out
    raise TypeError(f"vae.encode must return (mean, logvar) or have .latent_dist (a diffusers "
                    f"AutoencoderKL), got {type(out).__name__}")


def decode(vae: nn.Module, z: Tensor) -> Tensor:
    """The decoder's output at latents ``z`` (its mean, or logits for a Bernoulli decoder)."""
    out = vae.decode(z)
    return getattr(out, "sample", out)  # diffusers' DecoderOutput


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, diag exp(logvar)) || N(0, I))`` per example ``[B]`` (AEVB Appendix B)."""
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of "
                         f"{', '.join(LIKELIHOODS)}")


def log_likelihood(x: Tensor, out: Tensor, likelihood: str = "gaussian",
                   obs_logvar: float | Tensor = 0.0) -> Tensor:
    """``log p(x | z)`` per example ``[B]`` given the decoder output ``out``: a Gaussian with
    mean ``out`` and log-variance ``obs_logvar`` (a scalar or broadcastable tensor), or a
    Bernoulli with logits ``out``."""
    _check_likelihood(likelihood)
    if out.shape != x.shape:
        raise ValueError(f"the decoder returned {list(out.shape)} for data {list(x.shape)}")
    if likelihood == "bernoulli":
        bce = nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none")
        return -bce.flatten(1).sum(1)
    lv = torch.as_tensor(obs_logvar, dtype=out.dtype, device=out.device)
    return -0.5 * (LOG_2PI + lv + (x - out) ** 2 * torch.exp(-lv)).flatten(1).sum(1)


def elbo(vae: nn.Module, x: Tensor, *, likelihood: str = "gaussian",
         obs_logvar: float | Tensor = 0.0, samples: int = 1, estimator: str = "B",
         generator: torch.Generator | None = None) -> Tensor:
    """The SGVB estimate of the ELBO of each example, ``[B]`` in nats: ``samples``
    reparameterised draws ``z = mean + exp(logvar / 2) eps`` average ``log p(x | z)`` and,
    for ``estimator="A"`` (AEVB eq. 6), ``log p(z) - log q(z | x)``; estimator ``"B"`` (eq.
    10) subtracts the exact KL instead. Differentiable in the VAE's parameters."""
    positive_int("samples", samples)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of "
                         f"{', '.join(ESTIMATORS)}")
    mean, logvar = posterior(vae, x)
    total = torch.zeros(x.shape[0], dtype=mean.dtype, device=mean.device)
    for _ in range(samples):
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps  # the reparameterisation trick
        total = total + log_likelihood(x, decode(vae, z), likelihood, obs_logvar)
        if estimator == "A":  # log p(z) - log q(z | x); the 2 pi terms cancel
            total = total - 0.5 * (z**2 - eps**2 - logvar).flatten(1).sum(1)
    kl = gaussian_kl(mean, logvar) if estimator == "B" else 0.0
    return total / samples - kl


@dataclass
class VAEResult:
    """What :func:`train_vae` returns: the trained ``vae``, the Gaussian decoder's
    ``obs_logvar`` (0-d, or one per dimension; unused for ``"bernoulli"``), ``losses`` (the
    negative ELBO in nats per example, mean of every ``log_every`` steps) and the wall time."""

    vae: nn.Module
    obs_logvar: Tensor
    likelihood: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def train_vae(
    vae: nn.Module,
    data: Tensor,
    *,
    likelihood: str = "gaussian",
    obs_logvar: float | str = "scalar",
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    dequantize: float = 0.0,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> VAEResult:
    """Fit ``vae`` to ``data [N, ...]`` by maximising the ELBO (AEVB Algorithm 1; module
    docstring): per step a minibatch, one noise draw per example, a gradient step of Adam on
    the negative SGVB estimate; learning rate with linear warm-up and cosine decay.

    ``obs_logvar``: the Gaussian decoder's log-variance, fixed (a float), or learned:
    ``"scalar"`` (one for all dimensions) or ``"per-dim"`` (one per dimension of an example),
    starting at the log of the data's variance (per dimension, or its mean). ``dequantize``:
    the bin width of discrete data; each batch gets uniform noise in its bins (Theis et al.
    2016), so the ELBO bounds the discrete likelihood (``0``: none). Draws come from a
    ``torch.Generator`` seeded with ``seed``."""
    _check_likelihood(likelihood)
    if not isinstance(vae, nn.Module):
        raise TypeError(f"vae must be a torch.nn.Module, got {type(vae).__name__}")
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2:
        raise TypeError("data must be a floating-point tensor [N, ...] with at least 2 dims")
    if likelihood == "bernoulli" and (data.min() < 0 or data.max() > 1):
        raise ValueError("a Bernoulli decoder needs data in [0, 1], got values in "
                         f"[{float(data.min()):.3g}, {float(data.max()):.3g}]")
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    in_range("lr", lr, 0, 1, lo_open=True)
    in_range("dequantize", dequantize, 0, math.inf)
    learned = isinstance(obs_logvar, str)
    if learned and obs_logvar not in ("scalar", "per-dim"):
        raise ValueError(f"obs_logvar must be a float, 'scalar' or 'per-dim', got {obs_logvar!r}")
    var = data.var(0) + dequantize**2 / 12  # the (dequantised) data's variance per dimension
    if obs_logvar == "per-dim":
        lv = var.log().detach().clone().requires_grad_(True)
    else:
        start = float(var.mean().log()) if learned else float(obs_logvar)
        lv = torch.tensor(start, dtype=data.dtype, requires_grad=learned)
    params = [*vae.parameters(), *([lv] if learned else [])]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, window, t0 = [], [], time.perf_counter()
    bar = progress_bar(steps, progress, "train vae")
    vae.train()
    for step in range(steps):
        x = data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)]
        if dequantize:  # uniform noise inside each value's bin
            x = x + dequantize * (torch.rand(x.shape, generator=gen, dtype=x.dtype) - 0.5)
        loss = -elbo(vae, x, likelihood=likelihood, obs_logvar=lv, generator=gen).mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:  # linear warm-up, then cosine decay
            g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (
                1 + math.cos(math.pi * step / steps))
        opt.step()
        window.append(loss.item())
        if len(window) == log_every or step == steps - 1:
            losses.append(sum(window) / len(window))
            window = []
            bar.set_postfix(nelbo=f"{losses[-1]:.3f}")
        if callback is not None:
            callback(step + 1, loss.item())
        bar.update(1)
    bar.close()
    vae.eval()
    return VAEResult(vae, lv.detach(), likelihood, steps, time.perf_counter() - t0, losses)


def latent_scale(vae: nn.Module, data: Tensor, batch_size: int = 512) -> float:
    """``1 / std`` of the posterior means of ``data``: the ``scaling_factor`` that gives the
    latents unit variance for a diffusion model (Stable Diffusion's 0.18215 rule)."""
    with torch.no_grad():
        means = torch.cat([posterior(vae, x)[0] for x in data.split(batch_size)])
    return float(1.0 / means.std())

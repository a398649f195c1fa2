"""BayesDiff: pixel-wise uncertainty of diffusion samples by last-layer Laplace.

Kou, Gan, Wang, Li & Deng, "BayesDiff: Estimating Pixel-wise Uncertainty in Diffusion via
Bayesian Inference" (ICLR 2024). The noise-prediction network's last layer gets a Laplace
posterior (diagonal, as the authors' ``DiffusionLLDiagLaplace``): for ``eps = W phi + b``
trained with the squared error, the Hessian of the loss in ``W`` is ``sum phi^2 / noise_var``
per weight, so ``W ~ N(W_map, 1 / (sum phi^2 / noise_var + prior_precision))``
(:func:`last_layer_laplace`). A ``torch.nn.Conv2d`` last layer (as a UNet's ``conv_out``) is
linear in its weights too: each output pixel is ``sum W patch + b``, so the same diagonal
Hessian sums ``patch^2`` over pixels (a convolution's weight gradient, fed squares). Any
element-wise affine map after the layer (EDM's ``c_out``, turning a data prediction into
eps) is measured as the gain ``d eps / d layer output`` and enters squared. The "uncertainty
iteration principle" then carries the mean and the pixel-wise variance of ``x_t`` along the
sampler: a DDIM step is ``x_s = A x_t + B eps(x_t) + c z`` with ``A = alpha_s / alpha_t``,
``B = sqrt(sigma_s^2 - c^2) - alpha_s sigma_t / alpha_t`` and
``c = eta sigma_s sqrt(1 - e^{-2h})``, so

    E x_s   = A E x_t + B E eps_t
    Var x_s = A^2 Var x_t + 2 A B Cov(x_t, eps_t) + B^2 Var eps_t + c^2,

with the moments of ``eps_t`` over the weight posterior and over ``x_t ~ N(E x_t, Var x_t)``
(Monte Carlo, ``mc`` draws of ``x_t`` standardised to the exact mean and variance, so that
the iteration is exact when ``eps`` is linear in ``x_t``; the covariance term as in the
paper). ``Var eps_t`` here is the
total variance ``E_x Var_W eps + Var_x E_W eps``; the paper takes the weight variance at the
generated ``x_t``. The generated sample itself follows the MAP network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn, randn_like
from reverie.samplers import Schedule

__all__ = ["LastLayerLaplace", "last_layer_laplace", "bayesdiff", "BayesDiffResult",
           "filter_samples"]

_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass
class LastLayerLaplace:
    """A diagonal Laplace posterior over the last ``torch.nn.Linear`` or ``torch.nn.Conv2d``
    layer of an eps-prediction network ``net(x, t)`` (whose output is that layer's output,
    reshaped, up to an element-wise affine map): weight variances ``weight_var`` shaped like
    the layer's weight and bias variances ``bias_var`` ``[out]``."""

    net: Callable[[Tensor, Tensor], Tensor]
    layer: torch.nn.Module
    process: object
    weight_var: Tensor
    bias_var: Tensor

    def features(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(net(x, t), phi)``: the MAP prediction and the last layer's input ``[..., in]``."""
        seen: list[Tensor] = []
        hook = self.layer.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        try:
            out = self.net(x, t)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise ValueError(f"the last layer ran {len(seen)} times in one call of the network; "
                             "BayesDiff needs it to run exactly once")
        return out, seen[0]

    def gain(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """``d net / d layer output`` element-wise (the network is affine in the layer's
        output after it): one more call with the layer's output shifted by one."""
        hook = self.layer.register_forward_hook(lambda m, args, o: o + 1)
        try:
            shifted = self.net(x, t)
        finally:
            hook.remove()
        return shifted - out

    def layer_var(self, phi: Tensor) -> Tensor:
        """``Var_W (layer(phi)) = sum phi^2 var_W + var_b``, shaped like the layer's output."""
        w, b = self.weight_var.to(phi.dtype), self.bias_var.to(phi.dtype)
        if isinstance(self.layer, torch.nn.Conv2d):
            c = self.layer
            if c.padding_mode != "zeros":
                raise ValueError(f"only zero-padded Conv2d last layers, got {c.padding_mode!r}")
            var = torch.nn.functional.conv2d(phi**2, w, None, c.stride, c.padding, c.dilation,
                                             c.groups)
            return var + b[:, None, None]
        return phi**2 @ w.T + b

    def moments(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(E_W eps, Var_W eps)`` at ``(x, t)``, both shaped like ``x``."""
        out, phi = self.features(x, t)
        var = self.layer_var(phi.detach().to(out.dtype))
        if var.numel() != out.numel():
            raise ValueError(f"the network's output ({tuple(out.shape)}) is not its last "
                             f"layer's output ({tuple(var.shape)}) reshaped")
        return out, self.gain(x, t, out) ** 2 * var.reshape(out.shape)


def last_layer_laplace(
    net: Callable[[Tensor, Tensor], Tensor], layer: torch.nn.Module, process, data: Tensor, *,
    prior_precision: float = 1.0, noise_var: float = 1.0, draws: int = 1,
    generator: Generators = None,
) -> LastLayerLaplace:
    """Fit the diagonal last-layer Laplace posterior of the eps-prediction ``net`` on clean
    ``data`` ``[N, ...]``: ``draws`` noisings per example at uniform times of the process; the
    precision of each weight is ``sum (g phi)^2 / noise_var + prior_precision`` (the Hessian of
    the denoising loss ``|eps_hat - eps|^2 / (2 noise_var)``, ``g`` the gain of the output in
    the layer's output, 1 when the output is the layer's; for a Conv2d ``phi`` runs over the
    patches), of each bias ``sum g^2 / noise_var + prior_precision``."""
    if not isinstance(layer, _LAYERS):
        raise TypeError(f"layer must be the network's last torch.nn.Linear or torch.nn.Conv2d, "
                        f"got {type(layer).__name__}")
    if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError("data must be a tensor [N, ...] of at least one clean example")
    if not prior_precision > 0 or not noise_var > 0:
        raise ValueError(f"prior_precision and noise_var must be > 0, got {prior_precision}, "
                         f"{noise_var}")
    positive_int("draws", draws)
    lap = LastLayerLaplace(net, layer, process, torch.zeros(0), torch.zeros(0))
    g = generator if isinstance(generator, torch.Generator) else None
    sq = torch.zeros(layer.weight.shape, dtype=torch.float64)
    sq_b = torch.zeros(layer.weight.shape[0], dtype=torch.float64)
    t0, t1 = float(process.t_clean), float(process.t_max)
    with torch.no_grad():
        for _ in range(draws):
            t = t0 + (t1 - t0) * torch.rand(len(data), generator=g, dtype=data.dtype)
            a, s = (v.reshape(-1, *[1] * (data.ndim - 1)) for v in (process.alpha(t),
                                                                     process.sigma(t)))
            xt = a * data + s * randn_like(data, generator)
            out, phi = lap.features(xt, t)
            phi2 = phi.to(torch.float64) ** 2
            g2 = (lap.gain(xt, t, out).to(torch.float64) ** 2)
            if isinstance(layer, torch.nn.Conv2d):  # sum over pixels of g^2 patch^2
                g2 = g2.reshape(phi.shape[0], layer.out_channels, *g2.shape[-2:])
                sq += torch.nn.grad.conv2d_weight(phi2, layer.weight.shape, g2, layer.stride,
                                                  layer.padding, layer.dilation, layer.groups)
                sq_b += g2.sum((0, 2, 3))
            else:
                phi2 = phi2.reshape(-1, layer.in_features)
                g2 = g2.reshape(-1, layer.out_features)
                sq += g2.T @ phi2
                sq_b += g2.sum(0)
    lap.weight_var = 1.0 / (sq / noise_var + prior_precision)
    lap.bias_var = 1.0 / (sq_b / noise_var + prior_precision)
    if layer.bias is None:
        lap.bias_var = torch.zeros_like(lap.bias_var)
    return lap


@dataclass(frozen=True)
class BayesDiffResult:
    """The generated ``sample``, and the propagated pixel-wise ``mean`` and ``variance`` of
    ``x`` at the end of the grid (the uncertainty map is ``variance``)."""

    sample: Tensor
    mean: Tensor
    variance: Tensor


def bayesdiff(
    laplace: LastLayerLaplace, x: Tensor, grid: Tensor, *, eta: float = 0.0, mc: int = 64,
    generator: Generators = None,
) -> BayesDiffResult:
    """BayesDiff (Kou et al. 2024) with a DDIM sampler (``eta``; 1 = DDPM, 0 = deterministic
    as BayesDiff-Skip): from ``x`` ``[B, ...]`` at ``grid[0]`` down the ``grid``, the MAP
    sample and its propagated pixel-wise mean and variance (module docstring), ``mc``
    draws of ``x_t`` per step for the moments of ``eps_t`` (``mc + 1`` network calls)."""
    positive_int("mc", mc)
    if mc < 2:
        raise ValueError(f"mc must be >= 2 (draws of x_t for the moments of eps), got {mc}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    sch = Schedule.build(laplace.process, grid)
    sample = x.detach().clone()
    mean, var = sample.clone(), torch.zeros_like(sample)
    with torch.no_grad():
        for i in range(sch.steps):
            t = torch.full((len(x),), float(sch.t[i]), dtype=x.dtype)
            a_t, s_t, a_s, s_s = sch.alpha[i], sch.sigma[i], sch.alpha[i + 1], sch.sigma[i + 1]
            h = sch.h(i)
            c = eta * s_s * math.sqrt(-math.expm1(-2 * h)) if math.isfinite(h) else 0.0
            A, B = a_s / a_t, math.sqrt(max(s_s**2 - c**2, 0.0)) - a_s * s_t / a_t
            # moments of eps_t over x_t ~ N(mean, var) and the weight posterior
            z = randn((mc, *x.shape), generator, dtype=x.dtype)
            z = (z - z.mean(0)) / z.std(0, correction=0)  # draws with exact mean 0, var 1
            xs = mean + var.sqrt() * z
            e_map, e_var = laplace.moments(xs.reshape(-1, *x.shape[1:]), t.repeat(mc))
            e_map, e_var = e_map.reshape(mc, *x.shape), e_var.reshape(mc, *x.shape)
            e_mean = e_map.mean(0)
            e_tot = e_var.mean(0) + e_map.var(0, correction=0)  # E_x Var_W + Var_x E_W
            cov = ((xs - mean) * (e_map - e_mean)).mean(0)  # Cov(x_t, eps_t)
            # the uncertainty iteration
            mean = A * mean + B * e_mean
            var = (A**2 * var + 2 * A * B * cov + B**2 * e_tot + c**2).clamp(min=0)
            # the generated sample: the MAP network's DDIM step
            eps = laplace.net(sample, t)
            sample = A * sample + B * eps + c * randn_like(sample, generator)
    return BayesDiffResult(sample, mean, var)


def filter_samples(result: BayesDiffResult, keep: float = 0.8) -> Tensor:
    """BayesDiff's sample filtering: the indices of the ``keep`` fraction of samples with the
    smallest summed pixel-wise variance (the most uncertain ``1 - keep`` are dropped), in
    increasing order of uncertainty."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    score = result.variance.reshape(len(result.variance), -1).sum(1)
    return score.argsort()[: max(1, round(keep * len(score)))]

"""``solve``: one entry point for every posterior sampler, and the :data:`METHODS` registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie import distributed as _dist
from reverie._checks import UserError, check_options, positive_int
from reverie._random import Generators
from reverie.denoisers import DenoiserBase
from reverie.inverse import methods as _m
from reverie.inverse.methods import METHODS, Method
from reverie.inverse.noise import GaussianNoise, NoiseModel, as_noise_model
from reverie.inverse.operators import LinearOperator
from reverie.samplers import SAMPLERS, NonFiniteError, resolve_grid

__all__ = ["Method", "METHODS", "InverseResult", "solve", "measurement_consistency", "psnr"]


@dataclass(frozen=True)
class InverseResult:
    """What ``solve(..., return_info=True)`` returns: the ``samples``, the method, the model
    calls per sample (``nfe`` forward, ``vjp`` vector-Jacobian products), the grid walked and
    method-specific extras (e.g. the sampled structured noise)."""

    samples: Tensor
    method: str
    nfe: int
    vjp: int
    grid: Tensor
    extra: Mapping[str, Any]


def _check_y(y: Any, out_shape: tuple[int, ...] | None, n: int) -> Tensor:
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor, got {type(y).__name__}")
    if out_shape is None:
        if y.ndim >= 1 and y.shape[0] == n:
            return y
        return y.unsqueeze(0).expand(n, *y.shape)
    k = len(out_shape)
    if tuple(y.shape) == out_shape:
        return y.unsqueeze(0).expand(n, *out_shape)
    if y.ndim == k + 1 and tuple(y.shape[1:]) == out_shape and y.shape[0] in (1, n):
        return y.expand(n, *out_shape)
    raise ValueError(
        f"y has shape {tuple(y.shape)}, but the operator produces measurements of shape "
        f"{list(out_shape)}: pass y of shape {list(out_shape)} (one measurement) or "
        f"[{n}, {', '.join(map(str, out_shape))}] (one per sample)"
    )


def solve(
    denoiser: DenoiserBase,
    operator: LinearOperator | Callable[[Tensor], Tensor],
    y: Tensor,
    noise_std: float | NoiseModel,
    method: str = "dps",
    *,
    steps: int = 100,
    particles: int | None = None,
    n: int | None = None,
    generator: Generators = None,
    grid: str | Tensor | None = None,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    return_info: bool = False,
    distributed: bool = False,
    **options: Any,
) -> Tensor | InverseResult:
    """Sample ``x ~ p(x | y)`` for ``y = operator(x) + noise`` with the diffusion prior
    ``denoiser``.

    * ``operator``: a :class:`LinearOperator` (:class:`MatrixOperator`, :class:`Inpainting`,
      :class:`Blur`, :class:`Downsample`, compositions) or, for DPS, RED-diff and TDS, any
      differentiable function ``x -> y`` (then pass ``shape``, the shape of one sample, unless
      it has ``in_shape`` / ``out_shape`` like :class:`NonlinearForward`).
    * ``y``: one measurement (shape ``out_shape``; ``n`` samples of its posterior) or one per
      sample (``[n, *out_shape]``; one sample each -- not for the SMC methods).
    * ``noise_std``: the Gaussian noise level (>= 0), or a noise model
      (:class:`GaussianNoise`, :class:`PoissonNoise` for DPS / TDS / RED-diff).
    * ``method``: a name from :data:`METHODS`; ``steps``: the step budget (grid steps; each
      costs one model call per sample, two for ``structured_noise``); ``particles``: particles
      per SMC cloud (SMC methods only; default ``n``: the ``n`` samples are one cloud);
      ``n``: the number of samples (default: the batch of ``y``, or 1).
    * ``generator``: one ``torch.Generator`` (or, for the non-SMC methods, one per sample);
      ``grid``: a grid name or tensor (default: the process's default grid);
      ``dtype``: the solver dtype (default: ``y``'s).
    * ``options``: the method's own keywords (e.g. ``scale`` for DPS, ``eta`` for DDRM,
      ``noise_denoiser`` for ``structured_noise``); see ``METHODS[name].options``.
    * ``distributed``: under an initialised ``torch.distributed`` group (every rank making
      the same call), the SMC methods split their particles over the ranks and resample them
      as one population (every rank passes the same seeded generator); the other methods
      shard the ``n`` samples over the ranks (one generator per sample). Every rank gets the
      one-process result (docs/distributed.md).

    Returns the samples ``[n, *shape]``, or with ``return_info=True`` an
    :class:`InverseResult` that also reports the model calls (NFE) per sample.
    """
    info = METHODS[method]
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(
            f"denoiser must be a reverie denoiser (e.g. reverie.Denoiser(fn, process, "
            f"prediction)), got {type(denoiser).__name__}"
        )
    noise = as_noise_model(noise_std)
    linear = isinstance(operator, LinearOperator)
    if not linear and not callable(operator):
        raise TypeError(
            f"operator must be a reverie.inverse.LinearOperator or a function x -> y, got "
            f"{type(operator).__name__}"
        )
    if info.linear and not linear:
        raise TypeError(
            f"method {info.name!r} needs a linear operator (a reverie.inverse.LinearOperator); "
            f"got the function {getattr(operator, '__name__', type(operator).__name__)}; "
            f"for non-linear forward models use dps, red_diff or tds"
        )
    if info.svd and linear and operator.svd is None:
        raise ValueError(
            f"method {info.name!r} needs an operator with an SVD, but {operator!r} has none in "
            f"closed form; use operator.dense() (a MatrixOperator with a computed SVD) or a "
            f"method without SVD (dps, pigdm, diffpir, red_diff, tds)"
        )
    if info.gaussian and not isinstance(noise, GaussianNoise):
        raise TypeError(f"method {info.name!r} needs Gaussian noise; got {noise!r}")
    positive_int("steps", steps)
    if particles is not None:
        if not info.particles:
            raise ValueError(
                f"method {info.name!r} does not use particles; the SMC methods are "
                f"{', '.join(k for k, m in METHODS.items() if m.particles)}"
            )
        positive_int("particles", particles)
    check_options("method", info.name, options, info.options)
    # shapes
    if linear:
        x_shape = operator.in_shape
        if shape is not None and tuple(shape) != x_shape:
            raise ValueError(
                f"shape {tuple(shape)} does not match the operator's in_shape {x_shape}"
            )
        out_shape: tuple[int, ...] | None = operator.out_shape
    else:  # a function; a NonlinearForward / DeepinvForward also carries its shapes
        op_in, out_shape = getattr(operator, "in_shape", None), getattr(operator, "out_shape", None)
        if shape is None and op_in is None:
            raise ValueError("a non-linear operator needs shape= (the shape of one sample)")
        x_shape = tuple(int(s) for s in (shape if shape is not None else op_in))
        if op_in is not None and x_shape != tuple(op_in):
            raise ValueError(f"shape {x_shape} does not match the operator's in_shape "
                             f"{tuple(op_in)}")
        out_shape = tuple(out_shape) if out_shape is not None else None
    model_shape = getattr(denoiser, "sample_shape", None)
    if model_shape is not None and tuple(model_shape) != tuple(x_shape):
        raise ValueError(
            f"the operator acts on samples of shape {list(x_shape)} but the model produces "
            f"{list(model_shape)}"
        )
    if n is None:
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a floating-point tensor, got {type(y).__name__}")
        batched = out_shape is not None and y.ndim == len(out_shape) + 1
        n = y.shape[0] if batched else 1
    positive_int("n", n)
    yb = _check_y(y, out_shape, n)
    if info.particles and yb.shape[0] > 1 and not bool((yb == yb[:1]).all()):
        raise ValueError(f"SMC method {info.name!r} samples one posterior: pass one measurement y")
    if not bool(torch.isfinite(yb).all()):
        raise ValueError("y contains NaN or inf")
    if isinstance(generator, (list, tuple)) and len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for n={n} samples")
    dtype = dtype or yb.dtype
    # the process's own default grid (posterior samplers start from pure noise at t_max)
    proc = denoiser.process
    g = resolve_grid(SAMPLERS["ddpm"], proc, steps, proc.default_grid if grid is None else grid)
    problem = _m.Problem(denoiser, operator, yb.to(dtype), noise, tuple(x_shape), dtype, g, {})
    if distributed and not info.particles:  # each rank solves its rows
        args = dict(denoiser=denoiser, operator=operator, noise_std=noise, method=method,
                    steps=steps, grid=grid, shape=shape, dtype=dtype, **options)
        res = _dist.solve(solve, args, yb, generator)
        return res if return_info else res.samples
    if distributed:  # one particle population over the ranks
        _dist.require_group("reverie.inverse.solve")
        if not isinstance(generator, torch.Generator):
            raise UserError(f"solve(distributed=True) with the SMC method {info.name!r} needs "
                            "one torch.Generator seeded alike on every rank")
        _dist.agree((n, steps, particles, info.name, _dist.fingerprint(denoiser)),
                    "the problem (n, steps, particles, method) or the model's weights")
        _dist.agree_generators(generator, "reverie.inverse.solve")
        problem.split = True
    if info.particles:
        options["particles"] = particles
    samples, cost = info.fn(problem, steps=g.numel() - 1, generator=generator, **options)
    if not bool(torch.isfinite(samples).all()):
        raise NonFiniteError(f"{info.name}: the samples contain NaN or inf")
    if not return_info:
        return samples
    return InverseResult(samples, info.name, cost.nfe, cost.vjp, g, dict(problem.extra))


def measurement_consistency(
    operator: LinearOperator | Callable[[Tensor], Tensor], x: Tensor, y: Tensor
) -> Tensor:
    """Per-sample RMS of ``y - A(x)`` (compare with the noise level)."""
    ax = operator.A(x) if isinstance(operator, LinearOperator) else operator(x)
    r = (y - ax).reshape(x.shape[0], -1)
    return torch.sqrt((r**2).mean(1))


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-sample peak signal-to-noise ratio in dB (``data_range`` 2 for images in [-1, 1])."""
    mse = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-20))

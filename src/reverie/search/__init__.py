"""Inference-time scaling and reward alignment: spend more network evaluations (NFE) to get
samples that score higher under a reward, or that follow ``p(x) exp(r(x) / T)``.

Every method is one entry of :data:`METHODS` and runs through :func:`run`::

    res = reverie.search.run(denoiser, reward, method="fk", budget=400, n=16, temperature=1.0,
                             generator=torch.Generator().manual_seed(0), shape=(2,))
    res.samples, res.rewards, res.nfe          # nfe <= budget, per returned sample

``budget`` is the number of network evaluations allowed *per returned sample*; each of the
``n`` returned samples is produced by its own independent search (its own particles, tree or
chain), so the law of one returned sample is the method's law at that budget. No method ever
spends more than ``budget`` on a sample, and a budget too small for the method's smallest run
is refused. All methods walk the grid with a registered sampler's *transition*
(:mod:`reverie.samplers`): particle and tree methods draw children from its Gaussian kernel
and resample with :meth:`~reverie.samplers.State.select`; rewards on intermediate states are
taken on the transition's data prediction ``x0``.

=============  =====================================================  ======================
name           method                                                 goal
=============  =====================================================  ======================
best_of_n      random search over initial noises (Ma et al. 2025)      maximise
fk             Feynman-Kac / SMC steering (Singhal et al. 2025)        sample the tilted law
paths          search over paths (Ma et al. 2025)                      maximise
zero_order     zero-order search around a pivot noise (Ma et al.)      maximise
beam           beam search over the stochastic sampler's steps         maximise
dsearch        DSearch, dynamic beam and tree widths (Li et al. 2025)  maximise
dts            Diffusion Tree Sampling (Jain et al. 2025)              sample the tilted law
dts_star       Diffusion Tree Search, greedy DTS (Jain et al. 2025)    maximise
rbf            Rollover Budget Forcing, flow SDE (Kim et al. 2025)     maximise
ditto          initial-noise optimisation by backprop (Novack 2024)    maximise
ditto2         DITTO through a one-step surrogate (Novack 2024)        maximise
=============  =====================================================  ======================

Memory stays bounded as budgets grow: independent samples are processed in chunks and the
network is called on at most ``chunk`` rows at a time (see :class:`CountingDenoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reverie import distributed as _dist
from reverie._checks import UserError, check_options, positive_int
from reverie._progress import progress_bar
from reverie.denoisers import DenoiserBase
from reverie.samplers import SAMPLERS
from reverie.search import beam as _beam  # noqa: F401  (registers methods)
from reverie.search import ditto as _ditto  # noqa: F401
from reverie.search import dsearch as _dsearch  # noqa: F401
from reverie.search import noise as _noise  # noqa: F401
from reverie.search import noise_opt as _noise_opt  # noqa: F401
from reverie.search import rbf as _rbf  # noqa: F401
from reverie.search import smc as _smc  # noqa: F401
from reverie.search import tree as _tree  # noqa: F401
from reverie.search._core import (
    METHODS,
    Context,
    CountingDenoiser,
    Method,
    Rng,
    SearchResult,
)
from reverie.search.rbf import sde_diffusion

METHODS.reorder(
    ("best_of_n", "fk", "paths", "zero_order", "beam", "dsearch", "dts", "dts_star", "rbf",
     "ditto", "ditto2")
)

__all__ = ["METHODS", "Method", "SearchResult", "CountingDenoiser", "run", "sde_diffusion"]


def run(
    denoiser: DenoiserBase,
    reward: Callable[[Tensor], Tensor],
    method: str = "fk",
    budget: int | None = None,
    n: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    sampler: str | None = None,
    steps: int = 20,
    grid: str | Tensor | None = None,
    sampler_options: dict[str, Any] | None = None,
    chunk: int = 2048,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    progress: bool = False,
    distributed: bool | str = False,
    **options: Any,
) -> SearchResult:
    """Search with ``method`` under an NFE ``budget`` per returned sample; return ``n`` samples.

    ``reward(x0) -> Tensor[batch]`` scores clean samples (differentiable for
    ``ditto`` and ``ditto2``).
    ``temperature`` ``T > 0`` sets the target ``p(x) exp(r(x) / T)`` of the sampling methods
    (``fk``, ``dts``) and the softness of ``dts_star``'s values with ``backup="mean"``
    (its default max backup does not use it). ``generator``: one
    ``torch.Generator`` or one per returned sample. ``shape``: the shape of one sample
    (taken from ``denoiser.sample_shape`` or a linear reward's weight when omitted).
    ``sampler``/``steps``/``grid``/``sampler_options``: the sampler every trajectory walks
    (default: the method's; see ``METHODS[name].sampler``). ``chunk``: the most rows passed
    to the network (and the reward) in one call. Method options (e.g. ``potential`` for
    ``fk``) are keyword arguments; ``METHODS[name].options`` lists them with their defaults.

    ``distributed`` (under an initialised ``torch.distributed`` group, every rank making the
    same call): ``"samples"`` shards the ``n`` returned samples over the ranks (one generator
    per sample needed); ``"particles"`` (particle methods, ``METHODS[name].particles``: ``fk``)
    splits each sample's particle population over the ranks and resamples it as one
    population (every rank passes the same generator(s)); ``True`` picks ``"particles"`` for
    particle methods, else ``"samples"``. Either way every rank gets the one-process result.
    """
    info = METHODS[method]
    # a bundled model (``reverie.hub.LoadedModel``) carries its denoiser and sample shape
    if not isinstance(denoiser, DenoiserBase) and isinstance(
        getattr(denoiser, "denoiser", None), DenoiserBase
    ):
        shape = shape if shape is not None else getattr(denoiser, "sample_shape", None)
        denoiser = denoiser.denoiser
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(
            f"denoiser must be a reverie denoiser (e.g. reverie.Denoiser(fn, process, prediction)),"
            f" got {type(denoiser).__name__}"
        )
    if not callable(reward):
        raise TypeError(
            f"reward must be callable (x0 -> Tensor[batch]), got {type(reward).__name__}"
        )
    if budget is None:
        raise ValueError("pass budget=, the number of network evaluations allowed per sample")
    positive_int("budget", budget)
    positive_int("n", n)
    positive_int("steps", steps)
    positive_int("chunk", chunk)
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    shape = _resolve_shape(shape, options.pop("sample_shape", None), denoiser, reward)
    check_options("method", method, options, info.options)
    smp = SAMPLERS[sampler if sampler is not None else info.sampler]
    s_opts = dict(sampler_options or {})
    if sampler is None and info.sampler_options is not None:
        s_opts = {**info.sampler_options(denoiser), **s_opts}
    check_options("sampler", smp.name, s_opts, smp.options)
    s_opts = {**smp.options, **s_opts}
    stochastic = (
        smp.stochastic or float(s_opts.get("eta", 0.0)) > 0 or float(s_opts.get("s_churn", 0.0)) > 0
    )
    if info.needs_stochastic and not stochastic:
        raise ValueError(
            f"method {method!r} branches on the sampler's noise, but sampler {smp.name!r} is "
            "deterministic here; use a stochastic one (ddpm, dpmpp_2m_sde, euler_maruyama, ...)"
        )
    if info.deterministic_only and stochastic:
        raise ValueError(
            f"method {method!r} backpropagates through a deterministic sampler; sampler "
            f"{smp.name!r} is stochastic here (use ddim, dpmpp_2m, heun, ...)"
        )
    mode = _distributed_mode(distributed, info)
    if mode == "samples":  # each rank runs this call on its shard of the returned samples
        args = dict(denoiser=denoiser, reward=reward, method=method, budget=budget,
                    temperature=temperature, shape=shape, sampler=sampler, steps=steps,
                    grid=grid, sampler_options=sampler_options, chunk=chunk, dtype=dtype,
                    device=device, progress=progress and _dist.is_main(), **options)
        return _dist.search(run, args, n, generator, SearchResult)
    if mode == "particles":
        _dist.require_group("reverie.search.run")
        if generator is None:
            raise UserError("run(distributed='particles') needs a generator (or one per "
                            "sample) seeded alike on every rank; got generator=None")
        _dist.agree((n, method, budget, tuple(shape), _dist.fingerprint(denoiser)),
                    "the search (n, method, budget, shape) or the model's weights")
        _dist.agree_generators(generator, "reverie.search.run")
        if not smp.gaussian_kernel or float(s_opts.get("s_churn", 0.0)) > 0:
            raise UserError(f"sampler {smp.name!r} draws noise inside its steps here; a "
                            "population split over ranks needs plain Gaussian steps")
    rng = Rng(generator, n)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    bar = progress_bar(n * budget, progress and _dist.is_main(), f"search {method}",
                       unit="NFE")
    ctx = Context(
        denoiser=denoiser, reward=reward, method=info, budget=budget, n=n,
        temperature=temperature, rng=rng, shape=tuple(shape), sampler=smp, sampler_options=s_opts,
        steps=steps, grid=grid, chunk=chunk, dtype=dtype, device=dev, bar=bar,
    )
    ctx.split = mode == "particles"
    try:
        samples, rewards, spent, extra = info.fn(ctx, **options)
    finally:
        bar.close()
    nfe = int(spent.max())
    if nfe > budget:  # pragma: no cover - an internal accounting error, never user input
        raise RuntimeError(f"method {method!r} spent {nfe} NFE on a sample, over budget={budget}")
    rows = ctx.model.rows if mode is None else sum(_dist.gather_objects([ctx.model.rows]))
    extra = {**extra, "network_rows": rows, "sampler": smp.name, "steps": ctx.steps}
    return SearchResult(samples.detach(), rewards.detach().to(torch.float64), nfe,
                        int(spent.sum()), method, budget, extra)



def _distributed_mode(distributed: bool | str, info: Method) -> str | None:
    """``None`` (one process), ``"samples"`` or ``"particles"`` from ``run``'s argument."""
    if distributed is False:
        return None
    if distributed is True:
        return "particles" if info.particles else "samples"
    if distributed == "samples" or (distributed == "particles" and info.particles):
        return distributed
    if distributed == "particles":
        particle = ", ".join(k for k, m in METHODS.items() if m.particles)
        raise ValueError(f"method {info.name!r} has no particle population to split; "
                         f"distributed='particles' is for {particle}")
    raise ValueError(f"distributed must be False, True, 'samples' or 'particles', got "
                     f"{distributed!r}")


def _resolve_shape(shape: Any, alias: Any, denoiser: DenoiserBase, reward: Any) -> tuple[int, ...]:
    shape = shape if shape is not None else alias
    if shape is None:
        shape = getattr(denoiser, "sample_shape", None)
    if shape is None:
        weight = getattr(reward, "weight", None)
        if isinstance(weight, Tensor):
            shape = (weight.numel(),)
    if shape is None:
        raise ValueError(
            "cannot tell the shape of one sample; pass shape=(...), e.g. shape=(2,) for 2-D points"
        )
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    return shape


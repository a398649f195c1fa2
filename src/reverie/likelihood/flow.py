"""Log-likelihood of data under a diffusion model by the probability-flow ODE.

Song et al. (2021), "Score-Based Generative Modeling through SDEs", sec. 4.3 and App. D.2: the
probability-flow ODE ``dx/dt = v(x, t)`` moves the data distribution onto the prior without
changing probability mass, so by the instantaneous change of variables (Chen et al. 2018,
"Neural ODEs", Thm. 1)

    log p_0(x(0)) = log p_T(x(T)) + int_0^T div_x v(x(t), t) dt.                    (D.2)

Any Gaussian process ``x_t = alpha x0 + sigma eps`` has the same ODE as rectified flow after
the change of coordinates ``z = x / (alpha + sigma)``, ``s = sigma / (alpha + sigma)`` in
``[0, 1]`` (both have the log-SNR ``2 log((1 - s) / s)``): ``z = (1 - s) x0 + s eps`` and

    dz/ds = (z - D(x, t)) / s,                        div_z = (d - div_z D) / s,

with ``D`` the denoiser (data prediction). The velocity stays bounded over the whole range
(including a flow's ``t = 1``), so one solver setting serves VP, VE, EDM and flows alike;
``log p_z = log p_x + d log(alpha + sigma)`` accounts for the change of coordinates.

The two ends are handled explicitly:

* **the clean end.** The data live at ``s = 0`` (``sigma = 0``), where a network is not
  evaluated. There the velocity is known in closed form: ``dz/ds = E[eps - x0 | z] = -z`` at
  ``s = 0`` (the noise has mean zero given the clean point), with divergence ``-d``; for a
  density that is smooth at the scale of ``s_min = s(t_min)`` the velocity is linear in ``s``
  near 0 (``-(1 + s) z - s grad log p_0 + O(s^2)``), so the segment ``[0, s_min]`` is one
  Heun step: the Euler predictor ``(1 - s_min) x`` from that closed form, then the trapezoid with
  the model's velocity and divergence there (local error ``O(s_min^3)``; one model call);
* **the prior.** ``log p_T`` is ``N(0, sigma(t_max)^2 I)`` (score_sde's ``prior_logp`` for VP
  and VE; exact for a flow at ``t = 1``) unless ``prior`` gives another log-density.

The divergence is exact (one vector-Jacobian product per dimension) or the Hutchinson-Skilling
estimate ``eps^T (dv/dz) eps`` (Hutchinson 1989; Grathwohl et al. 2019, FFJORD) with
Rademacher or Gaussian probes held fixed along each trajectory. The ODE is integrated by the
adaptive embedded Runge-Kutta solver of :mod:`reverie.likelihood.ode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie.denoisers import DenoiserBase
from reverie.likelihood.ode import TABLEAUS, batch_max, solve_ode

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "LikelihoodResult",
    "log_likelihood",
    "bits_per_dim",
    "gaussian_prior",
    "check_data",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
_LOG2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class LikelihoodResult:
    """What :func:`log_likelihood` returns with ``return_info=True``.

    ``log_likelihood`` -- ``log p_0(x)`` in nats, ``[batch]``;
    ``prior`` -- ``log p_T(x_T)`` at the end of the ODE, ``[batch]``;
    ``delta`` -- the integrated divergence plus the change of coordinates, ``[batch]``
    (``log_likelihood = prior + delta``);
    ``x_T`` -- the ODE's image of ``x`` at ``t_max``;
    ``nfe`` -- evaluations of the model (each with its divergence); ``steps``/``rejected`` --
    accepted and rejected solver steps.
    """

    log_likelihood: Tensor
    prior: Tensor
    delta: Tensor
    x_T: Tensor
    nfe: int
    steps: int
    rejected: int


def gaussian_prior(sigma: float) -> Callable[[Tensor], Tensor]:
    """``log N(x; 0, sigma^2 I)`` summed over all but the batch dimension."""

    def log_prob(x: Tensor) -> Tensor:
        d = x[0].numel()
        sq = x.reshape(x.shape[0], -1).to(torch.float64).pow(2).sum(1)
        return -0.5 * (sq / sigma**2 + d * (_LOG2PI + 2 * math.log(sigma)))

    return log_prob


def check_data(x: Tensor, sample_shape: Sequence[int] | None, what: str = "x") -> None:
    """Raise a clear error unless ``x`` is a finite floating tensor ``[batch, *sample_shape]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{what} must have the batch first, shape [batch, *sample_shape]; got shape "
            f"{tuple(x.shape)} (add a batch dimension with x[None])"
        )
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise ValueError(
            f"{what} has samples of shape {tuple(x.shape[1:])}, but the model expects "
            f"{tuple(sample_shape)} (data of shape [batch, {', '.join(map(str, sample_shape))}])"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or inf")


def _rf_time(process, s: float) -> float:
    """Process time with ``sigma / (alpha + sigma) = s`` (log-SNR ``2 log((1 - s) / s)``)."""
    if s >= 1.0:
        return float(process.t_max)
    lam = 2.0 * (math.log1p(-s) - math.log(s))
    return float(process.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)))


def _rf_s(process, t: float) -> tuple[float, float]:
    """``(s, alpha + sigma)`` at process time ``t``."""
    a, sg = float(process.alpha(t)), float(process.sigma(t))
    return sg / (a + sg), a + sg


def _probe_vectors(
    kind: str, n: int, like: Tensor, generator: Generators
) -> Tensor:
    """``[n, batch, *shape]`` probes: Rademacher (signs of normals) or standard normal.

    With one generator per sample, sample ``k``'s probes depend on ``generator[k]`` only."""
    z = randn((like.shape[0], n, *like.shape[1:]), generator, dtype=like.dtype, device=like.device)
    z = z.transpose(0, 1).contiguous()
    return torch.sign(z) if kind == "rademacher" else z


def log_likelihood(
    denoiser: DenoiserBase,
    x: Tensor,
    divergence: str = "exact",
    *,
    probe: str = "rademacher",
    n_probes: int = 1,
    generator: Generators = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    t_max: float | None = None,
    prior: Callable[[Tensor], Tensor] | None = None,
    cond: Mapping[str, Any] | None = None,
    sample_shape: Sequence[int] | None = None,
    max_steps: int = 10_000,
    return_info: bool = False,
    distributed: bool = False,
    _reduce: Callable[[Tensor], float] = batch_max,
) -> Tensor | LikelihoodResult:
    """``log p_0(x)`` in nats, ``[batch]``, by the probability-flow ODE (Song et al. 2021,
    eq. D.2) solved with an adaptive embedded Runge-Kutta method.

    ``denoiser`` -- any :class:`~reverie.denoisers.DenoiserBase`; ``x`` -- data, batch first
    (its dtype is the solver's: float64 for reference-grade accuracy). ``divergence`` --
    ``"exact"`` (one vector-Jacobian product per dimension; for small dimensions) or
    ``"hutchinson"`` (``n_probes`` probes of kind ``probe`` in ``("rademacher", "gaussian")``,
    fixed along the trajectory, drawn from ``generator``, one generator per sample allowed).
    ``method`` -- ``"dopri5"`` (default) or ``"bosh3"``; ``rtol``/``atol`` -- the solver's
    tolerances (score_sde's 1e-5). ``t_min``/``t_max`` -- the ODE runs between these process
    times (default: the process's), with the clean-end step below ``t_min`` (module docstring).
    ``prior`` -- ``log p_T`` as a function of ``x_T`` (default ``N(0, sigma(t_max)^2 I)``).
    ``cond`` -- passed to every model call. ``sample_shape`` -- if given (or if the denoiser
    has a ``sample_shape`` attribute), ``x`` must be ``[batch, *sample_shape]``.

    ``distributed`` -- shard the rows over the ``torch.distributed`` process group; the ranks
    share one step-size control (:func:`reverie.distributed.log_likelihood`), so the result is
    one process's.

    Returns the log-likelihoods, or a :class:`LikelihoodResult` (with the NFE, the prior term
    and ``x_T``) when ``return_info=True``. Convert with :func:`bits_per_dim`.
    """
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(
            f"denoiser must be a reverie DenoiserBase (e.g. reverie.Denoiser(net, process, "
            f"prediction)), got {type(denoiser).__name__}"
        )
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}"
        )
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {', '.join(PROBES)}")
    positive_int("n_probes", n_probes)
    if method not in TABLEAUS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {', '.join(TABLEAUS)}")
    shape = sample_shape if sample_shape is not None else getattr(denoiser, "sample_shape", None)
    check_data(x, shape)
    process = denoiser.process
    lo = float(process.t_min if t_min is None else t_min)
    hi = float(process.t_max if t_max is None else t_max)
    if not process.t_clean < lo < hi <= process.t_max + 1e-12:
        raise ValueError(
            f"need t_clean={process.t_clean} < t_min={lo} < t_max={hi} <= process.t_max="
            f"{process.t_max}"
        )
    if distributed:  # each rank integrates its rows (reverie.distributed)
        from reverie import distributed as _dist

        kwargs = dict(divergence=divergence, probe=probe, n_probes=n_probes, method=method,
                      rtol=rtol, atol=atol, t_min=t_min, t_max=t_max, prior=prior,
                      sample_shape=sample_shape, max_steps=max_steps)
        return _dist.log_likelihood(log_likelihood, denoiser, x, generator, cond, return_info,
                                    kwargs)
    cond = dict(cond or {})
    batch, dims = x.shape[0], x[0].numel()
    s_lo, _ = _rf_s(process, lo)
    s_hi, scale_hi = _rf_s(process, hi)
    probes = None
    if divergence == "hutchinson":
        probes = _probe_vectors(probe, n_probes, x, generator)

    nfe = 0

    def field(s: float, z: Tensor, t: float | None = None) -> tuple[Tensor, Tensor]:
        """Velocity ``dz/ds`` and its divergence at ``(z, s)`` (``t`` overrides ``t(s)``)."""
        nonlocal nfe
        t = _rf_time(process, s) if t is None else t
        a, sg = float(process.alpha(t)), float(process.sigma(t))
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            x0 = denoiser((a + sg) * z, t, **cond)
            v = (z - x0) / s
            div = _divergence(v, z, probes)
        nfe += 1
        return v.detach(), div.detach()

    # Clean-end step over [0, s_lo] (Heun): Euler predictor with the closed-form v = -z at
    # s = 0, i.e. z~ = (1 - s_lo) x, then the trapezoid with the model's velocity at (z~, s_lo).
    z_pred = (1.0 - s_lo) * x
    v_lo, div_lo = field(s_lo, z_pred, t=lo)
    z_lo = x + 0.5 * s_lo * (v_lo - x)
    delta_lo = 0.5 * s_lo * (div_lo - dims)

    def rhs(s: float, y: Tensor) -> Tensor:
        t = hi if s == s_hi else (lo if s == s_lo else None)
        v, div = field(s, y[:, :-1].reshape(x.shape), t=t)
        return torch.cat([v.reshape(batch, dims), div.reshape(batch, 1).to(y.dtype)], dim=1)

    zeros = torch.zeros(batch, 1, dtype=x.dtype, device=x.device)
    y0 = torch.cat([z_lo.reshape(batch, dims), zeros], 1)
    sol = solve_ode(rhs, y0, s_lo, s_hi, method=method, rtol=rtol, atol=atol, max_steps=max_steps,
                    reduce=_reduce)
    z_hi = sol.y[:, :-1].reshape(x.shape)
    x_hi = scale_hi * z_hi
    prior_fn = prior if prior is not None else gaussian_prior(float(process.sigma(hi)))
    log_prior = prior_fn(x_hi).to(torch.float64)
    if log_prior.shape != (batch,):
        raise ValueError(f"prior must return one log-density per sample, shape [{batch}], got "
                         f"{tuple(log_prior.shape)}")
    # log p_0(x) = log p_x,T(x_T) + d log(alpha_T + sigma_T) + int_0^{s_T} div_z v ds
    delta = sol.y[:, -1].to(torch.float64) + delta_lo.to(torch.float64) + dims * math.log(scale_hi)
    ll = log_prior + delta
    if not return_info:
        return ll
    return LikelihoodResult(ll, log_prior, delta, x_hi, nfe, sol.steps, sol.rejected)


def _divergence(v: Tensor, z: Tensor, probes: Tensor | None) -> Tensor:
    """``div_z v`` per sample: exact (one VJP per coordinate) or Hutchinson with ``probes``."""
    batch = v.shape[0]
    if probes is None:
        flat_v = v.reshape(batch, -1)
        div = torch.zeros(batch, dtype=v.dtype, device=v.device)
        for i in range(flat_v.shape[1]):
            (g,) = torch.autograd.grad(flat_v[:, i].sum(), z, retain_graph=True)
            div = div + g.reshape(batch, -1)[:, i]
        return div
    est = torch.zeros(batch, dtype=v.dtype, device=v.device)
    for eps in probes:
        eps = eps.to(v.dtype)
        # eps^T (dv/dz) eps via one vector-Jacobian product
        (g,) = torch.autograd.grad((v * eps).sum(), z, retain_graph=True)
        est = est + (g * eps).reshape(batch, -1).sum(1)
    return est / probes.shape[0]


def bits_per_dim(
    log_likelihood: Tensor, dims: int | Sequence[int], *, bin_width: float | None = None
) -> Tensor:
    """Negative log-likelihood in bits per dimension: ``-log p(x) / (D ln 2)``.

    ``dims`` -- the number of dimensions ``D`` or the sample shape. With ``bin_width`` (the
    quantisation step of discrete data in the model's units, e.g. ``2/256`` for 8-bit images
    scaled to ``[-1, 1]``), the result is that of the discrete probability of the bin,
    ``p(x) * bin_width^D``: ``- log2(bin_width)`` is added (score_sde's offset of 7 bits for
    8-bit data in ``[-1, 1]``; Theis et al. 2016, "A note on the evaluation of generative
    models", sec. 3.1, for uniformly dequantised data).
    """
    d = int(dims) if isinstance(dims, int) else math.prod(int(s) for s in dims)
    if d < 1:
        raise ValueError(f"dims must be positive, got {dims}")
    bpd = -log_likelihood.to(torch.float64) / (d * math.log(2))
    if bin_width is not None:
        if not bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {bin_width}")
        bpd = bpd - math.log2(bin_width)
    return bpd

"""Density guidance (Karczewski, Heinonen & Garg 2025, "Devil is in the details: density
guidance for detail-aware generation with flow models"): steer the log-density of the sample
while it is generated.

Along the probability-flow ODE ``dx/dt = u_t(x)`` the log-density of the marginal changes as
``d log p_t(x_t) / dt = -div u_t(x_t)``. Adding ``phi s / |s|^2`` to the velocity (``s`` the
score, the smallest change that moves the log-density) gives ``d log p_t(x_t) / dt =
-div u_t + phi``, so choosing ``phi`` sets the log-density's rate ``b_t`` exactly:
``phi = b_t + div u_t``. With noise orthogonal to the score, ``dx = v dt + gamma P dW``
(``P = I - s s^T / |s|^2``), the log-density stays deterministic and the Ito term
``gamma^2 tr(P H) / 2`` (``H`` the Hessian of ``log p_t``) enters ``phi`` (the stochastic
variant of the paper).

The rate: the log-density moves linearly in ``t`` from its value at the start of the walk
(the Gaussian prior ``N(0, sigma^2 I)`` at the first time; exact for a flow, where
``alpha(t_max) = 0``) to the requested ``log_density=L`` (a number or one per row) at the clean
end, so every output has ``log p_0 = L`` up to the sampler's discretisation error. (The
paper's own rate, the natural one plus a shift from the chi-square quantile of the latent's
norm, is a high-dimensional approximation of a quantile and is not registered.) Where the
score vanishes (a mode or saddle of ``p_t``) no velocity changes the log-density: there
``|s|^2`` is floored at ``1e-12`` and such rare samples miss the target.

The divergence and the Hessian trace are exact (one backward pass per dimension, fine for
small ``D``) or Hutchinson estimates with ``probes`` Rademacher vectors. The scale ``w``
multiplies the guidance term ``phi s / |s|^2`` (1: the rate above; 0: the plain ODE).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from reverie.denoisers import from_x0
from reverie.guidance import Call, register
from reverie.guidance.gradient import _rows

__all__ = ["density", "density_sde"]


def _velocity_and_score(call: Call, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(D(x), u(x), s(x))`` with the graph kept (the ODE velocity and the score of the
    denoiser's marginal at ``(x, t)``)."""
    d = call.guided.denoiser(x, call.t, **call.cond)
    if not d.requires_grad:
        raise ValueError(f"guidance method {call.guided.method.name!r} needs the divergence of "
                         "the velocity, but the denoiser's output carries no gradient")
    a, s = call.coefs()
    u = from_x0(d, "flow", x, call.t, call.process)  # with x (not call.x): its graph is kept
    return d, u.to(x.dtype), (a * d - x) / s**2


def _trace(field: Tensor, x: Tensor, probes: int, generator: torch.Generator | None) -> Tensor:
    """``tr(d field / d x)`` per row: exact (one backward pass per dimension) when ``probes``
    is 0, else Hutchinson's estimate with ``probes`` Rademacher vectors."""
    flat = field.flatten(1)
    total = torch.zeros(x.shape[0], dtype=field.dtype, device=x.device)
    if probes == 0:
        for k in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, k].sum(), x, retain_graph=True)
            total = total + g.flatten(1)[:, k]
        return total
    for _ in range(probes):
        z = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        (g,) = torch.autograd.grad((field * z).sum(), x, retain_graph=True)
        total = total + (g * z).flatten(1).sum(1)
    return total / probes


def _generator(call: Call, key: str, seed: int) -> torch.Generator:
    gen = call.memory.get(key)
    if gen is None:  # one generator per walk: the same noise for the same seed
        gen = call.memory[key] = torch.Generator().manual_seed(seed)
    return gen


def _target_rate(call: Call, x: Tensor, log_density) -> Tensor:
    """``b_t`` per row (module docstring)."""
    proc, t = call.process, float(call.t.reshape(-1)[0])
    start = call.memory.get("density_start")
    if start is None:  # the first call of a walk: the prior's log-density at x_T
        sigma = float(proc.sigma(torch.tensor(t, dtype=torch.float64)))
        flat = x.detach().flatten(1).double()
        logp = -0.5 * (flat**2).sum(1) / sigma**2 - 0.5 * flat.shape[1] * math.log(
            2 * math.pi * sigma**2)
        start = call.memory["density_start"] = (t, logp)
    t0, logp0 = start
    target = torch.as_tensor(log_density, dtype=torch.float64, device=x.device)
    if target.ndim > 0 and target.shape != (x.shape[0],):
        raise ValueError(f"log_density must be a number or one per row ({x.shape[0]}), got "
                         f"shape {tuple(target.shape)}")
    # a straight line in t from (t0, log p_T(x_T)) to (t_clean, L): a constant rate
    return ((logp0 - target) / (t0 - float(proc.t_clean))).to(x.dtype).expand(x.shape[0])


def _guided_velocity(call: Call, w: float, log_density, probes: int, noise: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """``(x0 of the guided velocity, score)`` at ``(x, t)`` with ``noise`` the gamma of the
    stochastic variant (its Ito term enters phi)."""
    if log_density is None:
        raise ValueError("density guidance needs log_density= the target log-density of the "
                         "outputs (a number or one per row)")
    gen = _generator(call, "density_probes", seed) if probes else None
    with torch.enable_grad():
        x = call.x.detach().requires_grad_(True)
        d, u, s = _velocity_and_score(call, x)
        div = _rows(_trace(u, x, probes, gen), x, "divergence")
        ito = 0.0
        if noise > 0:  # gamma^2 tr(P H) / 2 with tr(P H) = tr(H) - s^T H s / |s|^2
            hess_tr = _trace(s, x, probes, gen)
            s_flat = s.flatten(1)
            (hs,) = torch.autograd.grad((s * s.detach()).sum(), x, retain_graph=True)
            s_h_s = (hs.flatten(1) * s_flat.detach()).sum(1) / (s_flat.detach()**2).sum(1)
            ito = 0.5 * _gamma2(call, noise) * (hess_tr - s_h_s).detach()
    s = s.detach()
    rate = _target_rate(call, x, log_density)
    # walking backwards in t, the Ito term adds |dt| gamma^2 tr(PH)/2: it enters with a + sign
    phi = rate + div.detach() + ito
    norm2 = (s.flatten(1) ** 2).sum(1).clamp_min(1e-12)
    extra = (w * phi / norm2).reshape(-1, *([1] * (s.ndim - 1))) * s
    return call.back(u.detach() + extra, "flow"), s


def _gamma2(call: Call, noise: float) -> float:
    """``gamma^2 = noise^2 d sigma^2 / dt`` (finite at ``alpha = 0``, unlike the forward SDE's
    ``g^2``, which is infinite at a flow's noise end)."""
    t = torch.tensor(float(call.t.reshape(-1)[0]), dtype=torch.float64)
    return noise**2 * float(2 * call.process.sigma(t) * call.process.d_sigma(t))


_OPTIONS = {"log_density": None, "probes": 0, "seed": 0}


@register("density", family="density", needs=(), options=_OPTIONS,
          paper="Karczewski, Heinonen & Garg 2025 (Devil is in the details: density guidance "
          "for detail-aware generation with flow models)",
          description="density guidance: the ODE velocity plus phi s / |s|^2 so that the "
          "log-density of the sample follows a set rate exactly: a straight line in t to "
          "log_density= (the target log p of the outputs)")
def density(call: Call, w: float, log_density, probes: int, seed: int) -> Tensor:
    return _guided_velocity(call, w, log_density, int(probes), 0.0, int(seed))[0]


def _sde_hook(guided):
    """After an Euler step from ``t`` to ``t'``, add ``gamma sqrt(|t' - t|) P xi``: noise
    orthogonal to the score at the step's start, which leaves the log-density's rate set."""

    def hook(state, schedule):
        last = guided.memory.get("density_last")
        i = state.i - 1
        if last is None or last[0] != schedule.t[i] or schedule.sigma[i + 1] == 0:
            return None
        _, s, gamma2, gen = last
        xi = torch.randn(state.x.shape, generator=gen, dtype=state.x.dtype)
        flat, sf = xi.flatten(1), s.flatten(1)
        xi = flat - sf * (flat * sf).sum(1, keepdim=True) / (sf**2).sum(1, keepdim=True).clamp_min(
            1e-12)
        step = math.sqrt(gamma2 * abs(schedule.t[i + 1] - schedule.t[i]))
        return replace(state, x=state.x + step * xi.view_as(state.x).to(state.x.device))

    return hook


@register("density_sde", family="density", needs=(), options={**_OPTIONS, "noise": 0.5},
          hook=_sde_hook, samplers=("euler", "ddim"),
          paper="Karczewski, Heinonen & Garg 2025 (Devil is in the details), stochastic "
          "density guidance",
          description="stochastic density guidance: density guidance plus noise orthogonal to "
          "the score (gamma^2 = noise^2 d sigma^2 / dt), with its Ito term in the rate; the "
          "log-density is still set exactly (a step hook; Euler / DDIM steps)")
def density_sde(call: Call, w: float, log_density, probes: int, seed: int,
                noise: float) -> Tensor:
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    x0, s = _guided_velocity(call, w, log_density, int(probes), float(noise),
                             int(seed))
    gen = _generator(call, "density_noise", int(seed) + 1)
    call.guided.memory["density_last"] = (float(call.t.reshape(-1)[0]), s,
                                          _gamma2(call, float(noise)), gen)
    return x0

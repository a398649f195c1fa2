"""The samplers of k-diffusion and ComfyUI that reverie lacked, in reverie's transition form.

Each is k-diffusion's (Crowson, ``k_diffusion/sampling.py``) or ComfyUI's
(``comfy/k_diffusion/sampling.py``) loop body, written once in ``alpha``/``sigma`` form so it
runs on every process (VP, VE/EDM, flows): k-diffusion's state ``x / alpha`` and noise level
``sigma / alpha`` (EDM's VE coordinates) become ``x`` and the grid's ``alpha``, ``sigma``, and
its ``t = -log sigma`` is the half log-SNR ``lambda``. Registered by ``import reverie``
(their names are in ``reverie.SAMPLERS``).

The stochastic ones take ``eta`` (the ancestral noise fraction), ``s_noise`` (a scale on the
added noise) and ``noise_sampler``: ``"gaussian"`` (fresh noise per step from ``generator``,
the default) or ``"brownian_tree"`` (increments of one Brownian path seeded by the generator's
seed, stable across step counts; :mod:`reverie.brownian`), or a :class:`reverie.BrownianTree`.
"""

from __future__ import annotations

import math

from numpy.polynomial import Polynomial
from torch import Tensor

from reverie.brownian import step_noise
from reverie.samplers import (
    _TRAILING_ON_VP,
    Schedule,
    Transition,
    _axpby,
    _ddim,
    _eps,
    _model,
    register,
)

__all__ = [
    "euler_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "lms",
    "deis",
    "res_multistep",
    "sa_solver",
    "lagrange_integrals",
    "exp_lagrange_integrals",
]


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _ancestral(sch: Schedule, i: int, lam_to: float, s_to: float, eta: float):
    """k-diffusion's ``get_ancestral_step`` from grid point ``i`` to a point of half log-SNR
    ``lam_to`` and noise ``s_to``, in that point's ``sigma`` units: ``(sigma_down, sigma_up,
    h_down)`` with ``sigma_up = min(sigma_to, eta sigma_to sqrt(1 - e^{-2h}))`` (VE form:
    ``sqrt(s_to^2 (s_i^2 - s_to^2) / s_i^2)``), ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``
    and ``h_down`` the log-SNR step from ``i`` to the point with noise ``sigma_down``."""
    if s_to == 0:
        return 0.0, 0.0, math.inf
    h = lam_to - sch.lam[i]
    s_up = s_to * min(1.0, eta * math.sqrt(-math.expm1(-2 * h))) if eta else 0.0
    s_down = math.sqrt(max(s_to**2 - s_up**2, 0.0))
    h_down = h - math.log(s_down / s_to) if s_down > 0 else math.inf
    return s_down, s_up, h_down


def _to_down(x: Tensor, d: Tensor, sch: Schedule, i: int, a_to: float, s_down: float,
             h_down: float) -> Tensor:
    """Euler in VE coordinates from ``i`` to noise ``sigma_down`` with data prediction ``d``
    (= the first-order exponential step): ``x/a -> e^{-h} x/a + (1 - e^{-h}) d``, times
    ``a_to``."""
    return _axpby(s_down / sch.sigma[i], x, a_to * -math.expm1(-h_down), d)


def _point(proc, lam: float) -> tuple[float, float, float]:
    """``(t, alpha, sigma)`` of the process where the half log-SNR is ``lam``."""
    t = float(proc.t_from_log_snr(2 * lam))
    return t, float(proc.alpha(t)), float(proc.sigma(t))


def _check_noise(eta: float, s_noise: float) -> None:
    if eta < 0 or s_noise < 0:
        raise ValueError(f"eta and s_noise must be >= 0, got eta={eta}, s_noise={s_noise}")


def lagrange_integrals(nodes: list[float], a: float, b: float, log: bool = False) -> list[float]:
    """``int_a^b L_k(s) ds`` for the Lagrange basis ``L_k`` on ``nodes`` (k-diffusion's
    ``linear_multistep_coeff``, exact instead of by quadrature). ``log=True``: the basis is
    in ``u = log s`` and the integral still in ``s``, ``int L_k(u) e^u du = [e^u sum_m (-1)^m
    L_k^(m)(u)]`` (DEIS with log-rho interpolation; ``b = 0`` gives ``u = -inf``, term 0)."""
    u = [math.log(n) for n in nodes] if log else list(nodes)
    out = []
    for k, uk in enumerate(u):
        p = Polynomial([1.0])
        for m, um in enumerate(u):
            if m != k:
                p = p * Polynomial([-um / (uk - um), 1 / (uk - um)])  # (u - u_m) / (u_k - u_m)
        if not log:
            big = p.integ()
            out.append(float(big(b) - big(a)))
            continue
        # antiderivative of p(u) e^u: e^u (p - p' + p'' - ...)
        q, sign, derivs = Polynomial([0.0]), 1.0, p
        for _ in range(p.degree() + 1):
            q, sign, derivs = q + sign * derivs, -sign, derivs.deriv()

        def prim(s: float, q=q) -> float:
            return 0.0 if s == 0 else s * float(q(math.log(s)))

        out.append(prim(b) - prim(a))
    return out


# ---------------------------------------------------------------------------------------------
# Ancestral samplers
# ---------------------------------------------------------------------------------------------


@register(
    "euler_ancestral",
    order=1,
    stochastic=True,
    grid={"VP": "uniform", "*": "karras"},  # on a VP: diffusers' EulerAncestral "linspace" grid
    eta=1.0,
    s_noise=1.0,
    noise_sampler="gaussian",
    description="Euler ancestral (k-diffusion sample_euler_ancestral): Euler to sigma_down, "
    "then noise sigma_up",
)
def euler_ancestral(denoiser, state, sch, *, generator, cond, eta, s_noise, noise_sampler):
    """k-diffusion ``sample_euler_ancestral`` (diffusers ``EulerAncestralDiscreteScheduler``).
    With ``eta = 1`` its kernel is DDPM's (Ho et al. 2020) posterior step; ``eta`` in (0, 1)
    interpolates to Euler (= DDIM), ``eta > 1`` caps ``sigma_up`` at ``sigma_{i+1}``."""
    _check_noise(eta, s_noise)
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x, sigma_i)
    # sigma_down, sigma_up = get_ancestral_step(sigma_i, sigma_{i+1}, eta)
    s_down, s_up, h_down = _ancestral(sch, i, sch.lam[j], sch.sigma[j], eta)
    mean = _to_down(x, x0, sch, i, sch.alpha[j], s_down, h_down)  # x + d (sigma_down - sigma_i)
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if s_up else None
    return Transition(mean, s_up * s_noise, x0, z=z)  # + noise_sampler(...) * s_noise * sigma_up


@register(
    "dpmpp_2s_ancestral",
    order=1,
    stochastic=True,
    grid={"VP": "trailing/calls", "*": "karras"},
    nfe_per_step=2,
    eta=1.0,
    s_noise=1.0,
    noise_sampler="gaussian",
    description="DPM-Solver++(2S) ancestral (k-diffusion): 2S to sigma_down, then noise sigma_up",
)
def dpmpp_2s_ancestral(denoiser, state, sch, *, generator, cond, eta, s_noise, noise_sampler):
    """k-diffusion ``sample_dpmpp_2s_ancestral``: a DPM-Solver++(2S) step (Lu et al. 2022,
    Alg. 1, r = 1/2) to ``sigma_down``, then ancestral noise ``sigma_up``; Euler where
    ``sigma_down = 0`` (the final step, or ``eta = 1`` from ``alpha = 0``)."""
    _check_noise(eta, s_noise)
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x, sigma_i)
    s_down, s_up, h = _ancestral(sch, i, sch.lam[j], sch.sigma[j], eta)
    nfe, x0_used = 1, x0
    if s_down > 0:  # DPM-Solver++(2S) from lambda_i to lambda_down = lambda_i + h
        lam_i = sch.lam[i]
        # s = t + h / 2 (a finite midpoint sqrt(2) above sigma_down where lambda_i = -inf)
        lam_s = lam_i + 0.5 * h if math.isfinite(lam_i) else lam_i + h - 0.5 * math.log(2)
        t_s, a_s, s_s = _point(denoiser.process, lam_s)
        # x_2 = (sigma_s / sigma_i) x - (e^{-h/2} - 1) denoised
        u = _axpby(s_s / sch.sigma[i], x, a_s * -math.expm1(-(lam_s - lam_i)), x0)
        x0_used = _model(denoiser, u, t_s, cond)  # denoised_2 = model(x_2, sigma_s)
        nfe = 2
    # x = (sigma_down / sigma_i) x - (e^{-h} - 1) denoised_2   (Euler where sigma_down = 0)
    mean = _to_down(x, x0_used, sch, i, sch.alpha[j], s_down, h)
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if s_up else None
    return Transition(mean, s_up * s_noise, x0_used, nfe=nfe, z=z)  # + noise * s_noise * sigma_up


@register(
    "dpmpp_sde",
    order=1,
    stochastic=True,
    grid={"VP": "trailing/calls", "*": "karras"},
    nfe_per_step=2,
    gaussian_kernel=False,
    eta=1.0,
    s_noise=1.0,
    r=0.5,
    noise_sampler="brownian_tree",
    description="DPM-Solver++ SDE (k-diffusion sample_dpmpp_sde): stochastic 2-stage, "
    "midpoint r=1/2",
)
def dpmpp_sde(denoiser, state, sch, *, generator, cond, eta, s_noise, r, noise_sampler):
    """k-diffusion ``sample_dpmpp_sde`` (DPM-Solver++, Lu et al. 2022, with ancestral noise at
    both stages): an ancestral first-order step to the midpoint ``lambda_i + r h`` (noise
    there too: the step draws noise inside, ``gaussian_kernel=False``), the model there, then an
    ancestral step to ``i + 1`` with the blended prediction. k-diffusion always uses its
    Brownian tree here; ``noise_sampler="brownian_tree"`` gives the two stages' correlated
    increments ``W(t_i) - W(t_s)`` and ``W(t_i) - W(t_{i+1})``."""
    _check_noise(eta, s_noise)
    if not 0 < r < 1:
        raise ValueError(f"r must be in (0, 1), got {r}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x, sigma_i)
    if sch.sigma[j] == 0:  # Euler onto sigma = 0: the data prediction
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    lam_i, h = sch.lam[i], sch.h(i)
    # s = t + h r  (where lambda_i = -inf: r on the sigma/alpha scale below lambda_{i+1})
    lam_s = lam_i + r * h if math.isfinite(h) else sch.lam[j] + 0.5 * math.log(r)
    t_s, a_s, s_s = _point(denoiser.process, lam_s)
    # step 1: sd, su = get_ancestral_step(sigma_i, sigma_s, eta); x_2 = (sd / sigma_i) x - ...
    sd1, su1, h1 = _ancestral(sch, i, lam_s, s_s, eta)
    x_2 = _to_down(x, x0, sch, i, a_s, sd1, h1)
    if su1:  # x_2 += noise_sampler(sigma_i, sigma_s) * s_noise * su
        x_2 = x_2 + (su1 * s_noise) * step_noise(noise_sampler, x, generator, sch, i, t_s,
                                                 inner=True)
    x0_2 = _model(denoiser, x_2, t_s, cond)  # denoised_2 = model(x_2, sigma_s)
    # step 2: denoised_d = (1 - fac) denoised + fac denoised_2, fac = 1 / (2r)
    fac = 1 / (2 * r)
    d = _axpby(1 - fac, x0, fac, x0_2)
    sd2, su2, h2 = _ancestral(sch, i, sch.lam[j], sch.sigma[j], eta)
    mean = _to_down(x, d, sch, i, sch.alpha[j], sd2, h2)  # x = (sd / sigma_i) x - (...) d
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if su2 else None
    return Transition(mean, su2 * s_noise, x0_2, nfe=2, z=z)  # + noise(sigma_i, sigma_{i+1})


# ---------------------------------------------------------------------------------------------
# Linear multistep: LMS and DEIS
# ---------------------------------------------------------------------------------------------


@register(
    "lms",
    # nominal 4; measured 3.35-3.41 from 32 to 64 log-SNR steps (tests/test_samplers.py): on
    # these grids the ratio of successive steps in sigma/alpha is large and the start-up low
    order=3,
    stochastic=False,
    grid={"VP": "uniform", "*": "karras"},  # on a VP: diffusers' LMSDiscrete "linspace" grid
    max_order=4,
    description="Linear multistep (k-diffusion sample_lms): Adams-Bashforth in sigma/alpha "
    "with Lagrange coefficients, order 4",
)
def lms(denoiser, state, sch, *, generator, cond, max_order: int) -> Transition:
    """k-diffusion ``sample_lms`` (diffusers ``LMSDiscreteScheduler``): on ``dx/dsigma = d`` in
    VE coordinates, ``x_{i+1} = x_i + sum_k c_k d_{i-k}`` with ``c_k`` the integral over
    ``[sigma_i, sigma_{i+1}]`` of the Lagrange basis on the last ``order`` noise levels, order
    rising to ``max_order`` as slopes accumulate, the final step onto sigma = 0 included.

    memory = the past slopes ``d`` (oldest first) at finite ``sigma / alpha``."""
    if max_order not in (1, 2, 3, 4):
        raise ValueError(f"max_order must be 1..4, got {max_order}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x, sigma_i)
    d = _eps(x, x0, sch, i)  # d = to_d(x, sigma_i, denoised)
    if sch.alpha[i] == 0:  # sigma / alpha infinite: an Euler step (= DDIM), no slope kept
        return Transition(_ddim(x0, d, sch, j), 0.0, x0, ())
    slopes = (*state.memory, d)[-max_order:]  # ds, oldest first
    nodes = [sch.sigma_ve[i - k] for k in range(len(slopes))]  # newest first
    # coeffs = [linear_multistep_coeff(cur_order, sigmas, i, j) for j in range(cur_order)]
    coeffs = lagrange_integrals(nodes, sch.sigma_ve[i], sch.sigma_ve[j])
    # x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    x_ve = x / sch.alpha[i] + sum(c * s for c, s in zip(coeffs, reversed(slopes)))
    memory = slopes[1:] if len(slopes) == max_order else slopes
    return Transition(sch.alpha[j] * x_ve, 0.0, x0, tuple(memory))


@register(
    "deis",
    order=3,
    stochastic=False,
    # on a VP diffusers' DEIS "linspace" spacing (`uniform`): on the tuning mixtures (1, 2,
    # 101-104) as good as `trailing` at 5 NFE, 6-24% better at 10-20 NFE
    grid={"VP": "uniform", "*": "logsnr"},
    max_order=3,
    lower_order_final=True,
    description="DEIS (Zhang & Chen 2023): exponential multistep, eps interpolated in log rho, "
    "order up to 3",
)
def deis(denoiser, state, sch, *, generator, cond, max_order: int, lower_order_final: bool):
    """DEIS, Zhang & Chen (2023), the multistep exponential integrator in the form of diffusers'
    ``DEISMultistepScheduler(algorithm_type="deis")``: in ``rho = sigma / alpha`` the
    probability-flow ODE is ``d(x/alpha)/drho = eps`` (the linear part integrated exactly), and
    ``eps`` is extrapolated by the Lagrange polynomial in ``log rho`` through the last
    ``order`` predictions (eq. 14 with the polynomial in log rho):

        x_{i+1} / alpha_{i+1} = x_i / alpha_i
                                + sum_k eps_{i-k} int_{rho_i}^{rho_{i+1}} L_k(log rho) drho.

    First order (= DDIM) while the history fills and from ``alpha = 0``; the final step onto
    sigma = 0 at full order (the integral to rho = 0 exists; diffusers takes this step, to
    sigma(t = 0), at full order too); ``lower_order_final``: below 15 steps the last two steps
    are second and first order (diffusers' default).

    memory = the past ``eps`` predictions (oldest first) at finite ``rho``."""
    if max_order not in (1, 2, 3):
        raise ValueError(f"max_order must be 1, 2 or 3, got {max_order}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)
    eps = _eps(x, x0, sch, i)
    if sch.alpha[i] == 0:
        return Transition(_ddim(x0, eps, sch, j), 0.0, x0, ())
    hist = (*state.memory, eps)[-max_order:]  # eps predictions, oldest first
    memory = tuple(hist[1:] if len(hist) == max_order else hist)
    order = len(hist)
    if lower_order_final and sch.steps < 15 and j >= sch.steps - 1:
        order = min(order, 2 if j == sch.steps - 1 else 1)  # diffusers' last two steps
    if order == 1:
        return Transition(_ddim(x0, eps, sch, j), 0.0, x0, memory)
    nodes = [sch.sigma_ve[i - k] for k in range(order)]  # rho_i, rho_{i-1}, ... (newest first)
    coeffs = lagrange_integrals(nodes, sch.sigma_ve[i], sch.sigma_ve[j], log=True)
    x_ve = x / sch.alpha[i] + sum(c * e for c, e in zip(coeffs, reversed(hist[-order:])))
    return Transition(sch.alpha[j] * x_ve, 0.0, x0, memory)


# ---------------------------------------------------------------------------------------------
# RES multistep (ComfyUI)
# ---------------------------------------------------------------------------------------------


@register(
    "res_multistep",
    order=2,
    stochastic=False,
    grid=_TRAILING_ON_VP,  # on the tuning mixtures `uniform` was 2-7x worse at 5-20 NFE
    eta=0.0,
    s_noise=1.0,
    noise_sampler="gaussian",
    description="RES multistep (ComfyUI sample_res_multistep; Zhang et al. 2023 RES): "
    "second-order exponential multistep",
)
def res_multistep(denoiser, state, sch, *, generator, cond, eta, s_noise, noise_sampler):
    """ComfyUI's ``res_multistep`` (``sample_res_multistep``: ``eta = 0``;
    ``res_multistep_ancestral``: ``eta = 1``): the second-order multistep exponential integrator
    of the RES paper (Zhang et al. 2023, "Improved order analysis and design of exponential
    integrator for diffusion models sampling", arXiv:2308.02157) on the data prediction,

        x_{i+1} = e^{-h} x_i + h (b1 D_i + b2 D_{i-1}),  b1 = phi1(-h) - phi2(-h) / c2,
        b2 = phi2(-h) / c2,  c2 = (lambda_{i-1} - lambda_old_down) / h,

    in VE coordinates, to ``sigma_down`` then ancestral noise ``sigma_up`` when ``eta > 0``;
    Euler on the first step and onto sigma = 0."""
    _check_noise(eta, s_noise)
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x, sigma_i)
    # sigma_down, sigma_up = get_ancestral_step(sigma_i, sigma_{i+1}, eta)
    s_down, s_up, h = _ancestral(sch, i, sch.lam[j], sch.sigma[j], eta)
    if s_down == 0 or not state.memory or not math.isfinite(sch.lam[i - 1]):
        mean = _to_down(x, x0, sch, i, sch.alpha[j], s_down, h)  # Euler to sigma_down
    else:
        # t_old: the previous step's sigma_down; t_prev: sigma_{i-1} (both as lambda)
        _, _, h_old = _ancestral(sch, i - 1, sch.lam[i], sch.sigma[i], eta)
        c2 = -h_old / h  # c2 = (t_prev - t_old) / h, t_old = lambda_{i-1} + h_old
        phi1 = math.expm1(-h) / -h  # phi1(-h) = (e^{-h} - 1) / (-h)
        phi2 = (phi1 - 1) / -h  # phi2(-h) = (phi1(-h) - 1) / (-h)
        b1, b2 = phi1 - phi2 / c2, phi2 / c2
        # x = e^{-h} x + h (b1 denoised + b2 old_denoised)  (x in VE coordinates)
        mean = _axpby(s_down / sch.sigma[i], x, sch.alpha[j] * h,
                      _axpby(b1, x0, b2, state.memory[-1]))
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if s_up else None
    return Transition(mean, s_up * s_noise, x0, (x0,), z=z)



# ---------------------------------------------------------------------------------------------
# SA-Solver (ComfyUI sample_sa_solver)
# ---------------------------------------------------------------------------------------------


def exp_lagrange_integrals(nodes: list[float], lam_s: float, lam_t: float, c: float) -> list[float]:
    """``int_{lam_s}^{lam_t} c e^{-c (lam_t - l)} L_k(l) dl`` for the Lagrange basis ``L_k`` on
    ``nodes`` (SA-Solver's stochastic Adams coefficients, Xue et al. 2023 eq. 14, exact): with
    ``u = l - lam_t`` the antiderivative of ``c e^{cu} p(u)`` is ``e^{cu} sum_m (-1)^m
    p^(m)(u) / c^m``; ``lam_s = -inf`` (a start at alpha = 0) contributes 0. Plain-Python
    polynomial arithmetic (coefficients, lowest first): this runs twice per step."""
    u = [n - lam_t for n in nodes]
    lo = lam_s - lam_t
    out = []
    for k, uk in enumerate(u):
        p = [1.0]  # prod_{m != k} (u - u_m) / (u_k - u_m)
        for m, um in enumerate(u):
            if m != k:
                d = uk - um
                p = [(p[j - 1] if j else 0.0) / d - (p[j] * um / d if j < len(p) else 0.0)
                     for j in range(len(p) + 1)]
        q, term, scale = [0.0] * len(p), p, 1.0  # q = sum_m (-1/c)^m p^(m)
        while term:
            q = [qi + scale * (term[i] if i < len(term) else 0.0) for i, qi in enumerate(q)]
            term, scale = [i * t for i, t in enumerate(term)][1:], -scale / c
        q_lo = 0.0
        for coef in reversed(q):  # Horner
            q_lo = q_lo * lo + coef if math.isfinite(lo) else 0.0
        out.append(q[0] - (math.exp(c * lo) * q_lo if math.isfinite(lo) else 0.0))
    return out


def _sa_tau(sch: Schedule, j: int, eta: float, tau_start: float, tau_end: float) -> float:
    """ComfyUI's default ``tau_func``: ``eta`` while the sampling progress of grid point ``j``
    (the fraction of the process's time from ``t_max`` to the clean end) is in
    ``[tau_start, tau_end]``, else 0 (deterministic)."""
    proc = sch.process
    progress = (float(proc.t_max) - sch.t[j]) / (float(proc.t_max) - float(proc.t_clean))
    return eta if tau_start <= progress <= tau_end else 0.0


def _sa_mean(x: Tensor, preds: list[Tensor], at: list[int], sch: Schedule, i: int, j: int,
             tau: float) -> Tensor:
    """The stochastic Adams mean from grid point ``i`` to ``j`` (Xue et al. 2023, eq. 14, data
    prediction) with the predictions ``preds`` made at grid points ``at`` (newest last):
    ``(sigma_j / sigma_i) e^{-tau^2 h} x + alpha_j sum_k b_k D_k``. Predictions at alpha = 0
    (log-SNR -inf) are dropped from the interpolation (the order falls by one there)."""
    keep = [k for k, a in enumerate(at) if math.isfinite(sch.lam[a])] or [len(at) - 1]
    preds, nodes = [preds[k] for k in keep], [sch.lam[at[k]] for k in keep]
    h = sch.lam[j] - sch.lam[i]
    c = 1 + tau**2
    if len(nodes) == 1:  # one node: L = 1, the integral in closed form (any lam_i)
        b = [-math.expm1(-c * h)]
    else:
        b = exp_lagrange_integrals(nodes, sch.lam[i], sch.lam[j], c)
    damp = math.exp(-(tau**2) * h) if tau else 1.0
    mean = x * ((sch.sigma[j] / sch.sigma[i]) * damp)
    for bk, d in zip(b, preds):
        mean = mean + (sch.alpha[j] * bk) * d
    return mean


@register(
    "sa_solver",
    order=3,
    stochastic=True,
    grid={"VP": "trailing", "*": "karras"},
    predictor_order=3,
    corrector_order=4,
    eta=1.0,
    tau_start=0.0,  # ComfyUI: 0.2 and 0.8 (noise only on the middle of the path)
    tau_end=1.0,
    s_noise=1.0,
    noise_sampler="gaussian",
    description="SA-Solver (Xue et al. 2023; ComfyUI sample_sa_solver): stochastic Adams "
    "predictor-corrector, tau = eta (default: the whole path)",
)
def sa_solver(denoiser, state, sch, *, generator, cond, predictor_order, corrector_order, eta,
              tau_start, tau_end, s_noise, noise_sampler):
    """SA-Solver, Xue et al. (2023), "SA-Solver: stochastic Adams solver for fast sampling of
    diffusion models", in the form of ComfyUI's ``sample_sa_solver``: a stochastic Adams
    predictor (order ``predictor_order``) and corrector (``corrector_order``) on the
    data-prediction SDE with noise ``tau(t)``,

        x_{i+1} = (sigma_{i+1}/sigma_i) e^{-tau^2 h} x_i + alpha_{i+1} sum_k b_k D_k
                  + sigma_{i+1} sqrt(1 - e^{-2 tau^2 h}) z,

    ``b_k`` the integrals of ``(1 + tau^2) e^{-(1+tau^2)(lambda_{i+1} - lambda)}`` against the
    Lagrange basis in ``lambda`` (:func:`exp_lagrange_integrals`). The corrector recomputes
    ``x_i`` from ``x_{i-1}`` with the prediction made at the predicted ``x_i`` (no extra model
    call) and the predictor's noise ``z``; none on the first step or onto sigma = 0. ``tau`` is
    ``eta`` while the sampling progress is in ``[tau_start, tau_end]``, else 0: by default the
    whole path (the reverse SDE at ``eta = 1``; ComfyUI's default is ``[0.2, 0.8]``, whose
    deterministic ends keep the prior's mismatch: on EDM its exact output law stops improving at
    |mean err| + |cov err| ~ 2e-3 from 80 steps on, tests/test_samplers.py). Orders fall to 1
    at the start and towards the end (ComfyUI's ``lower_order_to_end``).

    memory = ``(x_{i-1} corrected, predictor mean at i, past predictions..., newest last)``:
    the predictor's noise is ``x_i - mean``, so the memory does not depend on the new noise (a
    hook that moves ``x`` between steps moves that noise too)."""
    _check_noise(eta, s_noise)
    if predictor_order not in (1, 2, 3, 4) or corrector_order not in (1, 2, 3, 4):
        raise ValueError(f"predictor_order and corrector_order must be 1..4, got "
                         f"{predictor_order}, {corrector_order}")
    i, j, x = state.i, state.i + 1, state.x
    x0 = _model(denoiser, x, sch.t[i], cond)  # denoised = model(x_pred, sigma_i)
    keep = max(predictor_order, corrector_order) - 1
    past: list[Tensor] = []
    if state.memory and sch.sigma[j] > 0:  # corrector (none on the final step)
        x_prev, mean_prev, *past = state.memory
        order = min(corrector_order, len(past) + 1, sch.steps - i)
        tau = _sa_tau(sch, i, eta, tau_start, tau_end)  # the predictor's tau on this step
        # x = sigma_i/sigma_{i-1} e^{-tau^2 h} x + sum b D + the predictor's noise
        x = _sa_mean(x_prev, (past + [x0])[-order:], list(range(i - order + 1, i + 1)), sch,
                     i - 1, i, tau) + (x - mean_prev)
    elif state.memory:
        past = list(state.memory[2:])
    preds = (past + [x0])[-max(keep, 1):]
    if sch.sigma[j] == 0:  # x_pred = denoised
        return Transition(sch.alpha[j] * x0, 0.0, x0)
    tau = _sa_tau(sch, j, eta, tau_start, tau_end)
    order = max(1, min(predictor_order, len(past) + 1, sch.steps - 1 - i))
    mean = _sa_mean(x, (past + [x0])[-order:], list(range(i - order + 1, i + 1)), sch, i, j, tau)
    std = sch.sigma[j] * math.sqrt(-math.expm1(-2 * tau**2 * sch.h(i))) * s_noise if tau else 0.0
    z = step_noise(noise_sampler, x, generator, sch, i, sch.t[j]) if std else None
    return Transition(mean, std, x0, (x, mean, *preds[-keep:]) if keep else (x, mean), z=z)


# the M2 samplers (EVODiff) register with these when reverie is imported
from reverie import samplers_m2 as _samplers_m2  # noqa: E402, F401

"""Two-sided stochastic interpolants between two data densities.

Albergo, Boffi & Vanden-Eijnden (2023), "Stochastic Interpolants: A Unifying Framework for Flows
and Diffusions". With ``x0 ~ rho_0``, ``x1 ~ rho_1`` (independent here) and ``z ~ N(0, I)``,

    x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z,

``alpha(0) = beta(1) = 1``, ``alpha(1) = beta(0) = 0``, ``gamma(0) = gamma(1) = 0`` and
``gamma > 0`` inside, bridges ``rho_0`` (``t = 0``) to ``rho_1`` (``t = 1``) exactly. Its density
``rho_t`` is transported by the velocity

    b(t, x) = E[alpha' x0 + beta' x1 + gamma' z | x_t = x]

and the denoiser ``eta_z(t, x) = E[z | x_t = x]`` gives the score ``s = -eta_z / gamma``.
Generative models:

* the ODE ``dX = b dt`` (:func:`interpolant_ode`);
* the forward SDE ``dX = (b + eps s) dt + sqrt(2 eps) dW`` for any diffusion ``eps(t) >= 0``
  (:func:`interpolant_sde`), which keeps the marginals ``rho_t``.

Both fields are the unique minimisers of quadratic objectives, in
:mod:`reverie.train.interpolants`. :func:`interpolant_log_likelihood` gives ``log rho_1`` of the
ODE model by the instantaneous change of variables. For Gaussian ``rho_0``, ``rho_1`` the law of
``x_t`` and both fields are closed form (:class:`GaussianInterpolantReference`).

With ``rho_0 = N(0, I)`` the interpolant is a one-sided Gaussian process in reversed time
(``x_t = beta x1 + sqrt(alpha^2 + gamma^2) eps``), and :meth:`TwoSidedInterpolant.one_sided`
returns it as a :class:`reverie.process.Interpolant` on which every registered sampler runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn_like
from reverie._tensor import as64, bcast
from reverie.process import Interpolant, _derivative

__all__ = [
    "TwoSidedInterpolant",
    "GaussianInterpolantReference",
    "interpolant_ode",
    "interpolant_sde",
    "interpolant_log_likelihood",
]

Field = Callable[[Tensor, Tensor], Tensor]  # (x [B, D], t [B]) -> [B, D]
GAMMAS = ("sqrt", "quadratic")


class TwoSidedInterpolant:
    """``x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z`` on ``t`` in ``[0, 1]``.

    ``alpha_fn``, ``beta_fn``, ``gamma_fn`` take and return float64 tensors, written with torch
    operations (derivatives by autograd). The boundary conditions are checked.
    """

    def __init__(
        self,
        alpha_fn: Callable[[Tensor], Tensor],
        beta_fn: Callable[[Tensor], Tensor],
        gamma_fn: Callable[[Tensor], Tensor],
        name: str = "custom",
        gamma_d_gamma_fn: Callable[[Tensor], Tensor] | None = None,
    ):
        self._alpha, self._beta, self._gamma, self.name = alpha_fn, beta_fn, gamma_fn, name
        self._gdg = gamma_d_gamma_fn
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        a, b, g = alpha_fn(ends), beta_fn(ends), gamma_fn(ends)
        want = torch.tensor([1.0, 0.0], dtype=torch.float64)
        ok = torch.allclose(a, want, atol=1e-12) and torch.allclose(b, want.flip(0), atol=1e-12)
        if not ok:
            raise ValueError(
                f"need alpha(0)=beta(1)=1 and alpha(1)=beta(0)=0; got alpha={a.tolist()}, "
                f"beta={b.tolist()} at t=0, 1"
            )
        if not bool((g.abs() < 1e-12).all()):
            raise ValueError(f"gamma must vanish at t=0 and t=1, got {g.tolist()}")
        inner = gamma_fn(torch.linspace(0.01, 0.99, 33, dtype=torch.float64))
        if not bool((inner >= 0).all()):
            raise ValueError("gamma must be >= 0 on (0, 1)")

    @classmethod
    def linear(cls, a: float = 1.0, gamma: str = "sqrt") -> TwoSidedInterpolant:
        """``alpha = 1 - t``, ``beta = t`` with ``gamma = sqrt(a t (1 - t))`` (the paper's
        choice in its examples) or ``gamma = a t (1 - t)`` (``gamma="quadratic"``, whose
        derivative is bounded at the ends)."""
        if not a >= 0:
            raise ValueError(f"a must be >= 0, got {a}")
        if gamma not in GAMMAS:
            raise ValueError(f"unknown gamma {gamma!r}; expected one of {', '.join(GAMMAS)}")
        if gamma == "sqrt":
            def g(t: Tensor) -> Tensor:
                return torch.sqrt((a * t * (1 - t)).clamp(min=0.0))

            def gdg(t: Tensor) -> Tensor:  # (gamma^2)' / 2, finite where gamma' is not
                return 0.5 * a * (1 - 2 * t)
        else:
            def g(t: Tensor) -> Tensor:
                return a * t * (1 - t)

            def gdg(t: Tensor) -> Tensor:
                return a**2 * t * (1 - t) * (1 - 2 * t)
        return cls(lambda t: 1 - t, lambda t: t.clone(), g, name=f"linear(a={a}, gamma={gamma})",
                   gamma_d_gamma_fn=gdg)

    # ---- coefficients -------------------------------------------------------------------------
    def alpha(self, t: float | Tensor) -> Tensor:
        return self._alpha(as64(t))

    def beta(self, t: float | Tensor) -> Tensor:
        return self._beta(as64(t))

    def gamma(self, t: float | Tensor) -> Tensor:
        return self._gamma(as64(t))

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return _derivative(self._alpha, t)

    def d_beta(self, t: float | Tensor) -> Tensor:
        return _derivative(self._beta, t)

    def d_gamma(self, t: float | Tensor) -> Tensor:
        """``gamma'(t)`` (infinite at the ends for ``gamma = sqrt(a t (1 - t))``)."""
        return _derivative(self._gamma, t)

    def gamma_d_gamma(self, t: float | Tensor) -> Tensor:
        """``gamma gamma' = (gamma^2)' / 2``: what the velocity needs, finite at the ends."""
        if self._gdg is not None:
            return self._gdg(as64(t))
        return self.gamma(t) * self.d_gamma(t)

    # ---- samples and regression targets -------------------------------------------------------
    def _coefs(self, t: Tensor, like: Tensor, fns) -> list[Tensor]:
        return [bcast(f(t), like).to(like.dtype) for f in fns]

    def sample(self, x0: Tensor, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha x0 + beta x1 + gamma z`` with ``t`` a scalar or ``[batch]``."""
        a, b, g = self._coefs(as64(t), x0, (self.alpha, self.beta, self.gamma))
        return a * x0 + b * x1 + g * z

    def velocity_target(self, x0: Tensor, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``d x_t / dt = alpha' x0 + beta' x1 + gamma' z``; ``b`` is its conditional mean."""
        da, db, dg = self._coefs(as64(t), x0, (self.d_alpha, self.d_beta, self.d_gamma))
        return da * x0 + db * x1 + dg * z

    # ---- the one-sided special case ----------------------------------------------------------
    def one_sided(self, t_min: float = 1e-3, t_max: float = 0.999) -> Interpolant:
        """For ``rho_0 = N(0, I)``: the Gaussian process ``x_u = beta(1-u) x1 +
        sqrt(alpha(1-u)^2 + gamma(1-u)^2) eps`` in reversed time ``u = 1 - t`` (``u = 0`` is the
        data ``x1``), on which every sampler of :data:`reverie.SAMPLERS` runs. Its denoiser is
        ``E[x1 | x_t]``. Sampling starts at ``t_max`` (default ``0.999``, where ``beta = 1e-3``:
        at ``u = 1`` the signal vanishes and samplers written in ``sigma / alpha`` divide by
        zero)."""

        beta_top = float(self._beta(torch.tensor(1.0 - t_max, dtype=torch.float64)))
        if not 0 < t_max < 1 or beta_top <= 0:
            raise ValueError(
                f"one_sided needs 0 < t_max < 1 with beta(1 - t_max) > 0: where the signal "
                f"vanishes the data prediction is not determined by the noisy point and samplers "
                f"written in sigma / alpha divide by zero; got t_max={t_max}"
            )

        def alpha_u(u: Tensor) -> Tensor:
            return self._beta(1 - u)

        def sigma_u(u: Tensor) -> Tensor:
            t = 1 - u
            return torch.sqrt(self._alpha(t) ** 2 + self._gamma(t) ** 2)

        return Interpolant(alpha_u, sigma_u, t_min=t_min, t_max=t_max, t_clean=0.0,
                           default_grid="trailing")

    def __repr__(self) -> str:
        return f"TwoSidedInterpolant({self.name})"


# ---------------------------------------------------------------------------------------------
# Exact reference: Gaussian end points
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianInterpolantReference:
    """Closed forms for ``x0 ~ N(m0, S0)``, ``x1 ~ N(m1, S1)``, ``z ~ N(0, I)`` independent.

    ``x_t ~ N(mu_t, C_t)``, ``mu_t = alpha m0 + beta m1``, ``C_t = alpha^2 S0 + beta^2 S1 +
    gamma^2 I``; the velocity is ``b = mu_t' + (1/2) C_t' C_t^{-1} (x - mu_t)`` (the regression of
    ``x_t'`` on ``x_t``, whose covariance with ``x_t`` is ``C_t' / 2``), ``eta_z = gamma C_t^{-1}
    (x - mu_t)`` and the score ``-C_t^{-1} (x - mu_t)``.
    """

    interpolant: TwoSidedInterpolant
    m0: Tensor
    S0: Tensor
    m1: Tensor
    S1: Tensor

    @classmethod
    def build(cls, interpolant, m0, S0, m1, S1) -> GaussianInterpolantReference:
        f = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        return cls(interpolant, f(m0), f(S0), f(m1), f(S1))

    def law(self, t: float) -> tuple[Tensor, Tensor]:
        """``(mu_t, C_t)`` of ``x_t``."""
        it = self.interpolant
        a, b, g = float(it.alpha(t)), float(it.beta(t)), float(it.gamma(t))
        eye = torch.eye(self.m0.numel(), dtype=torch.float64)
        return a * self.m0 + b * self.m1, a**2 * self.S0 + b**2 * self.S1 + g**2 * eye

    def _half_dcov(self, t: float) -> tuple[Tensor, Tensor]:
        it = self.interpolant
        a, b, gdg = (float(f(t)) for f in (it.alpha, it.beta, it.gamma_d_gamma))
        da, db = float(it.d_alpha(t)), float(it.d_beta(t))
        eye = torch.eye(self.m0.numel(), dtype=torch.float64)
        return da * self.m0 + db * self.m1, a * da * self.S0 + b * db * self.S1 + gdg * eye

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The exact velocity ``b(t, x)`` at one time for the batch."""
        t = _scalar_time(t)
        mu, cov = self.law(t)
        dmu, half_dcov = self._half_dcov(t)
        x64 = x.to(torch.float64)
        out = dmu + torch.linalg.solve(cov, (x64 - mu).T).T @ half_dcov.T
        return out.to(x.dtype)

    def denoiser(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The exact denoiser ``eta_z(t, x) = E[z | x_t = x]``."""
        t = _scalar_time(t)
        mu, cov = self.law(t)
        g = float(self.interpolant.gamma(t))
        x64 = x.to(torch.float64)
        return (g * torch.linalg.solve(cov, (x64 - mu).T).T).to(x.dtype)

    def log_prob(self, x: Tensor, t: float = 1.0) -> Tensor:
        """``log rho_t(x)``."""
        mu, cov = self.law(t)
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        return dist.log_prob(x.to(torch.float64))


def _scalar_time(t: float | Tensor) -> float:
    if isinstance(t, Tensor):
        if t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all()):
            raise ValueError("the Gaussian reference evaluates one time for the whole batch")
        return float(t.reshape(-1)[0])
    return float(t)


# ---------------------------------------------------------------------------------------------
# Generative dynamics
# ---------------------------------------------------------------------------------------------


def _grid(steps: int, t0: float, t1: float) -> list[float]:
    positive_int("steps", steps)
    if not 0.0 <= t0 < t1 <= 1.0:
        raise ValueError(f"need 0 <= t0 < t1 <= 1, got t0={t0}, t1={t1}")
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()


def _call(field: Field, x: Tensor, t: float) -> Tensor:
    return field(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))


def interpolant_ode(
    velocity: Field, x: Tensor, steps: int = 100, *, t0: float = 0.0, t1: float = 1.0,
    method: str = "heun",
) -> Tensor:
    """Transport samples ``x ~ rho_{t0}`` by the ODE ``dX/dt = b(t, X)`` on a
    uniform grid with Euler or Heun (``method``); returns ``X_{t1}``. ``velocity(x, t)`` takes
    ``x [B, D]`` and ``t [B]``."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown method {method!r}; expected 'euler' or 'heun'")
    ts = _grid(steps, t0, t1)
    for s, t in zip(ts[:-1], ts[1:]):
        h = t - s
        v = _call(velocity, x, s)
        x_euler = x + h * v  # Euler predictor
        if method == "euler":
            x = x_euler
        else:  # trapezoidal corrector
            x = x + 0.5 * h * (v + _call(velocity, x_euler, t))
    return x


def interpolant_sde(
    velocity: Field, denoiser: Field, interpolant: TwoSidedInterpolant, x: Tensor,
    steps: int = 200, *, epsilon: float | Callable[[float], float] = 1.0,
    t0: float = 0.0, t1: float = 1.0, generator: Generators = None,
) -> Tensor:
    """Euler-Maruyama on the forward SDE ``dX = (b - (eps/gamma) eta_z) dt + sqrt(2 eps) dW``
    (the forward SDE with the score ``s = -eta_z / gamma``), from ``x ~ rho_{t0}`` to
    ``t1``; any ``eps(t) >= 0`` keeps the marginals ``rho_t``.

    ``epsilon``: a number ``c`` means ``eps(t) = c gamma(t)`` (the diffusion vanishes with
    gamma at the ends, where the score of the data is unknown, and the drift correction is
    ``-c eta_z``); a callable ``eps(t)`` must vanish where ``gamma`` does.
    """
    ts = _grid(steps, t0, t1)
    for s, t in zip(ts[:-1], ts[1:]):
        h = t - s
        g = float(interpolant.gamma(s))
        if callable(epsilon):
            eps = float(epsilon(s))
            if eps < 0:
                raise ValueError(f"epsilon(t) must be >= 0, got {eps} at t={s}")
            if eps > 0 and g <= 0:
                raise ValueError(f"epsilon(t) must vanish where gamma does; got {eps} at t={s}")
            ratio = eps / g if eps > 0 else 0.0
        else:
            if epsilon < 0:
                raise ValueError(f"epsilon must be >= 0, got {epsilon}")
            eps, ratio = epsilon * g, float(epsilon)
        drift = _call(velocity, x, s)
        if ratio > 0:
            drift = drift - ratio * _call(denoiser, x, s)  # b + eps * score
        x = x + h * drift
        if eps > 0:
            x = x + math.sqrt(2 * eps * h) * randn_like(x, generator)
    return x


def interpolant_log_likelihood(
    velocity: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor], *,
    rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
) -> Tensor:
    """``log rho_1(x)`` of the ODE model ``dX = b dt`` started from ``rho_0`` with density
    ``base_log_prob``: ``log rho_0(X_0) + int_1^0 div b(X_t, t) dt`` along the ODE run
    backwards from ``X_1 = x`` (instantaneous change of variables, Chen et al. 2018), with
    the exact divergence and the adaptive solver of :mod:`reverie.likelihood.ode`. ``x`` is
    ``[batch, D]``."""
    from reverie.likelihood.flow import _divergence, check_data
    from reverie.likelihood.ode import solve_ode

    check_data(x, None)
    batch, dims = x.shape[0], x[0].numel()

    def rhs(t: float, y: Tensor) -> Tensor:
        with torch.enable_grad():
            z = y[:, :-1].reshape(x.shape).detach().requires_grad_(True)
            v = _call(velocity, z, t)
            div = _divergence(v, z, None)
        return torch.cat([v.detach().reshape(batch, dims), div.detach()[:, None].to(y.dtype)], 1)

    y0 = torch.cat([x.reshape(batch, dims), torch.zeros(batch, 1, dtype=x.dtype)], 1)
    sol = solve_ode(rhs, y0, 1.0, 0.0, method=method, rtol=rtol, atol=atol)
    x0 = sol.y[:, :-1].reshape(x.shape)
    return base_log_prob(x0).to(torch.float64) + sol.y[:, -1].to(torch.float64)

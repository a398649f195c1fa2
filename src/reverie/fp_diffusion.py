"""FP-Diffusion's general spatial forward SDE: an ``x``-dependent Riemannian metric ``R(x)`` and
symplectic form ``omega(x)`` with the correction term that keeps a fixed stationary law.

Du, Zhang, Yang & Du (2023), "A Flexible Diffusion Model" (ICML), parameterise "the spatial part"
of every forward SDE whose stationary law is ``p_s ~ exp(-U)`` through the complete recipe of
Ma, Chen & Fox (2015):

    dx = beta(t)/2 [-(R(x) + omega(x)) grad U(x) + Gamma(x)] dt + sqrt(beta(t) R(x)) dW,
    Gamma_i(x) = sum_j d/dx_j (R_ij(x) + omega_ij(x)),

``R(x)`` symmetric positive definite, ``omega(x)`` antisymmetric, ``U = |x|^2 / 2`` (``N(0, I)``)
by default. With constant ``(R, omega)`` and this ``U``, ``Gamma = 0`` and the SDE is
:meth:`reverie.multivariate.LinearDiffusion.fp` (closed-form marginals, ELBO); for an
``x``-dependent one there are no closed-form marginals: the forward process is simulated
(:meth:`FlexibleSDE.simulate`). The stationary current is ``J = p_s beta/2 (div(omega p_s) / p_s)``
(``div`` of an antisymmetric field), whose divergence vanishes identically; without ``Gamma``
(``correction=False``, wrong on purpose) it does not, and the law drifts away from ``p_s``.
:func:`fokker_planck_residual` evaluates ``(d p / d t) / p`` at ``p = p_s`` exactly by automatic
differentiation. Samplers (:func:`sample_flexible`): Euler-Maruyama on the reverse SDE
``dx = [f - div Sigma - Sigma s] dt + sqrt(Sigma) dW`` and Heun on the probability-flow ODE
``dx/dt = f - div Sigma / 2 - Sigma s / 2`` (``Sigma = beta R``; ``div Sigma`` is the term an
``x``-dependent diffusion adds). ``R``, ``omega`` are callables ``x [B, n] -> [B, n, n]`` (plain
functions or ``nn.Module`` s).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators, randn_like
from reverie.multivariate import LinearDiffusion, _grid

__all__ = ["FlexibleSDE", "fokker_planck_residual", "log_likelihood_flexible", "sample_flexible"]

Field = Callable[[Tensor], Tensor]  # x [B, n] -> [B, n, n]


class FlexibleSDE:
    """``dx = beta/2 [-(R + omega) grad U + Gamma] dt + sqrt(beta R) dW`` on ``x [B, n]``
    (module docstring), ``beta(t) = beta_min + (beta_max - beta_min) t`` on ``[t_min, 1]``.
    ``correction=False`` drops ``Gamma`` (not stationary; for checks only)."""

    def __init__(self, R: Field, omega: Field | None = None, *, grad_U: Callable | None = None,
                 correction: bool = True, beta_min: float = 0.1, beta_max: float = 20.0,
                 t_min: float = 1e-3):
        if not callable(R) or (omega is not None and not callable(omega)):
            raise TypeError("R and omega must be callables x [B, n] -> [B, n, n], got "
                            f"{type(R).__name__} and {type(omega).__name__}")
        if not 0 < beta_min <= beta_max or not 0 < t_min < 1:
            raise ValueError(f"need 0 < beta_min <= beta_max and 0 < t_min < 1, got {beta_min}, "
                             f"{beta_max}, {t_min}")
        self.R_fn, self.omega_fn = R, omega
        self.grad_U = grad_U if grad_U is not None else (lambda x: x)  # N(0, I)
        self.correction = bool(correction)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    @classmethod
    def constant(cls, R, omega=None, **kw) -> FlexibleSDE:
        """Constant ``(R, omega)``: the spatially linear case ``LinearDiffusion.fp(R, omega)``."""
        lin = LinearDiffusion.fp(R, omega)            # validates: omega antisymmetric, R >= 0
        with torch.no_grad():
            R, om = 2 * lin.D(), 2 * lin.Q()
        return cls(lambda x: R.to(x).expand(x.shape[0], -1, -1),
                   lambda x: om.to(x).expand(x.shape[0], -1, -1), **kw)

    @classmethod
    def example(cls, **kw) -> FlexibleSDE:
        """A fixed ``x``-dependent pair on ``n = 2`` (tests, ``reverie bench processes``):
        ``R(x) = [[1 + sin^2(x1) / 2, 0.3 sin(x1) cos(x2)], [., 0.8 + 0.4 cos^2(x2)]]``
        (``det R >= 0.71``), ``omega(x) = 1.5 sin(x1 + 2 x2) [[0, 1], [-1, 0]]``."""
        def R(x):
            a, b = torch.sin(x[:, 0]), torch.cos(x[:, 1])
            return torch.stack([torch.stack([1 + 0.5 * a**2, 0.3 * a * b], -1),
                                torch.stack([0.3 * a * b, 0.8 + 0.4 * b**2], -1)], -2)

        def omega(x):
            w = 1.5 * torch.sin(x[:, 0] + 2 * x[:, 1])
            zero = torch.zeros_like(w)
            return torch.stack([torch.stack([zero, w], -1), torch.stack([-w, zero], -1)], -2)

        return cls(R, omega, **kw)

    def beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def int_beta(self, t):
        """``B(t) = int_0^t beta``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(R(x), omega(x))``, each ``[B, n, n]``."""
        if x.ndim != 2:
            raise ValueError(f"x must be [batch, dim], got {tuple(x.shape)}")
        r = self.R_fn(x)
        om = torch.zeros_like(r) if self.omega_fn is None else self.omega_fn(x)
        want = (x.shape[0], x.shape[1], x.shape[1])
        if tuple(r.shape) != want or tuple(om.shape) != want:
            raise ValueError(f"R(x) and omega(x) must be {want}, got {tuple(r.shape)} and "
                             f"{tuple(om.shape)}")
        return r, om

    def _divergence(self, x: Tensor, which: str) -> Tensor:
        """``sum_j d/dx_j M_ij(x)`` ``[B, n]`` for ``M = R + omega`` (``"both"``) or ``R``."""
        def field(xi):  # one point [n] -> [n, n]
            r, om = self.matrices(xi[None])
            return (r + om if which == "both" else r)[0]
        jac = torch.func.vmap(torch.func.jacrev(field))(x)   # [B, n, n, n]: d M_ij / d x_k
        return torch.einsum("bijj->bi", jac)

    def correction_term(self, x: Tensor) -> Tensor:
        """``Gamma(x)`` ``[B, n]``: ``Gamma_i = sum_j d/dx_j (R_ij + omega_ij)``."""
        return self._divergence(x, "both")

    def drift(self, x: Tensor, t: float) -> Tensor:
        """``f(x, t) = beta/2 [-(R + omega) grad U + Gamma]`` ``[B, n]``."""
        r, om = self.matrices(x)
        f = -((r + om) @ self.grad_U(x)[..., None])[..., 0]
        if self.correction:
            f = f + self.correction_term(x)
        return 0.5 * self.beta(t) * f

    def diffusion(self, x: Tensor, t: float) -> Tensor:
        """``Sigma = G G^T = beta R(x)`` ``[B, n, n]``."""
        return self.beta(t) * self.matrices(x)[0]

    def div_diffusion(self, x: Tensor, t: float) -> Tensor:
        """``(div Sigma)_i = beta sum_j d/dx_j R_ij`` ``[B, n]``."""
        return self.beta(t) * self._divergence(x, "R")

    def _noise(self, x, t, h, generator):
        """``sqrt(h Sigma) z`` through the Cholesky factor of ``R(x)``."""
        chol, info = torch.linalg.cholesky_ex(self.matrices(x)[0])
        if bool((info > 0).any()):
            raise ValueError(f"R(x) must be symmetric positive definite; it is not at "
                             f"{int((info > 0).sum())} of {x.shape[0]} points")
        return math.sqrt(h * self.beta(t)) * (chol @ randn_like(x, generator)[..., None])[..., 0]

    def simulate(self, x0: Tensor, t_end: float, steps: int = 200, *,
                 generator: Generators = None) -> Tensor:
        """``x_{t_end}`` from ``x_0 = x0 [B, n]`` by Euler-Maruyama (no closed-form marginals)."""
        positive_int("steps", steps)
        return self.path(x0, [t_end * i / steps for i in range(steps + 1)], generator=generator)[-1]

    def path(self, x0: Tensor, times, *, generator: Generators = None) -> Tensor:
        """Euler-Maruyama from ``x0`` at ``times[0]`` through increasing ``times``: the states
        ``[len(times), B, n]`` (midpoint ``beta`` on each step)."""
        out, x = [x0], x0
        for t, s in zip(times[:-1], times[1:]):
            h, tm = s - t, 0.5 * (s + t)
            if h <= 0:
                raise ValueError(f"times must increase, got {t} then {s}")
            x = x + h * self.drift(x, tm).detach() + self._noise(x, tm, h, generator).detach()
            out.append(x)
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"FlexibleSDE(correction={self.correction})"


def fokker_planck_residual(process: FlexibleSDE, x: Tensor, t: float = 0.5) -> Tensor:
    """``(d p / d t) / p`` ``[B]`` at ``x [B, n]`` when ``p = p_s ~ exp(-U)``: zero everywhere
    iff ``p_s`` is stationary. With ``j = J / p_s = f - div Sigma / 2 + Sigma grad U / 2``
    (the probability current per unit density), ``dp/dt = -div(p_s j)`` gives
    ``-(div j - grad U . j)``; derivatives by automatic differentiation."""
    def current(xi):  # j at one point [n]
        xb = xi[None]
        sig = process.diffusion(xb, t)
        return (process.drift(xb, t) - 0.5 * process.div_diffusion(xb, t)
                + 0.5 * (sig @ process.grad_U(xb)[..., None])[..., 0])[0]
    def with_aux(xi):
        j = current(xi)
        return j, j
    jac, j = torch.func.vmap(torch.func.jacrev(with_aux, has_aux=True))(x)
    div_j = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
    return -(div_j - (process.grad_U(x) * j).sum(-1))


def sample_flexible(process: FlexibleSDE, score: Callable[[Tensor, Tensor], Tensor],
                    noise: Tensor, steps: int = 100, *, method: str = "euler_maruyama",
                    generator: Generators = None) -> Tensor:
    """Run the reverse process from ``x_1 = noise [B, n]`` down to ``t_min`` on the quadratic
    grid of :func:`reverie.multivariate.sample_linear`: Euler-Maruyama on the reverse SDE
    (``"euler_maruyama"``) or Heun on the probability-flow ODE (``"heun"``). ``score(x, t [B])``
    is ``grad log q_t(x)``. Returns ``x_{t_min}`` (no closed-form decoder off the linear case)."""
    positive_int("steps", steps)
    if method not in ("euler_maruyama", "heun"):
        raise ValueError(f"unknown method {method!r}; expected 'euler_maruyama' or 'heun'")
    if noise.ndim != 2:
        raise ValueError(f"noise must be [batch, dim], got {tuple(noise.shape)}")

    def parts(x, t):  # (f - div Sigma, Sigma s)
        s = score(x, torch.full((x.shape[0],), t, dtype=x.dtype))
        return (process.drift(x, t) - process.div_diffusion(x, t),
                (process.diffusion(x, t) @ s[..., None])[..., 0])

    def ode(x, t):  # dx/dt = f - div Sigma / 2 - Sigma s / 2
        f, ss = parts(x, t)
        return (f + 0.5 * process.div_diffusion(x, t) - 0.5 * ss).detach()

    ts, x = _grid(process, steps), noise
    for t, s in zip(ts[:-1], ts[1:]):
        h = t - s
        if method == "heun":
            k1 = ode(x, t)
            pred = x - h * k1                                    # Euler predictor
            x = x - 0.5 * h * (k1 + ode(pred, s))                # trapezoidal corrector
        else:  # reverse SDE, backwards in time: x <- x - h (f - div Sigma - Sigma s) + noise
            f, ss = parts(x, t)
            x = x - h * (f - ss).detach() + process._noise(x, t, h, generator).detach()
    return x


def log_likelihood_flexible(process: FlexibleSDE, score: Callable[[Tensor, Tensor], Tensor],
                            x: Tensor, steps: int = 100, *,
                            prior: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``log p_{t_min}(x)`` ``[B]`` of the model's probability-flow ODE (nats; the change of
    variables ``d log p / dt = -div v`` along ``v = f - div Sigma / 2 - Sigma s / 2``, Heun from
    ``t_min`` to 1 on the samplers' grid, ``prior(y) = log N(y; 0, I)`` at ``t = 1`` unless given).
    The divergence
    is exact (a Jacobian per point: meant for small ``n``)."""
    positive_int("steps", steps)
    if x.ndim != 2:
        raise ValueError(f"x must be [batch, dim], got {tuple(x.shape)}")

    def v_single(xi, t):  # the ODE velocity at one point [n]
        xb = xi[None]
        s = score(xb, torch.full((1,), t, dtype=xb.dtype))
        return (process.drift(xb, t) - 0.5 * process.div_diffusion(xb, t)
                - 0.5 * (process.diffusion(xb, t) @ s[..., None])[..., 0])[0]

    def rhs(y, t):  # (v, div v) for the batch, v as the Jacobian's auxiliary output
        def with_aux(yi):
            v = v_single(yi, t)
            return v, v
        jac, v = torch.func.vmap(torch.func.jacrev(with_aux, has_aux=True))(y)
        return v.detach(), jac.diagonal(dim1=-2, dim2=-1).sum(-1).detach()

    ts, y = _grid(process, steps)[::-1], x
    logdet = torch.zeros(x.shape[0], dtype=x.dtype)
    for t, s in zip(ts[:-1], ts[1:]):
        h = s - t
        v1, d1 = rhs(y, t)
        v2, d2 = rhs(y + h * v1, s)                              # Euler predictor
        y, logdet = y + 0.5 * h * (v1 + v2), logdet + 0.5 * h * (d1 + d2)  # trapezoidal
    if prior is not None:
        return prior(y) + logdet
    return -0.5 * (y**2).sum(1) - 0.5 * y.shape[1] * math.log(2 * math.pi) + logdet

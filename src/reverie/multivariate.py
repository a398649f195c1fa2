"""Linear multivariate diffusions: auxiliary-variable (MDM) and spatial (FP-Diffusion) processes.

Singhal, Goldstein & Ranganath (2023), "Where to Diffuse, How to Diffuse, and How to Get Back:
Automated Learning for Multivariate Diffusions" (MDM), and Du et al. (2023), "A Flexible
Diffusion Model" (FP-Diffusion), both diffuse with a *linear* SDE whose stationary law is the
target noise ``N(0, I)``, written with the "complete recipe" (Ma et al. 2015):

    du = -beta(t) (Q + D) u dt + sqrt(2 beta(t) D) dW,     Q = -Q^T,  D = D^T >= 0.

``A I + I A^T + G G^T = 0`` for ``A = -beta (Q + D)``, ``G G^T = 2 beta D``: ``N(0, I)`` is
stationary for *every* such ``(Q, D)``, which is how MDM parameterises "all linear diffusions
with a given target" and searches over them by the ELBO. The state ``u [B, n, m]`` has ``n``
rows on which the matrices act:

* MDM (``spatial=False``): row 0 is the data ``x [B, m]``, rows ``1 .. n-1`` are auxiliary
  variables started at ``y_0 ~ N(0, aux_var I)`` (critically-damped Langevin, CLD, is
  ``n = 2`` with ``Q = [[0, -1], [1, 0]]``, ``D = diag(0, 2)``; MALDA ``n = 3``);
* FP-Diffusion (``spatial=True``): the rows are the data coordinates ``x [B, n]`` themselves
  (``m = 1``) and ``(Q, D) = (omega, R) / 2`` are the paper's symplectic form and Riemannian
  metric, constant in ``x`` (the spatially linear case; the paper's ``x``-dependent ``R(x)``,
  ``omega(x)`` with their correction term are not implemented).

With ``B(t) = int_0^t beta``, ``Phi_t = expm(-B(t) (Q + D))`` the marginals are closed form
(:meth:`LinearDiffusion.moments`): ``q(u_t | x) = N(a_t x, Sigma_t (x) I_m)`` with
``a_t = Phi_t[:, :p]`` (``p`` data rows) and ``Sigma_t = I + Phi_t (Sigma_0 - I) Phi_t^T``.

The ELBO (:func:`elbo_terms`) is the KL form of the continuous-time bound (MDM's Thm. 1; VDM
for ``n = 1``):

    -log p(x) <= E[-log p(x | u_eps)] + KL(q(u_T | x) || N(0, I))
                 + int_eps^T E[ |G^T (s(u_t, t) - grad log q(u_t | x))|^2 / 2 ] dt,

with the Gaussian decoder ``p(x | u_eps) = N(x; P u_eps, V)``, ``V = (a^T Sigma^-1 a)^-1``,
``P = V a^T Sigma^-1`` (VDM's ``N(x; z/alpha, sigma^2/alpha^2)`` for ``n = 1``). Samplers
(:func:`sample_linear`): Euler-Maruyama on the reverse SDE ``du = [A u - G G^T s] dt + G dW``
and Heun on the probability-flow ODE ``du = [A u - G G^T s / 2] dt``; the registered samplers of
:mod:`reverie.samplers` assume one scalar ``(alpha, sigma)`` per time and do not apply when rows
are coupled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie._random import Generators, randn_like

__all__ = ["LinearDiffusion", "GaussianLinearReference", "elbo_terms", "sample_linear",
           "score_from_eps"]

Score = Callable[[Tensor, Tensor], Tensor]  # (u [B, n, m], t [B]) -> grad log q_t(u)
D64 = torch.float64


class LinearDiffusion(nn.Module):
    """``du = -beta(t) (Q + D) u dt + sqrt(2 beta(t) D) dW`` on ``u [B, n, m]`` (module
    docstring), ``beta(t) = beta_min + (beta_max - beta_min) t`` on ``[t_min, 1]``.

    ``Q`` (antisymmetric) and ``D`` (symmetric positive semi-definite) are stored through
    free parameters (``Q = U - U^T``, ``D = L L^T``) and trained with the model when
    ``learn=True`` (MDM's automated search). Raises ``ValueError`` when the noise does not reach
    every coordinate (``Sigma_{t_min}`` singular): the reverse process is then undefined."""

    def __init__(self, Q, D, *, spatial: bool = False, aux_var: float = 1.0,
                 beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 learn: bool = False, name: str = "custom"):
        super().__init__()
        Q, D = torch.as_tensor(Q, dtype=D64), torch.as_tensor(D, dtype=D64)
        if D.ndim != 2 or D.shape[0] != D.shape[1] or Q.shape != D.shape:
            raise ValueError(f"Q and D must be square matrices of one size, got {tuple(Q.shape)} "
                             f"and {tuple(D.shape)}")
        if not torch.allclose(Q, -Q.T, atol=1e-10):
            raise ValueError("Q must be antisymmetric (Q = -Q^T)")
        evals, evecs = torch.linalg.eigh(0.5 * (D + D.T))
        if not torch.allclose(D, D.T, atol=1e-10) or float(evals.min()) < -1e-10:
            raise ValueError(f"D must be symmetric positive semi-definite, got eigenvalues "
                             f"{evals.tolist()}")
        if not 0 < beta_min <= beta_max or not 0 < t_min < 1 or aux_var <= 0:
            raise ValueError(f"need 0 < beta_min <= beta_max, 0 < t_min < 1, aux_var > 0; got "
                             f"{beta_min}, {beta_max}, {t_min}, {aux_var}")
        self.n, self.spatial, self.name = D.shape[0], bool(spatial), name
        self.p = self.n if spatial else 1                 # data rows
        self.aux_var = float(aux_var)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0
        self.q_upper = nn.Parameter(torch.triu(Q, 1), requires_grad=learn)
        self.d_factor = nn.Parameter(evecs * evals.clamp(min=0).sqrt(), requires_grad=learn)
        # Kalman's rank condition: Sigma_t > 0 for t > 0 iff [D, M D, .., M^(n-1) D] has rank n
        m_mat, d_mat = Q + D, D
        blocks = [d_mat]
        for _ in range(self.n - 1):
            blocks.append(m_mat @ blocks[-1])
        if int(torch.linalg.matrix_rank(torch.cat(blocks, 1), atol=1e-9)) < self.n:
            raise ValueError(
                f"the noise of {self!r} does not reach every coordinate: Sigma_t is singular, so "
                "the reverse process is undefined (couple the noise-free rows to the noisy ones "
                "through Q, or make D positive definite)")

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def vp(cls, **kw) -> LinearDiffusion:
        """``n = 1``, ``D = 1/2``: ``VPLinear`` (``dx = -beta x / 2 dt + sqrt(beta) dW``)."""
        return cls([[0.0]], [[0.5]], name="vp", **kw)

    @classmethod
    def cld(cls, damping: float = 2.0, aux_var: float = 0.04, **kw) -> LinearDiffusion:
        """Critically-damped Langevin (Dockhorn et al. 2022) in MDM form: ``x' = v``,
        ``v' = -x - damping v`` plus noise on ``v`` (``damping = 2``: critical, unit mass);
        ``v_0 ~ N(0, aux_var)``."""
        return cls([[0.0, -1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, damping]], aux_var=aux_var,
                   name=f"cld(damping={damping})", **kw)

    @classmethod
    def malda(cls, n: int = 3, aux_var: float = 1.0, **kw) -> LinearDiffusion:
        """MDM's MALDA: ``Q`` with ``-1`` above and ``+1`` below the diagonal,
        ``D = diag(0, 2, .., 2)`` (the data row noise-free), ``n - 1`` auxiliary rows."""
        positive_int("n", n)
        ones = torch.ones(n, n, dtype=D64)
        q = ones.tril(-1) - ones.triu(1)
        d = torch.diag(torch.tensor([0.0] + [2.0] * (n - 1), dtype=D64))
        return cls(q, d, aux_var=aux_var, name=f"malda(n={n})", **kw)

    @classmethod
    def fp(cls, R, omega=None, **kw) -> LinearDiffusion:
        """FP-Diffusion's spatially linear forward SDE on ``x [B, n]``:
        ``dx = -beta/2 (R + omega) x dt + sqrt(beta R) dW`` (``R`` symmetric positive definite,
        ``omega`` antisymmetric, default 0)."""
        R = torch.as_tensor(R, dtype=D64)
        omega = torch.zeros_like(R) if omega is None else torch.as_tensor(omega, dtype=D64)
        return cls(0.5 * omega, 0.5 * R, spatial=True, name="fp", **kw)

    @classmethod
    def learnable(cls, n: int, *, spatial: bool = False, seed: int = 0, scale: float = 0.1,
                  **kw) -> LinearDiffusion:
        """A trainable ``(Q, D)`` started near ``D = I / 2`` (VP on every row) with a small
        random ``Q``: MDM's learned diffusion (``spatial=False``, ``n - 1`` auxiliary rows) or
        FP-Diffusion's learned ``(R, omega)`` (``spatial=True``)."""
        g = torch.Generator().manual_seed(seed)
        q = scale * torch.randn(n, n, generator=g, dtype=D64)
        return cls(q - q.T, 0.5 * torch.eye(n, dtype=D64), spatial=spatial, learn=True,
                   name=f"learned(n={n}, spatial={spatial})", **kw)

    # ---- matrices and schedule -------------------------------------------------------------
    def Q(self) -> Tensor:
        u = torch.triu(self.q_upper, 1)
        return u - u.T

    def D(self) -> Tensor:
        return self.d_factor @ self.d_factor.T

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def int_beta(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def transition(self, t: Tensor, s: Tensor | None = None) -> Tensor:
        """``Phi_{t|s} = expm(-(B(t) - B(s)) (Q + D))`` ``[*t, n, n]`` (``s = 0`` by default)."""
        t = torch.as_tensor(t, dtype=D64)
        b = self.int_beta(t) - (0.0 if s is None else self.int_beta(torch.as_tensor(s, dtype=D64)))
        return torch.linalg.matrix_exp(-b[..., None, None] * (self.Q() + self.D()))

    def moments(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_t [*t, n, p], Sigma_t [*t, n, n])``: ``q(u_t | x) = N(a_t x, Sigma_t (x) I)``."""
        phi = self.transition(t)
        s0 = torch.zeros(self.n, dtype=D64)
        s0[self.p:] = self.aux_var
        eye = torch.eye(self.n, dtype=D64)
        sigma = eye + phi @ (torch.diag(s0) - eye) @ phi.transpose(-1, -2)
        return phi[..., :, : self.p], 0.5 * (sigma + sigma.transpose(-1, -2))

    # ---- states ------------------------------------------------------------------------------
    def rows(self, x: Tensor) -> Tensor:
        """Data ``x`` as its rows of the state: ``[B, p, m]``."""
        want = self.n if self.spatial else None
        if x.ndim != 2 or (want is not None and x.shape[1] != want):
            raise ValueError(f"x must be [batch, {want or 'dim'}] for {self!r}, got "
                             f"{tuple(x.shape)}")
        return x[:, :, None] if self.spatial else x[:, None, :]

    def unrows(self, r: Tensor) -> Tensor:
        return r[:, :, 0] if self.spatial else r[:, 0, :]

    def state_shape(self, x: Tensor) -> tuple[int, int, int]:
        return (x.shape[0], self.n, self.rows(x).shape[2])

    def sample(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``u_t = a_t x + L_t eps`` (``L_t L_t^T = Sigma_t``), ``eps [B, n, m]``, ``t [B]``."""
        a, sigma = self.moments(t)
        lt = torch.linalg.cholesky(sigma)
        return (a @ self.rows(x).to(D64) + lt @ eps.to(D64)).to(x.dtype)

    def decode(self, u: Tensor, t: float, score: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x_hat [B, ...], V [p, p])``: the decoder mean ``P (u + Sigma s)`` (with the score
        ``s``: Tweedie's ``E[a x | u] = u + Sigma grad log q_t(u)``) and its variance ``V``."""
        a, sigma = self.moments(torch.tensor(t, dtype=D64))
        si_a = torch.linalg.solve(sigma, a)                       # Sigma^-1 a  [n, p]
        v = torch.linalg.inv(a.T @ si_a)
        target = u.to(D64) if score is None else u.to(D64) + sigma @ score.to(D64)
        return self.unrows(v @ si_a.T @ target).to(u.dtype), v

    def __repr__(self) -> str:
        return f"LinearDiffusion({self.name}, n={self.n})"


def score_from_eps(process: LinearDiffusion, eps_hat: Tensor, t: Tensor) -> Tensor:
    """The score ``-L_t^{-T} eps_hat`` of a noise prediction (``Sigma_t = L_t L_t^T``)."""
    lt = torch.linalg.cholesky(process.moments(t)[1])
    return -torch.linalg.solve_triangular(lt.transpose(-1, -2), eps_hat.to(D64),
                                          upper=True).to(eps_hat.dtype)


def elbo_terms(process: LinearDiffusion, eps_model: Callable[[Tensor, Tensor], Tensor],
               x: Tensor, t: Tensor, eps: Tensor) -> dict[str, Tensor]:
    """Per-point terms of the negative ELBO (nats, module docstring): ``diffusion`` (a
    one-sample estimate at ``t [B]``, ``eps [B, n, m]``, times ``1 - t_min``), ``prior``
    (``KL(q(u_1 | x) || N(0, I))``) and ``reconstruction`` (``E[-log p(x | u_eps)]``).
    ``eps_model(u, t)`` predicts ``eps`` (the score is ``-L_t^{-T} eps_hat``)."""
    if eps.shape != process.state_shape(x):
        raise ValueError(f"eps must have the state's shape {process.state_shape(x)}, got "
                         f"{tuple(eps.shape)}")
    m = eps.shape[2]
    u = process.sample(x, t, eps)
    _, sigma = process.moments(t)
    lt = torch.linalg.cholesky(sigma)
    # |G^T (s - grad log q(u|x))|^2 = (e_hat - e)^T W (e_hat - e), W = L^-1 (2 beta D) L^-T
    gg = 2 * process.beta(t.to(D64))[:, None, None] * process.D()
    li = torch.linalg.solve_triangular(lt, torch.eye(process.n, dtype=D64).expand_as(lt),
                                       upper=False)
    w = li @ gg @ li.transpose(-1, -2)
    r = (eps_model(u, t) - eps).to(D64)
    diffusion = 0.5 * torch.einsum("bim,bij,bjm->b", r, w, r) * (1 - process.t_min)
    one = torch.ones(1, dtype=D64)
    a1, s1 = (v[0] for v in process.moments(one))
    mean1 = a1 @ process.rows(x).to(D64)
    prior = 0.5 * ((mean1**2).sum((1, 2)) + m * (torch.trace(s1) - process.n - torch.logdet(s1)))
    _, v = process.decode(u[:1], process.t_min)
    recon = 0.5 * m * (v.shape[0] + torch.logdet(2 * math.pi * v))
    return {"diffusion": diffusion, "prior": prior, "reconstruction": recon.expand_as(prior)}


def _grid(process: LinearDiffusion, steps: int) -> list[float]:
    """``t_i = t_min + (1 - t_min) (i / N)^2`` from 1 down to ``t_min`` (dense near the data)."""
    i = torch.linspace(1.0, 0.0, steps + 1, dtype=D64)
    return (process.t_min + (process.t_max - process.t_min) * i**2).tolist()


def sample_linear(process: LinearDiffusion, score: Score, noise: Tensor, steps: int = 100, *,
                  method: str = "euler_maruyama", generator: Generators = None) -> Tensor:
    """Generate data from ``u_1 = noise [B, n, m]`` (``N(0, I)``, or any draw from the prior):
    Euler-Maruyama on the reverse SDE (``method="euler_maruyama"``) or Heun on the
    probability-flow ODE (``"heun"``) down to ``t_min`` on a grid quadratic in time, then the
    decoder mean with Tweedie's correction (:meth:`LinearDiffusion.decode`). ``score(u, t)``
    returns ``grad log q_t(u)`` (for an eps-network: :func:`score_from_eps`)."""
    positive_int("steps", steps)
    if method not in ("euler_maruyama", "heun"):
        raise ValueError(f"unknown method {method!r}; expected 'euler_maruyama' or 'heun'")
    if noise.ndim != 3 or noise.shape[1] != process.n:
        raise ValueError(f"noise must be [batch, {process.n}, m] for {process!r}, got "
                         f"{tuple(noise.shape)}")
    with torch.no_grad():
        m_mat, d_mat = (process.Q() + process.D()).to(noise.dtype), process.D().to(noise.dtype)
        chol_d = torch.linalg.cholesky(d_mat + 1e-12 * torch.eye(process.n, dtype=noise.dtype))

        def call(u, t):
            return score(u, torch.full((u.shape[0],), t, dtype=u.dtype))

        def ode(u, t):  # du/dt = -beta (M u + D s)
            return -float(process.beta(torch.tensor(t))) * (m_mat @ u + d_mat @ call(u, t))

        ts, u = _grid(process, steps), noise
        for t, s in zip(ts[:-1], ts[1:]):
            h, b = t - s, float(process.beta(torch.tensor(t)))
            if method == "heun":
                k1 = ode(u, t)
                pred = u - h * k1                                # Euler predictor
                u = u - 0.5 * h * (k1 + ode(pred, s))            # trapezoidal corrector
            else:  # reverse SDE: u <- u + h beta (M u + 2 D s) + sqrt(2 beta h) chol(D) z
                u = u + h * b * (m_mat @ u + 2 * d_mat @ call(u, t))
                u = u + math.sqrt(2 * b * h) * chol_d @ randn_like(u, generator)
        return process.decode(u, process.t_min, call(u, process.t_min))[0]


class GaussianLinearReference:
    """Exact marginals and score of a :class:`LinearDiffusion` for Gaussian data
    ``x ~ N(mean, cov)``: with ``K = a_t (x) I_m`` on the row-major flattened state,
    ``u_t ~ N(K mean, K cov K^T + Sigma_t (x) I_m)``."""

    def __init__(self, process: LinearDiffusion, mean, cov):
        self.process = process
        self.mean = torch.as_tensor(mean, dtype=D64).flatten()
        self.cov = torch.as_tensor(cov, dtype=D64)
        self.m = 1 if process.spatial else self.mean.numel()

    def law(self, t: float) -> tuple[Tensor, Tensor]:
        """``(mean [n m], cov [n m, n m])`` of the flattened ``u_t``."""
        with torch.no_grad():
            a, sigma = self.process.moments(torch.tensor(t, dtype=D64))
        k = torch.kron(a, torch.eye(self.m, dtype=D64))
        return k @ self.mean, k @ self.cov @ k.T + torch.kron(sigma, torch.eye(self.m, dtype=D64))

    def score(self, u: Tensor, t: Tensor | float) -> Tensor:
        tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        mean, cov = self.law(tt)
        flat = u.reshape(u.shape[0], -1).to(D64)
        return (-torch.linalg.solve(cov, (flat - mean).T).T).reshape(u.shape).to(u.dtype)

    def sample(self, n: int, t: float, generator: Generators = None) -> Tensor:
        """``n`` draws of ``u_t [n, rows, m]`` from the exact marginal."""
        mean, cov = self.law(t)
        z = torch.randn(n, mean.numel(), generator=generator, dtype=D64)
        return (mean + z @ torch.linalg.cholesky(cov).T).reshape(n, self.process.n, self.m)

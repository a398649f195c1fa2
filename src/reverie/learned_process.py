"""Gaussian forward processes with a LEARNED transform and schedule, their ELBO and sampler.

One family covers four papers' forward processes:

    q(z_t | x) = N(z_t; mu(x, t), diag sigma(t)^2),    mu(x, t) = alpha(t) * F(x, t)

* Neural Flow Diffusion Models (NFDM, Bartosh et al. 2024) and Neural Diffusion Models (NDM,
  Bartosh et al. 2024): a learned transform ``F_phi(x, t)`` (:class:`ResidualTransform`,
  ``F(x, 0) = x``), Gaussian case of NFDM's ``z_t = F_phi(eps, t, x)``;
* DiffEnc (Nielsen et al. 2024): a learned mean ``x + w(t) e_phi(x, t)``: the same
  :class:`ResidualTransform` with DiffEnc's weight ``w(t)`` (``weight="t"``; DiffEnc's own is
  ``w(t) = sigmoid(lambda(t))``-shaped, any ``w(0) = 0`` works here);
* MuLAN (Sahoo et al. 2024): a per-dimension learned noise schedule (:class:`PerDimSchedule`,
  a learned monotone time warp per dimension of a base VP schedule; MuLAN's schedules are
  also conditioned on the input, which this one is not) and :class:`PolynomialSchedule`, MuLAN's
  context-conditioned polynomial schedule (Sec. 3) given a context vector ``c`` per point;
  :class:`AuxiliaryLatentProcess` infers that context from the input, MuLAN's auxiliary latent
  ``z_aux ~ q(z_aux | x)`` (:class:`GaussianEncoder`, prior ``N(0, I)``), with the ELBO
  :func:`auxiliary_elbo_terms` (the diffusion bound given ``z_aux`` plus ``KL(q || p)``) and the
  sampler :func:`sample_auxiliary` (``z_aux`` from the prior, then the reverse process).

The conditional ODE of the process is ``f(z, t, x) = d mu/dt + (d sigma/dt / sigma)(z - mu)``
(NFDM eq. 6, the time derivatives by forward-mode autograd, :func:`torch.func.jvp`); with the
diffusion ``g(t)^2 = -sigma^2 d lambda/dt`` (``lambda = log alpha^2 / sigma^2`` per dimension,
VP's own ``g``) the reverse-time drift is ``f_B(z, t, x) = f + g^2 / 2 * (z - mu) / sigma^2``
(NFDM eq. 8). The generative model plugs a prediction ``x_hat(z, t)`` in: ``f_B(z, t, x_hat)``.
NFDM's continuous-time ELBO (eq. 11-12) is

    -log p(x) <= E_t,z [ |f_B(z, t, x) - f_B(z, t, x_hat)|^2 / (2 g^2) ] (1 - t_min)
                 + KL(q(z_1 | x) || N(0, I)) + E[-log N(x; z_0 / alpha_0, sigma_0^2 / alpha_0^2)]

(:func:`elbo_terms`); with ``F = identity`` and a fixed schedule it is VDM's continuous ELBO
(Kingma et al. 2021, eq. 17: the diffusion term is ``-1/2 dSNR/dt |x - x_hat|^2``).
:func:`sample_learned` integrates the reverse SDE (or the ODE ``dz = f(z, t, x_hat) dt``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie.process import GaussianProcess, VPLinear

__all__ = ["AuxiliaryLatentProcess", "GaussianEncoder", "LatentConditioned", "LearnedProcess",
           "PerDimSchedule", "PolynomialSchedule", "ResidualTransform", "auxiliary_elbo_terms",
           "elbo_terms", "sample_auxiliary", "sample_learned"]


class PerDimSchedule(nn.Module):
    """MuLAN-style per-dimension schedule: ``lambda_d(t) = lambda_base(t^(exp a_d))`` -- a
    learned monotone warp of time per dimension (``a = 0``: the base schedule); the end points
    ``t = 0, 1`` are those of the base, so the prior is unchanged."""

    def __init__(self, dim: int, base: GaussianProcess | None = None, learn: bool = True):
        super().__init__()
        self.base = base or VPLinear()
        self.a = nn.Parameter(torch.zeros(dim), requires_grad=learn)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda [B, D]`` at times ``t [B]``."""
        warped = t[:, None].clamp(min=1e-12) ** torch.exp(self.a)
        return self.base.log_snr(warped.to(torch.float64)).to(t.dtype)


class PolynomialSchedule(nn.Module):
    """MuLAN's input-conditioned polynomial schedule (Sahoo et al. 2024, Sec. 3):
    ``lambda_d(t, c) = lambda_base(s_d(t, c))`` with the warp ``s = f(t) / f(1)``,
    ``f(t) = int_0^t (a u^2 + b u + k)^2 du`` per dimension -- a non-negative derivative, so
    monotone in ``t`` for every context, ``s(0) = 0``, ``s(1) = 1`` (the base's end points).
    The coefficients ``(a, b, k) [B, D, 3]`` are ``bias + linear(c)``; ``linear`` starts at zero
    and ``bias`` at ``(0, 0, 1)``: the identity warp, the base schedule for every ``c``.
    Bind a batch of contexts ``c [B, C]`` with :meth:`given` and pass that to
    :class:`LearnedProcess`."""

    def __init__(self, dim: int, context_dim: int, base: GaussianProcess | None = None):
        super().__init__()
        self.base, self.dim = base or VPLinear(), dim
        self.linear = nn.Linear(context_dim, 3 * dim, bias=False)
        nn.init.zeros_(self.linear.weight)
        self.bias = nn.Parameter(torch.tensor([0.0, 0.0, 1.0]).repeat(dim, 1))

    def coefficients(self, c: Tensor) -> Tensor:
        """``(a, b, k) [B, D, 3]`` for contexts ``c [B, C]``."""
        if c.ndim != 2 or c.shape[1] != self.linear.in_features:
            raise ValueError(f"context must be [B, {self.linear.in_features}], got "
                             f"{list(c.shape)}")
        return self.bias + self.linear(c).view(len(c), self.dim, 3)

    def warp(self, t: Tensor, c: Tensor) -> Tensor:
        """``s(t, c) [B, D]`` in ``[0, 1]``, monotone in ``t``."""
        a, b, k = self.coefficients(c.to(t.dtype)).unbind(-1)

        def f(u):                                          # int_0^u (a v^2 + b v + k)^2 dv
            return (a**2 * u**5 / 5 + a * b * u**4 / 2 + (b**2 + 2 * a * k) * u**3 / 3
                    + b * k * u**2 + k**2 * u + 1e-6 * u)  # + 1e-6 u: never 0 / 0
        return f(t[:, None]) / f(torch.ones_like(t)[:, None])

    def log_snr(self, t: Tensor, c: Tensor) -> Tensor:
        """``lambda [B, D]`` at times ``t [B]`` and contexts ``c [B, C]``."""
        return self.base.log_snr(self.warp(t, c).to(torch.float64)).to(t.dtype)

    def given(self, c: Tensor) -> _GivenContext:
        """This schedule with the contexts ``c [B, C]`` bound: ``.log_snr(t)`` as
        :class:`PerDimSchedule`'s."""
        return _GivenContext(self, c)


class _GivenContext(nn.Module):
    def __init__(self, schedule: PolynomialSchedule, c: Tensor):
        super().__init__()
        self.schedule, self.c = schedule, c

    def log_snr(self, t: Tensor) -> Tensor:
        return self.schedule.log_snr(t, self.c)


class ResidualTransform(nn.Module):
    """``F(x, t) = x + w(t) net(x, t)`` with ``w(0) = 0``: NDM / NFDM's learned transform, or
    DiffEnc's learned mean (``net`` is DiffEnc's encoder ``e_phi``)."""

    def __init__(self, net: nn.Module, weight: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.net, self.weight = net, weight or (lambda t: t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x + self.weight(t)[:, None] * self.net(x, t)


class LearnedProcess(nn.Module):
    """``z_t = alpha(t) F(x, t) + sigma(t) eps`` (VP: ``alpha^2 = sigmoid(lambda)``,
    ``sigma^2 = sigmoid(-lambda)`` per dimension); ``transform=None`` is ``F = identity``.
    ``t`` runs over ``[t_min, 1]``."""

    def __init__(self, schedule: PerDimSchedule, transform: nn.Module | None = None,
                 t_min: float = 1e-3):
        super().__init__()
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
        self.schedule, self.transform, self.t_min = schedule, transform, float(t_min)

    def moments(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, both ``[B, D]``, of ``q(z_t | x)``."""
        lam = self.schedule.log_snr(t)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        fx = x if self.transform is None else self.transform(x, t)
        return alpha * fx, sigma.expand_as(fx)

    def sample(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        mu, sigma = self.moments(x, t)
        return mu + sigma * eps

    def drifts(self, z: Tensor, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, f_B, g^2)`` at ``(z, t)`` given ``x``: the conditional ODE drift, the reverse
        SDE drift and the squared diffusion (NFDM eq. 6, 8)."""
        (mu, sigma), (dmu, dsigma) = torch.func.jvp(
            lambda s: self.moments(x, s), (t,), (torch.ones_like(t),))
        dlam = torch.func.jvp(self.schedule.log_snr, (t,), (torch.ones_like(t),))[1]
        g2 = -sigma**2 * dlam                              # = d sigma^2/dt - 2 a'/a sigma^2
        f = dmu + dsigma / sigma * (z - mu)                # d z_t/dt at fixed eps
        f_b = f + 0.5 * g2 * (z - mu) / sigma**2           # f - g^2/2 * score of q(z_t | x)
        return f, f_b, g2.expand_as(f)


def _prediction(model: Callable[[Tensor, Tensor], Tensor], proc: LearnedProcess, z: Tensor,
                t: Tensor) -> Tensor:
    """``x_hat = (z - sigma eps_hat) / alpha`` from an eps-network (the base-schedule
    parametrisation; the network absorbs ``F``)."""
    lam = proc.schedule.log_snr(t)
    return (z - torch.sigmoid(-lam).sqrt() * model(z, t)) / torch.sigmoid(lam).sqrt()


def elbo_terms(proc: LearnedProcess, denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor,
               t: Tensor, eps: Tensor, prediction: str = "eps") -> dict[str, Tensor]:
    """Per-point terms of NFDM's negative ELBO (nats): ``diffusion`` (a one-sample estimate
    at ``t [B]``, ``eps [B, D]``, times ``1 - t_min``), ``prior`` (``KL(q(z_1|x) || N(0, I))``)
    and ``reconstruction`` (the decoder ``N(x; z_0 / alpha_0, sigma_0^2 / alpha_0^2)``, exact
    Gaussian expectation). ``denoiser(z, t)`` predicts ``eps`` (``prediction="eps"``) or ``x``."""
    if prediction not in ("eps", "x"):
        raise ValueError(f"prediction must be 'eps' or 'x', got {prediction!r}")
    z = proc.sample(x, t, eps)
    x_hat = _prediction(denoiser, proc, z, t) if prediction == "eps" else denoiser(z, t)
    _, fb, g2 = proc.drifts(z, t, x)
    _, fb_hat, _ = proc.drifts(z, t, x_hat)
    diffusion = ((fb - fb_hat) ** 2 / (2 * g2)).sum(-1) * (1 - proc.t_min)
    one = torch.ones_like(t)
    mu1, s1 = proc.moments(x, one)
    prior = 0.5 * (mu1**2 + s1**2 - 1 - 2 * s1.log()).sum(-1)
    mu0, s0 = proc.moments(x, one * proc.t_min)
    a0 = torch.sigmoid(proc.schedule.log_snr(one * proc.t_min)).sqrt()
    v = (s0 / a0) ** 2                                      # decoder variance
    recon = (0.5 * ((mu0 / a0 - x) ** 2 / v + 1 + (2 * math.pi * v).log())).sum(-1)
    return {"diffusion": diffusion, "prior": prior, "reconstruction": recon}


def sample_learned(proc: LearnedProcess, denoiser: Callable[[Tensor, Tensor], Tensor],
                   noise: Tensor, steps: int, *, sde: bool = True, prediction: str = "eps",
                   generator: torch.Generator | None = None) -> Tensor:
    """Euler(-Maruyama) on ``t: 1 -> t_min`` (uniform) of NFDM's reverse SDE
    ``dz = f_B(z, t, x_hat) dt + g dW`` (``sde=True``) or ODE ``dz = f(z, t, x_hat) dt``,
    from ``z_1 = noise`` (``N(0, I)``); returns ``x_hat(z_{t_min}, t_min)``."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    ts = torch.linspace(1.0, proc.t_min, steps + 1, dtype=noise.dtype)
    z = noise

    def x_hat(z, t):
        return _prediction(denoiser, proc, z, t) if prediction == "eps" else denoiser(z, t)

    for i in range(steps):
        t = ts[i].repeat(len(z))
        dt = float(ts[i] - ts[i + 1])
        with torch.no_grad():
            xh = x_hat(z, t)
        f, fb, g2 = proc.drifts(z, t, xh)
        if sde:
            xi = torch.randn(z.shape, generator=generator, dtype=z.dtype)
            z = z - fb * dt + (g2 * dt).sqrt() * xi        # backward Euler-Maruyama step
        else:
            z = z - f * dt
        z = z.detach()
    with torch.no_grad():
        return x_hat(z, ts[-1].repeat(len(z)))


class GaussianEncoder(nn.Module):
    """MuLAN's encoder ``q(z_aux | x) = N(m(x), diag exp(2 r(x)))`` over ``latent_dim``
    auxiliary dimensions; ``net: [B, D] -> [B, 2 latent_dim]`` gives ``(m, r)`` (default: a
    one-hidden-layer SiLU MLP). The prior is ``p(z_aux) = N(0, I)``."""

    def __init__(self, dim: int, latent_dim: int, hidden: int = 64, net: nn.Module | None = None):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = net or nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(),
                                        nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)``, both ``[B, latent_dim]``."""
        out = self.net(x)
        if out.ndim != 2 or out.shape[1] != 2 * self.latent_dim:
            raise ValueError(f"encoder net must return [B, {2 * self.latent_dim}], got "
                             f"{list(out.shape)}")
        return out.chunk(2, dim=-1)

    def kl(self, x: Tensor) -> Tensor:
        """``KL(q(z_aux | x) || N(0, I)) [B]`` in closed form (nats)."""
        return _kl_standard_normal(*self(x))


def _kl_standard_normal(m: Tensor, log_std: Tensor) -> Tensor:
    """``KL(N(m, diag exp(2 log_std)) || N(0, I)) [B]``."""
    return 0.5 * (m**2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)


class LatentConditioned(nn.Module):
    """A denoiser that also sees ``z_aux`` (MuLAN's ``x_theta(z_t, z_aux, t)``):
    ``net(concat(z_t, z_aux), t)[:, :D]`` for a ``(x, t)`` network of input width
    ``D + latent_dim`` (e.g. :class:`reverie.nets.MLP`)."""

    def __init__(self, net: nn.Module, dim: int):
        super().__init__()
        self.net, self.dim = net, dim

    def forward(self, z: Tensor, t: Tensor, z_aux: Tensor) -> Tensor:
        return self.net(torch.cat([z, z_aux.to(z.dtype)], dim=-1), t)[:, :self.dim]


class AuxiliaryLatentProcess(nn.Module):
    """MuLAN's adaptive forward process (Sahoo et al. 2024, Sec. 3): an auxiliary latent
    ``z_aux ~ q(z_aux | x)`` (``encoder``, a :class:`GaussianEncoder`) is the context of the
    ``schedule`` (a :class:`PolynomialSchedule` with ``context_dim = latent_dim``), so the noise
    schedule adapts to each input; given ``z_aux`` the forward process is
    ``LearnedProcess(schedule.given(z_aux), transform, t_min)`` (:meth:`given`)."""

    def __init__(self, encoder: GaussianEncoder, schedule: PolynomialSchedule,
                 transform: nn.Module | None = None, t_min: float = 1e-3):
        super().__init__()
        if schedule.linear.in_features != encoder.latent_dim:
            raise ValueError(f"schedule context_dim must equal the encoder's latent_dim "
                             f"{encoder.latent_dim}, got {schedule.linear.in_features}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
        self.encoder, self.schedule, self.transform = encoder, schedule, transform
        self.t_min = float(t_min)

    def given(self, z_aux: Tensor) -> LearnedProcess:
        """The forward process given the auxiliary latents ``z_aux [B, latent_dim]``."""
        return LearnedProcess(self.schedule.given(z_aux), self.transform, self.t_min)


def auxiliary_elbo_terms(proc: AuxiliaryLatentProcess,
                         denoiser: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor,
                         t: Tensor, eps: Tensor, eps_aux: Tensor,
                         prediction: str = "eps") -> dict[str, Tensor]:
    """Per-point terms of MuLAN's auxiliary-variable negative ELBO (Sahoo et al. 2024, Sec. 3):
    ``-log p(x) <= E_{q(z_aux|x)} [-ELBO(x | z_aux)] + KL(q(z_aux | x) || N(0, I))``.
    One reparametrised draw ``z_aux = m(x) + exp(r(x)) eps_aux`` (``eps_aux [B, latent_dim]``;
    zeros: the encoder's mean, a point mass), then :func:`elbo_terms` of the process given
    ``z_aux`` with the denoiser ``denoiser(z_t, t, z_aux)``; ``latent`` is the closed-form KL."""
    m, r = proc.encoder(x)
    z_aux = m + r.exp() * eps_aux                          # z_aux ~ q(z_aux | x)
    terms = elbo_terms(proc.given(z_aux), lambda z, s: denoiser(z, s, z_aux), x, t, eps,
                       prediction)
    terms["latent"] = _kl_standard_normal(m, r)            # KL(q(z_aux | x) || p(z_aux))
    return terms


def sample_auxiliary(proc: AuxiliaryLatentProcess,
                     denoiser: Callable[[Tensor, Tensor, Tensor], Tensor], noise: Tensor,
                     steps: int, *, z_aux: Tensor | None = None, sde: bool = True,
                     prediction: str = "eps", generator: torch.Generator | None = None) -> Tensor:
    """MuLAN's sampler: ``z_aux ~ p(z_aux) = N(0, I)`` (or the given ``z_aux``), then
    :func:`sample_learned` with the process and the denoiser given ``z_aux``."""
    if z_aux is None:
        z_aux = torch.randn(len(noise), proc.encoder.latent_dim, generator=generator,
                            dtype=noise.dtype)
    return sample_learned(proc.given(z_aux), lambda z, s: denoiser(z, s, z_aux), noise, steps,
                          sde=sde, prediction=prediction, generator=generator)

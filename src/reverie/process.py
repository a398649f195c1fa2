"""Gaussian noising processes: ``x_t = alpha(t) x0 + sigma(t) eps``.

A process is a pair of functions of time (DESIGN.md, idea 1). Time always grows with noise;
each process names three times:

* ``t_max`` -- the noisiest time, where sampling starts;
* ``t_min`` -- the smallest time at which a model is evaluated;
* ``t_clean`` -- the clean end, where ``sigma == 0`` and ``alpha == 1``. Every time grid ends
  here, and samplers take their last step onto it explicitly (no residual noise).

Besides ``alpha`` and ``sigma`` every process gives the log signal-to-noise ratio
``log_snr(t) = log(alpha^2 / sigma^2)`` and its inverse ``t_from_log_snr``, the derivatives
``d_alpha``/``d_sigma`` (used to turn flow velocities into data predictions and to write the
probability-flow ODE and reverse SDE), and ``sigma_ve(t) = sigma / alpha``: the noise level of
the equivalent variance-exploding process ``x_t / alpha(t) = x0 + sigma_ve(t) eps`` in which
EDM / k-diffusion samplers are written.

All computations happen in float64; a Python float or a tensor of any dtype may be passed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._tensor import as64, bcast

__all__ = [
    "GaussianProcess",
    "VP",
    "VPLinear",
    "VPCosine",
    "VE",
    "EDM",
    "RectifiedFlow",
    "Interpolant",
    "Truncated",
    "PROCESSES",
]

TensorLike = float | Tensor



class GaussianProcess(ABC):
    """Base class: subclasses define ``alpha``, ``sigma`` and (ideally) the closed-form inverse.

    Derivatives default to autograd and the inverse of the log-SNR to bisection, so a new
    process only has to give ``alpha`` and ``sigma``.
    """

    t_min: float
    t_max: float
    t_clean: float
    #: the grid ``reverie.grids.make_grid(..., name="auto")`` picks for first-order samplers
    default_grid: str = "logsnr"

    # ---- to be defined by subclasses -------------------------------------------------------
    @abstractmethod
    def alpha(self, t: TensorLike) -> Tensor:
        """Signal scale ``alpha(t)`` (float64)."""

    @abstractmethod
    def sigma(self, t: TensorLike) -> Tensor:
        """Noise standard deviation ``sigma(t)`` (float64)."""

    # ---- derived quantities ----------------------------------------------------------------
    def log_snr(self, t: TensorLike) -> Tensor:
        """``log(alpha^2 / sigma^2)``; +inf at the clean end, -inf where alpha vanishes."""
        t = as64(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        """Inverse of :meth:`log_snr` (bisection on ``[t_clean, t_max]`` unless overridden)."""
        target = as64(log_snr)
        lo = torch.full_like(target, float(self.t_clean))
        hi = torch.full_like(target, float(self.t_max))
        for _ in range(100):  # log-SNR decreases in t
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def sigma_ve(self, t: TensorLike) -> Tensor:
        """Noise level of the equivalent VE process: ``sigma / alpha = exp(-log_snr / 2)``."""
        t = as64(t)
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ve(self, sigma_ve: TensorLike) -> Tensor:
        """Inverse of :meth:`sigma_ve`."""
        return self.t_from_log_snr(-2.0 * torch.log(as64(sigma_ve)))

    def d_alpha(self, t: TensorLike) -> Tensor:
        """``d alpha / dt`` (autograd unless overridden)."""
        return _derivative(self.alpha, t)

    def d_sigma(self, t: TensorLike) -> Tensor:
        """``d sigma / dt`` (autograd unless overridden)."""
        return _derivative(self.sigma, t)

    def drift_diffusion(self, t: TensorLike) -> tuple[Tensor, Tensor]:
        """``(f(t), g(t)^2)`` of the forward SDE ``dx = f x dt + g dW`` with these marginals.

        ``f = d log alpha / dt`` and ``g^2 = d sigma^2 / dt - 2 f sigma^2``.
        """
        t = as64(t)
        a, s = self.alpha(t), self.sigma(t)
        f = self.d_alpha(t) / a
        g2 = 2.0 * s * self.d_sigma(t) - 2.0 * f * s**2
        return f, g2

    def add_noise(self, x0: Tensor, eps: Tensor, t: TensorLike) -> Tensor:
        """``alpha(t) x0 + sigma(t) eps`` with ``t`` a scalar or a ``[batch]`` tensor."""
        a = bcast(self.alpha(t), x0)
        s = bcast(self.sigma(t), x0)
        return (a * x0.to(torch.float64) + s * eps.to(torch.float64)).to(x0.dtype)

    def check_time(self, t: TensorLike, name: str = "t") -> None:
        """Raise ``ValueError`` if ``t`` lies outside ``[t_clean, t_max]``."""
        t = as64(t)
        lo, hi = min(self.t_clean, self.t_max), max(self.t_clean, self.t_max)
        if bool(((t < lo - 1e-9) | (t > hi + 1e-9)).any()):
            raise ValueError(
                f"{name} must lie in [{lo}, {hi}] for {self!r}; got values in "
                f"[{float(t.min())}, {float(t.max())}]"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"



def _derivative(fn: Callable[[Tensor], Tensor], t: TensorLike) -> Tensor:
    t = as64(t).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(t)
        (grad,) = torch.autograd.grad(y.sum(), t)
    return grad.detach()


# ---------------------------------------------------------------------------------------------
# Variance preserving
# ---------------------------------------------------------------------------------------------


class VP(GaussianProcess):
    """Variance-preserving process from a discrete table of betas (DDPM, diffusers).

    ``t`` is the training-step index, ``0 .. T-1`` as in diffusers: ``alpha(k)^2 =
    prod_{j<=k} (1 - beta_j)``. Between integers the VE noise level ``sigma/alpha`` is
    interpolated linearly in its logarithm (k-diffusion's ``DiscreteSchedule``). The clean end
    is ``t = -1`` (diffusers' ``set_alpha_to_one``: alpha = 1), reached from ``t = 0`` linearly
    in ``sigma/alpha``.
    """

    default_grid = "trailing"

    def __init__(self, alphas_cumprod: Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must hold at least two values strictly in (0, 1)")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self._log_sve = 0.5 * (torch.log1p(-ac) - torch.log(ac))  # log(sigma/alpha), increasing
        self.num_train_timesteps = ac.numel()
        self.t_min = 0.0
        self.t_max = float(ac.numel() - 1)
        self.t_clean = -1.0

    @classmethod
    def from_betas(cls, betas: Tensor) -> VP:
        """From a beta table (``alphas_cumprod = cumprod(1 - betas)``)."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie strictly in (0, 1)")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> VP:
        """DDPM's linear betas (diffusers ``beta_schedule="linear"``)."""
        return cls.from_betas(
            torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        )

    @classmethod
    def scaled_linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> VP:
        """Stable Diffusion's betas, linear in sqrt(beta) (``beta_schedule="scaled_linear"``)."""
        b = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64)
        return cls.from_betas(b**2)

    @classmethod
    def squaredcos_cap_v2(cls, num_train_timesteps: int = 1000, max_beta: float = 0.999) -> VP:
        """Improved-DDPM cosine betas (``beta_schedule="squaredcos_cap_v2"``)."""

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]
        return cls.from_betas(torch.tensor(betas, dtype=torch.float64))

    def _log_sigma_ve(self, t: Tensor) -> Tensor:
        table = self._log_sve
        tc = t.clamp(0.0, self.t_max)
        lo = tc.floor().long().clamp(max=table.numel() - 2)
        w = tc - lo
        return (1 - w) * table[lo] + w * table[lo + 1]

    def sigma_ve(self, t: TensorLike) -> Tensor:
        t = as64(t)
        inside = torch.exp(self._log_sigma_ve(t))
        below = (t + 1.0).clamp(min=0.0) * torch.exp(self._log_sve[0])
        return torch.where(t >= 0, inside, below)

    def alpha(self, t: TensorLike) -> Tensor:
        return torch.rsqrt(1.0 + self.sigma_ve(t) ** 2)

    def sigma(self, t: TensorLike) -> Tensor:
        s = self.sigma_ve(t)
        return s * torch.rsqrt(1.0 + s**2)

    def log_snr(self, t: TensorLike) -> Tensor:
        return -2.0 * torch.log(self.sigma_ve(t))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        log_s = -0.5 * as64(log_snr)
        table = self._log_sve
        idx = torch.searchsorted(table, log_s.reshape(-1).contiguous()).reshape(log_s.shape)
        lo = (idx - 1).clamp(0, table.numel() - 2)
        w = (log_s - table[lo]) / (table[lo + 1] - table[lo])
        inside = (lo.to(torch.float64) + w).clamp(0.0, self.t_max)
        below = torch.exp(log_s - table[0]) - 1.0  # linear in sigma_ve below t = 0
        return torch.where(log_s >= table[0], inside, below)

    def __repr__(self) -> str:
        return f"VP(num_train_timesteps={self.num_train_timesteps})"


class VPLinear(GaussianProcess):
    """Continuous-time VP with linear beta(t) (Song et al. 2021, eq. 11 / 33).

    ``log alpha(t) = -beta_min t / 2 - (beta_max - beta_min) t^2 / 4``, ``t`` in ``[eps, 1]``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max, self.t_clean = float(t_min), 1.0, 0.0

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta_min * t - 0.25 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: TensorLike) -> Tensor:
        return torch.exp(self._log_alpha(as64(t)))

    def sigma(self, t: TensorLike) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(as64(t))))

    def log_snr(self, t: TensorLike) -> Tensor:
        la2 = 2.0 * self._log_alpha(as64(t))
        return la2 - torch.log(-torch.expm1(la2))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        # log alpha^2 = -softplus(-lambda); solve d/2 t^2 + b t + log alpha^2 = 0 for t >= 0.
        la2 = -torch.nn.functional.softplus(-as64(log_snr))
        d, b = self.beta_max - self.beta_min, self.beta_min
        return 2.0 * (-la2) / (b + torch.sqrt(b**2 - 2.0 * d * la2))

    def d_alpha(self, t: TensorLike) -> Tensor:
        t = as64(t)
        return self.alpha(t) * (-0.5 * self.beta_min - 0.5 * (self.beta_max - self.beta_min) * t)

    def d_sigma(self, t: TensorLike) -> Tensor:
        # sigma^2 = 1 - alpha^2  =>  sigma' = -alpha alpha' / sigma (closed form, not autograd)
        t = as64(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def __repr__(self) -> str:
        return f"VPLinear(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VPCosine(GaussianProcess):
    """Continuous-time cosine VP (Nichol & Dhariwal 2021): ``alpha^2 = f(t)/f(0)``,
    ``f(t) = cos^2((t + s)/(1 + s) * pi/2)``.

    ``alpha(1) = 0``, so by default sampling starts at ``t_max = 0.9946`` (DPM-Solver's choice),
    where the log-SNR is finite.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = float(s)
        self.t_min, self.t_max, self.t_clean = float(t_min), float(t_max), 0.0
        self._log_f0 = 2.0 * math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _angle(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def alpha(self, t: TensorLike) -> Tensor:
        return torch.cos(self._angle(as64(t))) / math.exp(0.5 * self._log_f0)

    def sigma(self, t: TensorLike) -> Tensor:
        return torch.sqrt((1.0 - self.alpha(t) ** 2).clamp(min=0.0))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        a2 = torch.sigmoid(as64(log_snr))
        ang = torch.arccos(torch.sqrt(a2 * math.exp(self._log_f0)).clamp(max=1.0))
        return ang * (2 / math.pi) * (1 + self.s) - self.s

    def __repr__(self) -> str:
        return f"VPCosine(s={self.s})"


# ---------------------------------------------------------------------------------------------
# Variance exploding
# ---------------------------------------------------------------------------------------------


class VE(GaussianProcess):
    """Variance-exploding process with time equal to the noise level: ``alpha = 1``,
    ``sigma = t``, ``t`` in ``[sigma_min, sigma_max]`` (Song et al. 2021 VE / NCSN++ models
    take sigma as their time input)."""

    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max, self.t_clean = float(sigma_min), float(sigma_max), 0.0

    def alpha(self, t: TensorLike) -> Tensor:
        return torch.ones_like(as64(t))

    def sigma(self, t: TensorLike) -> Tensor:
        return as64(t).clone()

    def sigma_ve(self, t: TensorLike) -> Tensor:
        return as64(t).clone()

    def log_snr(self, t: TensorLike) -> Tensor:
        return -2.0 * torch.log(as64(t))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        return torch.exp(-0.5 * as64(log_snr))

    def d_alpha(self, t: TensorLike) -> Tensor:
        return torch.zeros_like(as64(t))

    def d_sigma(self, t: TensorLike) -> Tensor:
        return torch.ones_like(as64(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_min={self.t_min}, sigma_max={self.t_max})"


class EDM(VE):
    """EDM (Karras et al. 2022): ``alpha = 1``, ``sigma = t``, with the paper's defaults
    ``sigma_min = 0.002``, ``sigma_max = 80`` and the data standard deviation ``sigma_data``
    used by its preconditioning (:meth:`precondition`)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        super().__init__(sigma_min, sigma_max)
        self.sigma_data = float(sigma_data)

    def precondition(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """EDM Table 1: ``(c_skip, c_out, c_in, c_noise)`` with
        ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``."""
        sd = self.sigma_data
        sigma = as64(sigma)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / torch.sqrt(sd**2 + sigma**2)
        c_noise = torch.log(sigma) / 4.0
        return c_skip, c_out, c_in, c_noise


# ---------------------------------------------------------------------------------------------
# Flows and general interpolants
# ---------------------------------------------------------------------------------------------


class RectifiedFlow(GaussianProcess):
    """Rectified flow / flow matching with the linear path: ``alpha = 1 - t``, ``sigma = t``
    (diffusers' ``FlowMatchEulerDiscreteScheduler`` convention with ``t`` = its sigma in
    ``[0, 1]``). ``shift`` applies SD3's time shift ``t' = s t / (1 + (s - 1) t)`` to grids
    built by :mod:`reverie.grids` (the process itself is unchanged)."""

    default_grid = "trailing"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0, shift: float = 1.0):
        if not 0 < t_max <= 1:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max}")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.t_min, self.t_max, self.t_clean = float(t_min), float(t_max), 0.0
        self.shift = float(shift)

    def alpha(self, t: TensorLike) -> Tensor:
        return 1.0 - as64(t)

    def sigma(self, t: TensorLike) -> Tensor:
        return as64(t).clone()

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        # alpha/sigma = (1-t)/t = exp(lambda/2)  =>  t = sigmoid(-lambda/2)
        return torch.sigmoid(-0.5 * as64(log_snr))

    def d_alpha(self, t: TensorLike) -> Tensor:
        return -torch.ones_like(as64(t))

    def d_sigma(self, t: TensorLike) -> Tensor:
        return torch.ones_like(as64(t))

    def __repr__(self) -> str:
        return f"RectifiedFlow(shift={self.shift})"


class Interpolant(GaussianProcess):
    """Any Gaussian interpolant from two functions of time (Albergo et al., "Stochastic
    Interpolants"): ``x_t = alpha(t) x0 + sigma(t) eps``.

    ``alpha_fn`` and ``sigma_fn`` take and return float64 tensors and must be written with torch
    operations (their derivatives come from autograd). The log-SNR must decrease in ``t`` and
    ``sigma_fn(t_clean)`` must be 0.
    """

    def __init__(
        self,
        alpha_fn: Callable[[Tensor], Tensor],
        sigma_fn: Callable[[Tensor], Tensor],
        t_min: float,
        t_max: float,
        t_clean: float = 0.0,
        default_grid: str = "logsnr",
    ):
        if not t_clean <= t_min < t_max:
            raise ValueError(f"need t_clean <= t_min < t_max, got {t_clean}, {t_min}, {t_max}")
        self._alpha, self._sigma = alpha_fn, sigma_fn
        self.t_min, self.t_max, self.t_clean = float(t_min), float(t_max), float(t_clean)
        self.default_grid = default_grid
        s0 = float(sigma_fn(torch.tensor(self.t_clean, dtype=torch.float64)))
        if abs(s0) > 1e-12:
            raise ValueError(f"sigma_fn(t_clean) must be 0 at the clean end, got {s0}")
        ts = torch.linspace(self.t_min, self.t_max, 64, dtype=torch.float64)
        lam = self.log_snr(ts)
        if not bool((lam[1:] < lam[:-1]).all()):
            raise ValueError("the log-SNR alpha^2/sigma^2 must decrease with t")

    def alpha(self, t: TensorLike) -> Tensor:
        return self._alpha(as64(t))

    def sigma(self, t: TensorLike) -> Tensor:
        return self._sigma(as64(t))

    def __repr__(self) -> str:
        return f"Interpolant(t in [{self.t_min}, {self.t_max}], t_clean={self.t_clean})"


class Truncated(GaussianProcess):
    """A process stopped early: ``base`` on ``[t_clean, t_max]`` with ``t_max`` below the
    base's own (Franzese et al. 2023, "How Much is Enough? A Study on Diffusion Times in
    Score-based Generative Models").

    The marginals, derivatives and log-SNR are the base's; only the noisiest time changes. At a
    truncated ``t_max`` the forward marginal ``q_T`` is no longer close to ``N(0, sigma_T^2 I)``:
    sampling must start from an auxiliary prior fitted to ``q_T`` and the likelihood must use
    its density (:mod:`reverie.truncation`).
    """

    def __init__(self, base: GaussianProcess, t_max: float):
        if not isinstance(base, GaussianProcess):
            raise TypeError(f"base must be a GaussianProcess, got {type(base).__name__}")
        if isinstance(t_max, bool) or not isinstance(t_max, (int, float)):
            raise TypeError(f"t_max must be a number, got {type(t_max).__name__} {t_max!r}")
        if not base.t_min < t_max <= base.t_max:
            raise ValueError(
                f"the truncation time t_max must lie in ({base.t_min}, {base.t_max}] for "
                f"{base!r}, got {t_max}"
            )
        self.base = base
        self.t_min, self.t_max, self.t_clean = base.t_min, float(t_max), base.t_clean
        self.default_grid = base.default_grid

    def alpha(self, t: TensorLike) -> Tensor:
        return self.base.alpha(t)

    def sigma(self, t: TensorLike) -> Tensor:
        return self.base.sigma(t)

    def log_snr(self, t: TensorLike) -> Tensor:
        return self.base.log_snr(t)

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        return self.base.t_from_log_snr(log_snr)

    def sigma_ve(self, t: TensorLike) -> Tensor:
        return self.base.sigma_ve(t)

    def d_alpha(self, t: TensorLike) -> Tensor:
        return self.base.d_alpha(t)

    def d_sigma(self, t: TensorLike) -> Tensor:
        return self.base.d_sigma(t)

    def __repr__(self) -> str:
        return f"Truncated({self.base!r}, t_max={self.t_max})"


#: Constructors by name (for the command line and configs).
PROCESSES: dict[str, Callable[..., GaussianProcess]] = {
    "vp": VP.linear,
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "flow": RectifiedFlow,
}

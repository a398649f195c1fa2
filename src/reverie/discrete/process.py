"""Discrete noising processes for token sequences and their continuous-time ELBO.

Every position of a sequence ``x0 in {0..V-1}^L`` is corrupted independently. ``alpha(t)`` is
the probability that a token is still clean at time ``t`` (DESIGN.md, idea 1): ``alpha(0) = 1``
(data) and ``alpha(1) = 0`` (pure noise). Time grows with noise, as for the Gaussian processes.

* :class:`MaskedProcess` -- absorbing ("masked") diffusion (Austin et al. 2021, D3PM absorbing;
  Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4): ``q(x_t^i | x0^i) = alpha_t [x_t^i = x0^i] +
  (1 - alpha_t) [x_t^i = mask]``.
* :class:`UniformProcess` -- uniform-noise diffusion (Austin et al. 2021; Schiff et al. 2024,
  UDLM): ``q(x_t^i | x0^i) = alpha_t [x_t^i = x0^i] + (1 - alpha_t) / V``.

Schedules (MD4, Shi et al. 2024, ``MaskingSchedule``) are functions ``t -> alpha(t)``: ``linear``
(``1 - t``), ``cosine`` (``1 - cos(pi/2 (1 - t))``) and ``poly{k}`` (``1 - t^k``).

The continuous-time negative ELBO (:func:`nelbo`) is written once for any such process as the
integral over time of the generalised KL divergence between the true reverse jump rates given
``x0`` and the model's reverse rates (Campbell et al. 2022; Lou et al. 2024):

    -log p(x0) <= int_0^1 E_{x_t ~ q(.|x0)} sum_i sum_{y != x_t^i}
                  [ Rhat_i(y) - R_i(y) + R_i(y) log(R_i(y) / Rhat_i(y)) ] dt,

which for the masked process reduces to the MD4 / MDLM masked-diffusion ELBO,

    -log p(x0) <= int_0^1 alpha'(t) / (1 - alpha(t)) E[ sum_{i masked} log p(x0^i | x_t) ] dt.

With the exact conditionals of the data (e.g. :class:`reverie.reference.MarkovChain`) the bound
is an equality for both processes (the model's path measure then equals the forward one).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from reverie._tensor import as64
from reverie.discrete._sampling import uniform

if TYPE_CHECKING:
    from reverie._random import Generators
    from reverie.discrete.denoiser import TokenDenoiserBase

__all__ = [
    "MaskingSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "PolynomialSchedule",
    "SCHEDULES",
    "make_schedule",
    "DiscreteProcess",
    "MaskedProcess",
    "UniformProcess",
    "nelbo",
]



# ---------------------------------------------------------------------------------------------
# Schedules alpha(t)
# ---------------------------------------------------------------------------------------------


class MaskingSchedule(ABC):
    """``alpha(t)``: probability that a token is still clean at time ``t in [0, 1]``;
    decreasing, ``alpha(0) = 1``, ``alpha(1) = 0``. All values in float64."""

    name: str

    @abstractmethod
    def alpha(self, t: float | Tensor) -> Tensor:
        """``alpha(t)``."""

    @abstractmethod
    def d_alpha(self, t: float | Tensor) -> Tensor:
        """``d alpha / dt`` (<= 0)."""

    @abstractmethod
    def t_from_alpha(self, alpha: float | Tensor) -> Tensor:
        """Inverse of :meth:`alpha`."""

    def weight(self, t: float | Tensor) -> Tensor:
        """The masked-diffusion ELBO weight and reverse unmasking hazard
        ``-alpha'(t) / (1 - alpha(t))`` (MD4, MDLM)."""
        t = as64(t)
        return -self.d_alpha(t) / (1.0 - self.alpha(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(MaskingSchedule):
    """``alpha(t) = 1 - t`` (MDLM's log-linear noise, LLaDA; MD4 "linear")."""

    name = "linear"

    def alpha(self, t: float | Tensor) -> Tensor:
        return 1.0 - as64(t)

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return -torch.ones_like(as64(t))

    def t_from_alpha(self, alpha: float | Tensor) -> Tensor:
        return 1.0 - as64(alpha)


class CosineSchedule(MaskingSchedule):
    """``alpha(t) = 1 - cos(pi/2 (1 - t))`` (MD4 "cosine"; MaskGIT's schedule)."""

    name = "cosine"

    def alpha(self, t: float | Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - as64(t)))

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - as64(t)))

    def t_from_alpha(self, alpha: float | Tensor) -> Tensor:
        c = (1.0 - as64(alpha)).clamp(-1.0, 1.0)
        return 1.0 - torch.arccos(c) / (0.5 * math.pi)


class PolynomialSchedule(MaskingSchedule):
    """``alpha(t) = 1 - t^k`` (MD4 "poly k")."""

    def __init__(self, k: float = 2.0):
        if not (isinstance(k, (int, float)) and k > 0):
            raise ValueError(f"polynomial schedule exponent must be > 0, got {k!r}")
        self.k = float(k)
        self.name = f"poly{k:g}"

    def alpha(self, t: float | Tensor) -> Tensor:
        return 1.0 - as64(t) ** self.k

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return -self.k * as64(t) ** (self.k - 1.0)

    def t_from_alpha(self, alpha: float | Tensor) -> Tensor:
        return (1.0 - as64(alpha)).clamp_min(0.0) ** (1.0 / self.k)

    def __repr__(self) -> str:
        return f"PolynomialSchedule(k={self.k:g})"


#: Schedule names; ``poly{k}`` (e.g. ``poly2``, ``poly0.5``) takes any exponent ``k > 0``.
SCHEDULES = ("linear", "cosine", "poly{k}")


def make_schedule(schedule: str | MaskingSchedule) -> MaskingSchedule:
    """A schedule from its name (``linear``, ``cosine``, ``poly{k}``) or the schedule itself."""
    if isinstance(schedule, MaskingSchedule):
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(
            f"schedule must be a name or a MaskingSchedule, got {type(schedule).__name__}"
        )
    if schedule == "linear":
        return LinearSchedule()
    if schedule == "cosine":
        return CosineSchedule()
    m = re.fullmatch(r"poly(\d+(?:\.\d*)?)", schedule)
    if m:
        return PolynomialSchedule(float(m.group(1)))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


class DiscreteProcess(ABC):
    """A per-position corruption ``q(x_t | x0)`` with clean probability ``alpha(t)``.

    Subclasses give the forward sample, the model's reverse jump rates and the ELBO integrand.
    ``ids`` below is the token denoiser (for ``mask_id`` and ``vocab_size``).
    """

    kind: str

    def __init__(self, schedule: str | MaskingSchedule = "linear"):
        self.schedule = make_schedule(schedule)

    def alpha(self, t: float | Tensor) -> Tensor:
        return self.schedule.alpha(t)

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return self.schedule.d_alpha(t)

    @abstractmethod
    def add_noise(
        self, x0: Tensor, t: Tensor, ids: TokenDenoiserBase, generator: Generators = None
    ) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)``; ``t`` is ``[batch]``."""

    @abstractmethod
    def reverse_rates(self, logp: Tensor, x: Tensor, t: Tensor, ids: TokenDenoiserBase) -> Tensor:
        """The model's reverse-time jump rates ``Rhat_i(y)`` from ``x`` at time ``t`` to the
        sequence with position ``i`` set to ``y``: ``[B, L, V]``, zero for ``y = x^i``."""

    @abstractmethod
    def nelbo_integrand(
        self, logp: Tensor, xt: Tensor, x0: Tensor, t: Tensor, ids: TokenDenoiserBase
    ) -> Tensor:
        """The continuous-time NELBO integrand at ``(x_t, t)`` given ``x0``: ``[B]`` (nats)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"


class MaskedProcess(DiscreteProcess):
    """Absorbing (masked) diffusion: a token is replaced by ``mask`` with probability
    ``1 - alpha(t)`` (MDLM, MD4, LLaDA). The reverse process unmasks a masked position at the
    hazard rate ``-alpha'(t) / (1 - alpha(t))`` into ``x0 ~ p(x0^i | x_t)``."""

    kind = "masked"

    def add_noise(
        self, x0: Tensor, t: Tensor, ids: TokenDenoiserBase, generator: Generators = None
    ) -> Tensor:
        if ids.mask_id is None:
            raise ValueError("masked diffusion needs a mask token: the denoiser has mask_id=None")
        a = self.alpha(t).to(x0.device).reshape(-1, 1)
        u = uniform(x0.shape, generator, device=x0.device)
        return torch.where(u >= a, torch.full_like(x0, ids.mask_id), x0)

    def unmask_probability(self, t: float | Tensor, s: float | Tensor) -> Tensor:
        """``(alpha_s - alpha_t) / (1 - alpha_t)``: the chance that a token masked at ``t`` is
        clean at ``s < t`` (MD4 ``ancestral_sample_step``, Shi et al. 2024)."""
        at, as_ = self.alpha(t), self.alpha(s)
        return ((as_ - at) / (1.0 - at)).clamp(0.0, 1.0)

    def reverse_rates(self, logp: Tensor, x: Tensor, t: Tensor, ids: TokenDenoiserBase) -> Tensor:
        lam = self.schedule.weight(t).to(logp.device).reshape(-1, 1, 1)
        masked = (x == ids.mask_id).unsqueeze(-1)
        return torch.where(masked, lam * logp.double().exp(), torch.zeros((), dtype=torch.float64))

    def nelbo_integrand(
        self, logp: Tensor, xt: Tensor, x0: Tensor, t: Tensor, ids: TokenDenoiserBase
    ) -> Tensor:
        # MD4 / MDLM: w(t) sum_{i masked} -log p(x0^i | x_t), w = -alpha'/(1 - alpha).
        masked = xt == ids.mask_id
        nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        nll = torch.where(masked, nll, torch.zeros_like(nll))
        w = self.schedule.weight(t).to(device=logp.device, dtype=nll.dtype)
        return w * nll.sum(-1)


class UniformProcess(DiscreteProcess):
    """Uniform-noise diffusion: a token is resampled uniformly over the ``V`` real tokens with
    probability ``1 - alpha(t)`` (D3PM uniform; UDLM, Schiff et al. 2024). Its forward rate
    matrix is ``beta(t) (11^T / V - I)`` with ``beta = -alpha'/alpha``."""

    kind = "uniform"

    @staticmethod
    def _vocab(ids: TokenDenoiserBase) -> int:
        if ids.mask_id is not None and 0 <= ids.mask_id < ids.vocab_size:
            raise ValueError(
                f"uniform-noise diffusion has no mask token, but the denoiser's mask_id "
                f"{ids.mask_id} is inside its vocabulary of {ids.vocab_size}; use mask_id=None"
            )
        return ids.vocab_size

    def add_noise(
        self, x0: Tensor, t: Tensor, ids: TokenDenoiserBase, generator: Generators = None
    ) -> Tensor:
        v = self._vocab(ids)
        a = self.alpha(t).to(x0.device).reshape(-1, 1)
        u = uniform(x0.shape, generator, device=x0.device)
        w = uniform(x0.shape, generator, device=x0.device)
        noise = (w * v).long().clamp_max(v - 1)
        return torch.where(u >= a, noise, x0)

    def _marginal_ratio(self, p: Tensor, x: Tensor, a: Tensor, ids: TokenDenoiserBase) -> Tensor:
        """``sum_v p(v) q_t(y | v) / q_t(x | v)`` for every ``y`` (UDLM's "concrete score" of the
        mean parameterisation), ``[B, L, V]`` in float64. ``a = alpha_t`` as ``[B, 1, 1]``."""
        v = self._vocab(ids)
        onehot = torch.zeros_like(p).scatter_(-1, x.unsqueeze(-1), 1.0)
        q_x = a * onehot + (1.0 - a) / v  # q_t(x | v) for every v
        r = p / q_x
        # sum_v p(v)/q(x|v) [a [y = v] + (1 - a)/V] = a r(y) + (1 - a)/V sum_v r(v)
        return a * r + (1.0 - a) / v * r.sum(-1, keepdim=True)

    def posterior(
        self, logp: Tensor, x: Tensor, t: Tensor, s: Tensor, ids: TokenDenoiserBase
    ) -> Tensor:
        """``p(x_s = y | x_t = x) = sum_v p(x0 = v | x_t) q(x_s = y | x_t, x0 = v)`` for every
        position, ``[B, L, V]`` float64 (D3PM, Austin et al. 2021, with the x0-prediction
        marginalised)."""
        v = self._vocab(ids)
        p = logp.double().exp()
        at = self.alpha(t).to(p.device).reshape(-1, 1, 1)
        as_ = self.alpha(s).to(p.device).reshape(-1, 1, 1)
        a_ts = torch.where(as_ > 0, at / as_, torch.zeros_like(at))
        onehot = torch.zeros_like(p).scatter_(-1, x.unsqueeze(-1), 1.0)
        q_ts = a_ts * onehot + (1.0 - a_ts) / v  # q(x_t = x | x_s = y)
        # q(x_s=y | x_t=x, v) = q(x_t=x | x_s=y) q_s(y | v) / q_t(x | v), summed over v
        r = p / (at * onehot + (1.0 - at) / v)
        inner = as_ * r + (1.0 - as_) / v * r.sum(-1, keepdim=True)
        post = q_ts * inner
        return post / post.sum(-1, keepdim=True)

    def reverse_rates(self, logp: Tensor, x: Tensor, t: Tensor, ids: TokenDenoiserBase) -> Tensor:
        v = self._vocab(ids)
        a = self.alpha(t).to(logp.device).reshape(-1, 1, 1)
        beta = (-self.d_alpha(t) / self.alpha(t)).to(logp.device).reshape(-1, 1, 1)
        ratio = self._marginal_ratio(logp.double().exp(), x, a, ids)
        rates = beta / v * ratio
        return rates.scatter(-1, x.unsqueeze(-1), 0.0)

    def nelbo_integrand(
        self, logp: Tensor, xt: Tensor, x0: Tensor, t: Tensor, ids: TokenDenoiserBase
    ) -> Tensor:
        v = self._vocab(ids)
        a = self.alpha(t).to(device=logp.device, dtype=torch.float64).reshape(-1, 1, 1)
        da = self.d_alpha(t).to(device=logp.device, dtype=torch.float64).reshape(-1, 1, 1)
        p = logp.double().exp()
        s_model = self._marginal_ratio(p, xt, a, ids)
        onehot0 = torch.zeros_like(p).scatter_(-1, x0.unsqueeze(-1), 1.0)
        q0 = a * onehot0 + (1.0 - a) / v  # q_t(y | x0)
        s_true = q0 / q0.gather(-1, xt.unsqueeze(-1))
        # generalised KL between true and model reverse rates, beta/V common factor
        term = s_model - s_true + s_true * (torch.log(s_true) - torch.log(s_model))
        term = term.scatter(-1, xt.unsqueeze(-1), 0.0).sum(-1).sum(-1)  # y != x_t^i
        beta = torch.where(a > 0, -da / a, torch.zeros_like(a)).reshape(-1)
        out = beta / v * term
        return torch.where(a.reshape(-1) > 0, out, torch.zeros_like(out)).to(logp.dtype)


# ---------------------------------------------------------------------------------------------
# The ELBO
# ---------------------------------------------------------------------------------------------


def nelbo(
    denoiser: TokenDenoiserBase,
    x0: Tensor,
    *,
    samples: int = 1,
    t: Tensor | None = None,
    generator: Generators = None,
) -> Tensor:
    """Unbiased Monte-Carlo estimate of the continuous-time negative ELBO of ``x0`` (nats,
    one per sequence, ``[B]``) under ``denoiser.process``.

    ``samples`` times per sequence are drawn with the low-discrepancy scheme of MD4 (Shi et al.
    2024; Kingma et al. 2021): ``t_k = 1 - ((u + k) / samples mod 1)``, one shared
    ``u`` per sequence, which keeps the estimate unbiased and lowers its variance; or pass ``t``
    (``[B]`` or ``[samples, B]``) to evaluate the integrand at given times (then the result is
    the mean integrand over those times, not an integral estimate unless ``t ~ U(0, 1)``).
    The result keeps gradients (it is the training loss of MDLM / MD4 when divided by ``L``).
    """
    # a token denoiser is a callable carrying its discrete process (checked without importing
    # reverie.discrete.denoiser, which builds on this module)
    if not callable(denoiser) or not isinstance(getattr(denoiser, "process", None),
                                                DiscreteProcess):
        raise TypeError(f"denoiser must be a TokenDenoiser, got {type(denoiser).__name__}")
    if not isinstance(x0, Tensor) or x0.dtype != torch.long or x0.ndim != 2:
        raise TypeError("x0 must be a LongTensor [batch, length]")
    proc = denoiser.process
    b = x0.shape[0]
    if t is None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        u = uniform((b,), generator, device=x0.device)
        k = torch.arange(samples, dtype=torch.float64, device=x0.device).reshape(-1, 1)
        times = 1.0 - torch.remainder(u.reshape(1, -1) + k / samples, 1.0)  # in (0, 1]
    else:
        times = torch.as_tensor(t, dtype=torch.float64, device=x0.device)
        times = times.reshape(1, b) if times.ndim == 1 else times
        if times.ndim != 2 or times.shape[1] != b:
            raise ValueError(f"t must have shape [{b}] or [samples, {b}], got {tuple(times.shape)}")
    total = 0.0
    for tk in times:
        xt = proc.add_noise(x0, tk, denoiser, generator)
        logp = denoiser(xt, tk)
        total = total + proc.nelbo_integrand(logp, xt, x0, tk, denoiser)
    return total / times.shape[0]

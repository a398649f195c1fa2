"""Energy-parameterised denoisers: models that give ``log q_t(x)`` (up to a constant), not
only its gradient.

Du et al. (2023), "Reduce, Reuse, Recycle", sec. 3-4: Metropolis-adjusted samplers (MALA, HMC)
and mixtures of models need the unnormalised log-density ``-E_t(x)`` of each noise level;
a score-only model supports products/negations with unadjusted samplers (ULA, U-HMC) only.

* :class:`EnergyDenoiser` -- the interface: a denoiser with :meth:`~EnergyDenoiser.log_density`.
* :class:`EnergyModel` -- wrap any ``log_density(x, t) -> [batch]`` (a network, e.g. RRR's
  ``-||s(x, t)||^2``-style energies); score and data prediction by autograd.
* :class:`MixtureEnergy` -- the exact log-density, score and denoiser of a
  :class:`~reverie.reference.GaussianMixture` under a process.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase, to_x0
from reverie.process import GaussianProcess
from reverie.reference.gaussian import GaussianMixture

__all__ = [
    "EnergyDenoiser",
    "EnergyModel",
    "MixtureEnergy",
    "has_energy",
    "require_energy",
    "check_same_process",
]


class EnergyDenoiser(DenoiserBase):
    """A denoiser whose noise levels have an unnormalised log-density ``log q_t(x) = -E_t(x)``.

    Subclasses implement :meth:`log_density` (``[batch]``) and ``__call__`` (or rely on
    :class:`EnergyModel`). The score must be the gradient of :meth:`log_density`.
    """

    #: whether :meth:`log_density` is available (combinators of score-only models say False)
    has_energy: bool = True

    @abstractmethod
    def log_density(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """``log q_t(x)`` up to a constant that does not depend on ``x``, ``[batch]``."""

    def energy(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """``E_t(x) = -log q_t(x)`` (up to a constant)."""
        return -self.log_density(x, t, **cond)

    def log_density_and_score(
        self, x: Tensor, t: float | Tensor, **cond: Any
    ) -> tuple[Tensor, Tensor]:
        """``(log q_t(x), grad log q_t(x))`` in one go (autograd models share the pass)."""
        return self.log_density(x, t, **cond), self.score(x, t, **cond)


def has_energy(model: DenoiserBase) -> bool:
    """Whether ``model`` gives a log-density (an :class:`EnergyDenoiser` whose parts all do)."""
    return isinstance(model, EnergyDenoiser) and bool(model.has_energy)


def require_energy(model: DenoiserBase, what: str) -> None:
    """Raise ``TypeError`` naming ``what`` needs an energy when ``model`` has none."""
    if not has_energy(model):
        raise TypeError(
            f"{what} needs an energy (the model's unnormalised log-density log q_t(x)) for its "
            f"Metropolis test, but {model!r} only gives a score. Use a score-only corrector "
            f"(ULA, U-HMC), or an energy-parameterised model (reverie.compose.EnergyModel, "
            f"reverie.compose.MixtureEnergy)"
        )


class EnergyModel(EnergyDenoiser):
    """A model given by its log-density ``fn(x, t, **cond) -> [batch]`` at each noise level
    (Du et al. 2023, sec. 4: energy parameterisation ``s = grad_x (-E)``).

    The score is ``grad_x fn`` by autograd and the data prediction follows by Tweedie,
    ``x0 = (x + sigma^2 score) / alpha``.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        process: GaussianProcess,
        *,
        sample_shape: Sequence[int] | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"process must be a GaussianProcess, got {type(process).__name__}")
        self.fn = fn
        self.process = process
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None

    def log_density(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        out = self.fn(x, time_tensor(t, x), **cond)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the log-density must return shape [{x.shape[0]}], got {got}")
        return out

    def log_density_and_score(
        self, x: Tensor, t: float | Tensor, **cond: Any
    ) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            ld = self.log_density(xg, t, **cond)
            (g,) = torch.autograd.grad(ld.sum(), xg)
        return ld.detach(), g.detach()

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.log_density_and_score(x, t, **cond)[1]

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        return to_x0(self.score(x, tt, **cond), "score", x, tt, self.process)

    def __repr__(self) -> str:
        return f"EnergyModel(process={self.process!r})"


class MixtureEnergy(EnergyDenoiser):
    """The exact model of a Gaussian mixture under ``process``: ``log q_t`` (normalised), the
    score and the denoiser in closed form (:class:`~reverie.reference.GaussianMixture`)."""

    def __init__(self, mixture: GaussianMixture, process: GaussianProcess):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"process must be a GaussianProcess, got {type(process).__name__}")
        self.mixture = mixture
        self.process = process
        self.sample_shape = (mixture.dim,)

    def _coefs(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        tt = time_tensor(t, x)
        return self.process.alpha(tt), self.process.sigma(tt)

    def log_density(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.mixture.log_prob_at(x, *self._coefs(x, t)).to(x.dtype)

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.mixture.score_at(x, *self._coefs(x, t))

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.mixture.denoise_at(x, *self._coefs(x, t))

    def __repr__(self) -> str:
        return f"MixtureEnergy({self.mixture!r}, {self.process!r})"


def _same_process(p: GaussianProcess, q: GaussianProcess) -> bool:
    if p is q:
        return True
    if type(p) is not type(q):
        return False
    if (p.t_min, p.t_max, p.t_clean) != (q.t_min, q.t_max, q.t_clean):
        return False
    ts = torch.linspace(p.t_clean, p.t_max, 7, dtype=torch.float64)[1:]
    return bool(
        torch.allclose(p.alpha(ts), q.alpha(ts), rtol=1e-9, atol=1e-12)
        and torch.allclose(p.sigma(ts), q.sigma(ts), rtol=1e-9, atol=1e-12)
    )


def check_same_process(models: Sequence[DenoiserBase]) -> GaussianProcess:
    """Raise unless ``models`` are denoisers of one noising process; return it."""
    models = list(models)
    if len(models) == 0:
        raise ValueError("need at least one model to compose")
    for k, m in enumerate(models):
        if not isinstance(m, DenoiserBase):
            raise TypeError(
                f"model {k} must be a reverie DenoiserBase (e.g. reverie.Denoiser(net, process, "
                f"prediction)), got {type(m).__name__}"
            )
    first = models[0].process
    for k, m in enumerate(models[1:], start=1):
        if not _same_process(first, m.process):
            raise ValueError(
                f"models of different noising processes cannot be composed: model 0 uses "
                f"{first!r}, model {k} uses {m.process!r}; wrap all models with the same "
                f"process (time t must mean the same noise level for every model)"
            )
    return first

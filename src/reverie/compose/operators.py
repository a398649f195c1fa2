"""Products, negations and mixtures of diffusion models as denoiser combinators.

Du et al. (2023), "Reduce, Reuse, Recycle", sec. 3 (composition operators on unnormalised
densities), applied to each noise level ``t``:

* product ``prod_k q_k^{w_k}``: ``grad log = sum_k w_k s_k``, ``log q = sum_k w_k log q_k``;
* negation ``q_1^{1+g} / q_2^{g}``: the product with weights ``(1 + g, -g)``;
* mixture ``sum_k omega_k q_k``: ``grad log = sum_k kappa_k s_k`` with
  ``kappa = softmax(log omega_k + log q_k)`` -- needs every model's log-density.

Each is a :class:`~reverie.denoisers.DenoiserBase`, so every sampler accepts it; the data
prediction follows from the combined score by Tweedie, ``x0 = (x + sigma^2 s) / alpha``. As the
paper shows, summing the scores of *noised* models is not the score of the noised product, so
sampling the product exactly needs MCMC correctors at each noise level
(:func:`reverie.compose.sample_with_corrector`); the combinators are energy models (for
MALA/HMC) whenever all their parts are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._tensor import bcast, time_tensor
from reverie.compose.energy import (
    EnergyDenoiser,
    check_same_process,
    has_energy,
    require_energy,
)
from reverie.denoisers import DenoiserBase

__all__ = ["Product", "Negation", "Mixture"]


def _weights(weights: Sequence[float] | None, k: int, what: str) -> list[float]:
    if weights is None:
        return [1.0] * k
    w = [float(v) for v in weights]
    if len(w) != k:
        raise ValueError(f"{what}: got {len(w)} weights for {k} models")
    return w


def _sample_shape(models: Sequence[DenoiserBase]) -> tuple[int, ...] | None:
    shapes = {tuple(s) for m in models if (s := getattr(m, "sample_shape", None)) is not None}
    if len(shapes) > 1:
        raise ValueError(f"the models expect different sample shapes: {sorted(shapes)}")
    return shapes.pop() if shapes else None


class Product(EnergyDenoiser):
    """``q_t(x) ∝ prod_k q_{k,t}(x)^{w_k}`` at every noise level (Du et al. 2023, eq. 5-6;
    weights of any sign, e.g. negation).

    Data prediction: ``sum_k w_k x0_k + (1 - sum_k w_k) x / alpha`` (Tweedie on the summed
    scores). ``log_density`` is available when every model has one.
    """

    def __init__(self, models: Sequence[DenoiserBase], weights: Sequence[float] | None = None):
        self.models = list(models)
        self.process = check_same_process(self.models)
        self.weights = _weights(weights, len(self.models), "Product")
        self.sample_shape = _sample_shape(self.models)

    @property
    def has_energy(self) -> bool:  # type: ignore[override]
        return all(has_energy(m) for m in self.models)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        total = sum(self.weights)
        out = sum(w * m(x, tt, **cond) for w, m in zip(self.weights, self.models))
        if total != 1.0:
            a = bcast(self.process.alpha(tt), x).to(x.dtype)
            out = out + (1.0 - total) * x / a
        return out

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        return sum(w * m.score(x, tt, **cond) for w, m in zip(self.weights, self.models))

    def log_density(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        require_energy(self, "the log-density of a product")
        tt = time_tensor(t, x)
        return sum(w * m.log_density(x, tt, **cond) for w, m in zip(self.weights, self.models))

    def log_density_and_score(
        self, x: Tensor, t: float | Tensor, **cond: Any
    ) -> tuple[Tensor, Tensor]:
        require_energy(self, "the log-density of a product")
        tt = time_tensor(t, x)
        pairs = [m.log_density_and_score(x, tt, **cond) for m in self.models]
        ld = sum(w * p[0] for w, p in zip(self.weights, pairs))
        sc = sum(w * p[1] for w, p in zip(self.weights, pairs))
        return ld, sc

    def __repr__(self) -> str:
        return f"Product(weights={self.weights}, models={self.models!r})"


class Negation(Product):
    """``q_1^{1+g} / q_2^{g}``: keep what ``model`` has, remove what ``negated`` has
    (Du et al. 2023, "negation"; the classifier-free-guidance form with ``g`` the strength)."""

    def __init__(self, model: DenoiserBase, negated: DenoiserBase, strength: float = 0.5):
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        super().__init__([model, negated], [1.0 + strength, -float(strength)])
        self.strength = float(strength)

    def __repr__(self) -> str:
        return f"Negation(strength={self.strength}, models={self.models!r})"


class Mixture(EnergyDenoiser):
    """``q_t ∝ sum_k omega_k q_{k,t}`` (Du et al. 2023, "mixture"): the score is the
    responsibility-weighted sum ``sum_k kappa_k s_k``, ``kappa = softmax(log omega + log q_k)``.

    Every model must give a *normalised* log-density (otherwise the weights are off by the
    normalising constants). For score-only models, superpose them with
    :func:`reverie.compose.superpose` (``mode="or"``), which tracks the densities along the path.
    """

    def __init__(self, models: Sequence[DenoiserBase], weights: Sequence[float] | None = None):
        self.models = list(models)
        self.process = check_same_process(self.models)
        for m in self.models:
            require_energy(m, "a mixture of models (reverie.compose.Mixture)")
        w = torch.tensor(_weights(weights, len(self.models), "Mixture"), dtype=torch.float64)
        if not bool((w > 0).all()):
            raise ValueError(f"mixture weights must be positive, got {w.tolist()}")
        self.weights = (w / w.sum()).tolist()
        self.log_weights = torch.log(w / w.sum())
        self.sample_shape = _sample_shape(self.models)

    def _kappa(self, x: Tensor, t: Tensor, cond: dict[str, Any]) -> tuple[Tensor, Tensor]:
        lds = torch.stack([m.log_density(x, t, **cond).to(torch.float64) for m in self.models])
        logits = lds + self.log_weights.to(lds.device)[:, None]
        return torch.softmax(logits, 0), torch.logsumexp(logits, 0)

    def _combine(self, kappa: Tensor, parts: list[Tensor]) -> Tensor:
        k = kappa.to(parts[0].dtype)
        return sum(bcast(k[i], parts[i]) * parts[i] for i in range(len(parts)))

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        kappa, _ = self._kappa(x, tt, cond)
        return self._combine(kappa, [m(x, tt, **cond) for m in self.models])

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        tt = time_tensor(t, x)
        kappa, _ = self._kappa(x, tt, cond)
        return self._combine(kappa, [m.score(x, tt, **cond) for m in self.models])

    def log_density(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self._kappa(x, time_tensor(t, x), cond)[1].to(x.dtype)

    def __repr__(self) -> str:
        return f"Mixture(weights={self.weights}, models={self.models!r})"

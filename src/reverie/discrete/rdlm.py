"""RDLM: continuous diffusion on the statistical manifold of categorical distributions (Jo &
Hwang 2025, "Continuous Diffusion Model for Language Modeling", arXiv 2502.11564; code
``harryjo97/RDLM``: ``sde.py``, ``sampling.py``, ``losses.py``).

A categorical distribution ``p`` on ``V`` symbols is the point ``u = sqrt(p)`` of the positive
orthant of the unit sphere (:func:`to_sphere`; the Fisher-Rao metric becomes 4 x the sphere's,
so the Fisher-Rao distance is ``2 arccos sum_i sqrt(p_i q_i)``, twice the great-circle angle:
:func:`fisher_rao`). A token ``k`` is the vertex ``e_k``. Per position, the generative process
runs from a prior point -- the extra mask vertex (``prior="masked"``, ``V + 1`` coordinates) or
the centre ``1/sqrt(V)`` (``"uniform"``) -- at ``t = 0`` to the data at ``t = 1`` along the
*logarithm bridge*

    dX = gamma_t log_X(e_k) dt + sqrt(beta_t) dW       (a Brownian motion on the sphere)

with ``gamma_t = beta_t / int_t^1 beta_s ds`` (so ``X_1 = e_k``); the generative process is the
mixture of these bridges over ``k ~ p(x0 | X_t)``, its drift
``gamma_t sum_k p(x0 = k | X_t) log_X(e_k)`` (:meth:`RiemannianBridge.drift`) with the model's
prediction in place of the posterior, simulated by geodesic random walks
(:meth:`RiemannianBridge.sample`: ``sampling.py``'s ``grw`` predictor, then the argmax of
``X^2`` over the tokens). The model is trained by cross-entropy on bridge states
(:meth:`RiemannianBridge.loss`; ``losses.py``'s ``ce``), here with the states drawn from a
bank of simulated bridge paths (the code's ``interpolant_simul``) mapped to every token by the
bridge's symmetry, not the paper's moment-matched Riemannian-normal approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._checks import positive, positive_int

__all__ = ["RiemannianBridge", "fisher_rao", "sphere_exp", "sphere_log", "to_simplex",
           "to_sphere"]

LogitsFn = Callable[[Tensor, Tensor], Tensor]  # (X [B, L, D], t [B]) -> logits [B, L, V]


def to_sphere(p: Tensor) -> Tensor:
    """The diffeomorphism of the simplex onto the positive orthant of the sphere: ``sqrt(p)``."""
    return p.clamp_min(0).sqrt()


def to_simplex(u: Tensor) -> Tensor:
    """Its inverse on the whole sphere: ``u^2``."""
    return u * u


def fisher_rao(p: Tensor, q: Tensor) -> Tensor:
    """The Fisher-Rao distance of categorical laws, ``2 arccos sum_i sqrt(p_i q_i)``."""
    return 2 * torch.arccos((to_sphere(p) * to_sphere(q)).sum(-1).clamp(-1, 1))


def sphere_log(x: Tensor, y: Tensor, eps: float = 1e-7) -> Tensor:
    """``log_x(y)``: the tangent vector at ``x`` pointing along the great circle to ``y``, of
    length the angle ``theta = arccos <x, y>``."""
    cos = (x * y).sum(-1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    scale = torch.where(theta > eps, theta / torch.sin(theta).clamp_min(eps), 1.0)
    return scale * (y - cos * x)


def sphere_exp(x: Tensor, v: Tensor, eps: float = 1e-12) -> Tensor:
    """``exp_x(v) = cos|v| x + sin|v| v / |v|`` (renormalised against rounding)."""
    norm = v.norm(dim=-1, keepdim=True)
    out = torch.cos(norm) * x + torch.sin(norm) * v / norm.clamp_min(eps)
    return out / out.norm(dim=-1, keepdim=True)


class RiemannianBridge:
    """RDLM's process for ``vocab_size`` tokens: the prior point (``"masked"``: the mask
    vertex, coordinate ``V``; ``"uniform"``: the centre), the geometric schedule
    ``beta_t = beta_0^(1-t) beta_1^t`` (``sde.py`` / ``scheduler_lib.Geometric``; constant by
    default, then ``gamma_t = 1 / (1 - t)``), geodesic random walks."""

    def __init__(self, vocab_size: int, prior: str = "masked", beta_0: float = 1.0,
                 beta_1: float = 1.0):
        self.vocab_size = positive_int("vocab_size", vocab_size)
        if prior not in ("masked", "uniform"):
            raise ValueError(f"prior must be 'masked' or 'uniform', got {prior!r}")
        self.prior_kind = prior
        self.dim = vocab_size + (prior == "masked")
        self.beta_0, self.beta_1 = positive("beta_0", beta_0), positive("beta_1", beta_1)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 ** (1 - t) * self.beta_1**t

    def drift_coeff(self, t: Tensor) -> Tensor:
        """``gamma_t = beta_t / int_t^1 beta_s ds`` (blows up at ``t = 1``: the bridge)."""
        r = self.beta_1 / self.beta_0
        if abs(r - 1) < 1e-12:
            return 1 / (1 - t)
        return math.log(r) / (r ** (1 - t) - 1)

    def prior(self, shape: tuple[int, ...]) -> Tensor:
        """The start point ``[*shape, D]``."""
        x = torch.zeros(*shape, self.dim, dtype=torch.float64)
        if self.prior_kind == "masked":
            x[..., -1] = 1.0
        else:
            x[...] = 1 / math.sqrt(self.dim)
        return x

    def vertices(self, probs: Tensor) -> Tensor:
        """The token vertices ``e_k`` ``[V, D]``."""
        return torch.eye(self.vocab_size, self.dim, dtype=probs.dtype)

    def drift(self, x: Tensor, probs: Tensor, t: Tensor) -> Tensor:
        """``gamma_t sum_k probs_k log_x(e_k)``: ``x`` ``[B, L, D]``, ``probs`` ``[B, L, V]``,
        ``t`` ``[B]``."""
        logs = sphere_log(x[..., None, :], self.vertices(probs))  # [B, L, V, D]
        return self.drift_coeff(t)[:, None, None] * (probs[..., None] * logs).sum(-2)

    def step(self, x: Tensor, drift: Tensor, t: Tensor, dt: float,
             generator: torch.Generator | None) -> Tensor:
        """One geodesic random walk step: ``exp_x(drift dt + sqrt(beta_t dt) z)``, ``z`` a
        standard normal in the tangent space at ``x``."""
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        z = z - (z * x).sum(-1, keepdim=True) * x
        noise = (self.beta(t) * dt).sqrt()[:, None, None] * z
        return sphere_exp(x, drift * dt + noise)

    def grid(self, steps: int, eps: float = 1e-3) -> Tensor:
        """The time grid ``0 = t_0 < ... < t_steps = 1 - eps`` of the walks."""
        return torch.linspace(0, 1 - eps, positive_int("steps", steps) + 1, dtype=torch.float64)

    def bridge_paths(self, tokens: Tensor, steps: int = 100,
                     generator: torch.Generator | None = None) -> Tensor:
        """Walk the bridge to ``e_tokens`` (``tokens`` ``[B, L]``) from the prior: the states
        at every grid time, ``[steps + 1, B, L, D]``."""
        ts = self.grid(steps)
        onehot = torch.nn.functional.one_hot(tokens, self.vocab_size).double()
        x = self.prior(tuple(tokens.shape))
        out = [x]
        for t, s in zip(ts[:-1], ts[1:]):
            tt = t.expand(tokens.shape[0])
            x = self.step(x, self.drift(x, onehot, tt), tt, float(s - t), generator)
            out.append(x)
        return torch.stack(out)

    @torch.no_grad()
    def sample(self, logits_fn: LogitsFn, n: int, length: int, steps: int = 100,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` sequences ``[n, length]``: the mixture process with the model's ``p(x0 | X_t)``
        (``softmax(logits_fn(X, t))``) walked over ``steps`` grid steps, then the argmax of
        ``X^2`` over the ``V`` token coordinates (``sampling.py``'s ``pc_sampler``)."""
        ts = self.grid(steps)
        x = self.prior((positive_int("n", n), positive_int("length", length)))
        for t, s in zip(ts[:-1], ts[1:]):
            tt = t.expand(n)
            probs = torch.softmax(logits_fn(x, tt).double(), -1)
            x = self.step(x, self.drift(x, probs, tt), tt, float(s - t), generator)
        return to_simplex(x)[..., : self.vocab_size].argmax(-1)

    def bank_states(self, bank: Tensor, tokens: Tensor, generator: torch.Generator | None
                    ) -> tuple[Tensor, Tensor]:
        """Bridge states for ``tokens`` ``[B, L]`` at a random grid time per row, drawn from
        ``bank`` ``[steps + 1, M, D]`` (paths of the bridge to token 0, from
        :meth:`bridge_paths`): the bridge to ``e_k`` is the bridge to ``e_0`` with
        coordinates ``0`` and ``k`` swapped (the noise is isotropic). Returns ``(X, t)``."""
        b, length = tokens.shape
        steps, m = bank.shape[0] - 1, bank.shape[1]
        j = torch.randint(0, steps, (b,), generator=generator)
        path = torch.randint(0, m, (b, length), generator=generator)
        x = bank[j[:, None], path].clone()  # [B, L, D]
        first = x[..., 0].clone()
        x[..., 0] = x.gather(-1, tokens[..., None]).squeeze(-1)
        x.scatter_(-1, tokens[..., None], first[..., None])
        return x, self.grid(steps)[j]

    def loss(self, logits_fn: LogitsFn, tokens: Tensor, bank: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """RDLM's cross-entropy loss (``losses.py``'s ``ce``): ``-log p(x0 | X_t)`` summed over
        positions, averaged over rows, at bridge states from the bank."""
        x, t = self.bank_states(bank, tokens, generator)
        logits = logits_fn(x, t)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                 tokens.flatten(), reduction="sum") / len(x)

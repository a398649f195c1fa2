"""GDSS: score-based generation of graphs via a system of SDEs (Jo, Lee & Hwang 2022,
"Score-based Generative Modeling of Graphs via the System of Stochastic Differential Equations").

A graph is node features ``X [B, N, F]`` and a symmetric adjacency ``A [B, N, N]``. Two forward
processes run side by side (eq. 2),

    dX = f_x X dt + g_x dW_x,     dA = f_a A dt + g_a dW_a,

with ``dW_a`` a *symmetric* Wiener process (each pair ``i < j`` one Brownian motion, mirrored;
zero diagonal), so ``A_t`` stays symmetric with ``A_t[i, j] ~ N(alpha_a A_0[i, j], sigma_a^2)``
for ``i < j``. The reverse system (eq. 3) needs the two partial scores
``grad_X log p_t(X, A)`` and ``grad_A log p_t(X, A)``, each a function of both components;
here they come from a joint data prediction ``(X0_hat, A0_hat) = denoise(X_t, A_t, t)`` (an
exact enumerable law, :class:`GraphLaw`, or a network, :class:`GraphScoreNet`). Sampling is
the predictor-corrector solver GDSS uses (Song et al. 2021's PC sampler applied to
both components) or GDSS's S4 solver (symmetric splitting, one score evaluation per step).
The adjacency alone also runs on reverie's samplers: :meth:`GraphLaw.adjacency_denoiser` is
a :class:`~reverie.denoisers.DenoiserBase` on the upper triangle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._tensor import bcast, time_tensor
from reverie.denoisers import DenoiserBase
from reverie.graphs.data import check_adjacency, from_triu, triu
from reverie.process import GaussianProcess, VPLinear

__all__ = ["sym_noise", "GDSS", "GraphLaw", "degree_features", "sample_gdss", "quantize"]


def sym_noise(b: int, n: int, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> Tensor:
    """Symmetric standard noise ``[b, n, n]``: one N(0, 1) per pair ``i < j``, mirrored, zero
    diagonal (GDSS's symmetrised noise)."""
    z = torch.randn(b, n * (n - 1) // 2, generator=generator, dtype=dtype)
    return from_triu(z, n)


def degree_features(a: Tensor) -> Tensor:
    """Node features ``[..., N, 1]``: the degree over ``N - 1`` (a function of ``A``)."""
    return (a.sum(-1) / max(a.shape[-1] - 1, 1))[..., None]


def quantize(a: Tensor) -> Tensor:
    """Generated adjacency to 0/1 by thresholding at 0.5 (GDSS's final step)."""
    return (a > 0.5).to(a.dtype)


class GDSS:
    """The pair of forward processes for ``X`` and ``A`` (default both VP with linear beta, as
    GDSS's VPSDE; any reverie :class:`~reverie.process.GaussianProcess` fits)."""

    def __init__(self, process_x: GaussianProcess | None = None,
                 process_a: GaussianProcess | None = None):
        self.process_x = process_x or VPLinear()
        self.process_a = process_a or VPLinear()

    def perturb(self, x: Tensor, a: Tensor, t: float | Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(X_t, A_t)``: ``alpha X + sigma eps`` and ``alpha A + sigma eps_sym``."""
        check_adjacency(a)
        if x.shape[:2] != a.shape[:2]:
            raise ValueError(f"features [B, N, F] and adjacency [B, N, N] disagree: "
                             f"{tuple(x.shape)} vs {tuple(a.shape)}")
        ex = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        ea = sym_noise(a.shape[0], a.shape[-1], generator, a.dtype)
        return (self.process_x.add_noise(x, ex, t),
                self.process_a.add_noise(a, ea, t) * (1 - torch.eye(a.shape[-1], dtype=a.dtype)))

    def scores(self, denoise: Callable, x: Tensor, a: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Both partial scores ``-(Y_t - alpha Y0_hat) / sigma^2`` from one joint prediction."""
        x0, a0 = denoise(x, a, t)
        out = []
        for y, y0, p in ((x, x0, self.process_x), (a, a0, self.process_a)):
            out.append(-(y - bcast(p.alpha(t), y) * y0) / bcast(p.sigma(t), y) ** 2)
        out[1] = out[1] * (1 - torch.eye(a.shape[-1], dtype=a.dtype))  # no self loops
        return out[0], out[1]


class GraphLaw:
    """An enumerable law over graphs: ``graphs [K, N, N]`` with ``probs [K]`` and node
    features ``features(A) [K, N, F]`` (default :func:`degree_features`). Its joint denoiser is
    the posterior mean over the ``K`` graphs: weights ``p_k N(X_t; alpha_x X_k, sigma_x^2)
    N(triu(A_t); alpha_a triu(A_k), sigma_a^2)`` (each pair counted once: the noise is
    symmetric)."""

    def __init__(self, graphs: Tensor, probs: Tensor, system: GDSS | None = None,
                 features: Callable[[Tensor], Tensor] = degree_features):
        check_adjacency(graphs, "graphs")
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.shape != graphs.shape[:1] or (probs < 0).any():
            raise ValueError(f"probs must be [K]={graphs.shape[0]} non-negative numbers, got "
                             f"{tuple(probs.shape)}")
        self.graphs = graphs.to(torch.float64)
        self.probs = probs / probs.sum()
        self.features = features(self.graphs).to(torch.float64)
        self.system = system or GDSS()

    def log_lik(self, x: Tensor, a: Tensor, t: Tensor) -> Tensor:
        """``log N(X_t | X_k) + log N(A_t | A_k)`` up to a constant, ``[B, K]``."""
        px, pa = self.system.process_x, self.system.process_a
        ax, sx = px.alpha(t)[:, None], px.sigma(t)[:, None]
        aa, sa = pa.alpha(t)[:, None], pa.sigma(t)[:, None]
        dx = (x.flatten(1)[:, None] - ax[..., None] * self.features.flatten(1)[None]) ** 2
        da = (triu(a)[:, None] - aa[..., None] * triu(self.graphs)[None]) ** 2
        return -dx.sum(-1) / (2 * sx**2) - da.sum(-1) / (2 * sa**2)

    def posterior(self, x: Tensor, a: Tensor, t: Tensor) -> Tensor:
        """Posterior weights over the ``K`` graphs, ``[B, K]``."""
        return torch.softmax(self.log_lik(x, a, t) + self.probs.log()[None], -1)

    def __call__(self, x: Tensor, a: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(E[X_0 | X_t, A_t], E[A_0 | X_t, A_t])``."""
        x, a = x.to(torch.float64), a.to(torch.float64)
        w = self.posterior(x, a, time_tensor(t, x))
        return (torch.einsum("bk,knf->bnf", w, self.features),
                torch.einsum("bk,kij->bij", w, self.graphs))

    def adjacency_denoiser(self) -> DenoiserBase:
        """The law of ``A`` alone (no features) as a reverie denoiser on upper triangles
        ``[B, N(N-1)/2]`` under ``system.process_a``: any reverie sampler runs on it."""
        law = self

        class _Adjacency(DenoiserBase):
            process = law.system.process_a

            def __call__(self, v: Tensor, t: float | Tensor, **cond) -> Tensor:
                t = time_tensor(t, v)
                a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
                k = triu(law.graphs)
                ll = -((v.to(torch.float64)[:, None] - a[..., None] * k[None]) ** 2).sum(-1)
                w = torch.softmax(ll / (2 * s**2) + law.probs.log()[None], -1)
                return (w @ k).to(v.dtype)

        return _Adjacency()

    def distribution(self, a: Tensor) -> Tensor:
        """Empirical frequencies ``[K]`` of 0/1 adjacencies ``[B, N, N]`` over the law's graphs
        (a graph outside the support counts in none, so mass is lost)."""
        match = (a[:, None].to(torch.float64) == self.graphs[None]).flatten(2).all(-1)
        return match.to(torch.float64).mean(0)

    def tv(self, a: Tensor) -> float:
        """Total-variation distance between the law and samples' empirical law."""
        f = self.distribution(a)
        return float(0.5 * ((f - self.probs).abs().sum() + (1 - f.sum())))


def _reverse_linear(y: Tensor, p: GaussianProcess, t: Tensor, s: Tensor,
                    noise: Tensor) -> Tensor:
    """The linear part ``dY = f Y dt + g dW`` of the reverse SDE solved exactly from ``t`` back
    to ``s < t``: ``Y_s = (alpha_s / alpha_t) Y_t + N(0, (alpha_s sigma_t / alpha_t)^2 -
    sigma_s^2)`` (the forward transition's mean ratio; its variance ``alpha_s^2 int_s^t g^2 /
    alpha^2``)."""
    r = p.alpha(s) / p.alpha(t)
    var = ((r * p.sigma(t)) ** 2 - p.sigma(s) ** 2).clamp(min=0)
    return r * y + var.sqrt() * noise


def sample_gdss(denoise: Callable, system: GDSS, batch: int, n: int, features: int,
                steps: int = 200, corrector_steps: int = 1, snr: float = 0.05,
                generator: torch.Generator | None = None,
                solver: str = "pc") -> tuple[Tensor, Tensor]:
    """GDSS's solvers for the reverse system (eq. 3), both scores from one joint prediction
    ``denoise(X_t, A_t, t) -> (X0_hat, A0_hat)``, the ``A`` noise symmetrised.

    ``solver="pc"``: the predictor-corrector solver: per step ``corrector_steps`` Langevin
    corrections (Song et al. 2021, Alg. 5; step ``2 (snr |z| / |score|)^2``) then a
    reverse-diffusion (Euler-Maruyama) predictor; ``corrector_steps + 1`` evaluations a step.

    ``solver="s4"``: GDSS's S4 solver (Symmetric Splitting for System of SDEs, Jo et al. 2022,
    Sec. 3.3 and Alg. 2): per step one score evaluation, used by a Langevin correction (if
    ``corrector_steps``; GDSS's extra factor ``1 - beta_i`` on its step is left out) and by the
    prediction: a half step of the linear part solved exactly (:func:`_reverse_linear`), the
    score part ``Y += g^2 score dt``, the other half step of the linear part.

    Returns the last data predictions ``(X0, A0)`` (quantise ``A`` with :func:`quantize`)."""
    positive_int("steps", steps), positive_int("batch", batch), positive_int("n", n)
    if solver not in ("pc", "s4"):
        raise ValueError(f"solver must be 'pc' or 's4', got {solver!r}")
    if solver == "s4" and corrector_steps not in (0, 1):
        raise ValueError(f"the s4 solver corrects at most once a step, got corrector_steps="
                         f"{corrector_steps}")
    px, pa = system.process_x, system.process_a
    t_hi = min(px.t_max, pa.t_max)
    t_lo = max(px.t_min, pa.t_min)
    ts = torch.linspace(t_hi, t_lo, steps + 1, dtype=torch.float64)
    x = torch.randn(batch, n, features, generator=generator, dtype=torch.float64)
    x = x * px.sigma(ts[0])
    a = sym_noise(batch, n, generator) * pa.sigma(ts[0])

    def noise_like(y: Tensor, adj: bool) -> Tensor:  # symmetrised noise for A
        if adj:
            return sym_noise(batch, n, generator)
        return torch.randn(y.shape, generator=generator, dtype=y.dtype)

    def norm(v: Tensor) -> Tensor:
        return v.flatten(1).norm(dim=-1).clamp(min=1e-12)

    def langevin(y: Tensor, s: Tensor, adj: bool) -> Tensor:  # one Langevin correction
        z = noise_like(y, adj)
        eps = 2 * (snr * norm(z) / norm(s)) ** 2
        return y + bcast(eps, y) * s + bcast(eps.sqrt() * math.sqrt(2), y) * z

    for i in range(steps):
        t, dt = ts[i].expand(batch), float(ts[i] - ts[i + 1])
        if solver == "s4":
            sx, sa = system.scores(denoise, x, a, t)  # the step's only score evaluation
            mid = (ts[i] + ts[i + 1]) / 2
            new = []
            for y, s, p, adj in ((x, sx, px, False), (a, sa, pa, True)):
                if corrector_steps:  # Langevin correction with the same score
                    y = langevin(y, s, adj)
                y = _reverse_linear(y, p, ts[i], mid, noise_like(y, adj))  # half linear step
                y = y + p.drift_diffusion(ts[i])[1] * s * dt  # score part (Euler)
                new.append(_reverse_linear(y, p, mid, ts[i + 1], noise_like(y, adj)))  # half
            x, a = new
            continue
        for _ in range(corrector_steps):  # Langevin corrector on both components
            sx, sa = system.scores(denoise, x, a, t)
            x, a = langevin(x, sx, False), langevin(a, sa, True)
        sx, sa = system.scores(denoise, x, a, t)  # reverse-diffusion predictor
        new = []
        for y, s, p, adj in ((x, sx, px, False), (a, sa, pa, True)):
            f, g2 = p.drift_diffusion(ts[i])
            y = y - (f * y - g2 * s) * dt  # drift of the reverse SDE, backwards in time
            new.append(y + math.sqrt(float(g2) * dt) * noise_like(y, adj))
        x, a = new
    return denoise(x, a, ts[-1].expand(batch))

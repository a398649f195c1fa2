"""Diffusion with forward models: a conditional diffusion model of a signal that is never observed.

Tewari et al., "Diffusion with Forward Models: Solving Stochastic Inverse Problems Without
Direct Supervision" (NeurIPS 2023). The training data are *observations* only: pairs of a
context observation ``o_c = F_c(x)`` and a target observation ``o_t = F_t(x)`` of the same
unknown signal ``x`` through known differentiable forward models (in the paper: two views of a
3-D scene rendered by a volume renderer). A generator ``x_hat = gen(o_c, o_t^tau, tau)`` maps
the context and the *noisy target observation* ``o_t^tau = alpha_tau o_t + sigma_tau eps`` to a
signal, and the forward model turns it into the target-observation denoiser (the paper's
method section; its code regresses the rendered target view on the clean one):

    D(o_t^tau, tau; o_c) = F_t(gen(o_c, o_t^tau, tau))                  (denoise through F_t)
    loss = |F_t(gen(o_c, o_t^tau, tau)) - o_t|^2                         (x0 loss on o_t)
           + context_weight |F_c(gen(o_c, o_t^tau, tau)) - o_c|^2        (context re-projection)

At test time only ``o_c`` is given: a diffusion sampler walks the target observation from noise
with ``D`` (the paper uses DDIM; here any sampler of :data:`reverie.SAMPLERS`, DPM-Solver++(2M)
by default), and the signal the generator produced at the last model call is a sample of
``p(x | o_c)``. Training draws ``tau`` from EDM's log-normal noise levels by default (the
paper: uniform DDPM steps, ``time_sampling="uniform"``), which trains the low-noise end the
last signal comes from; on the tests' Gaussian case it cut the distance to the exact law by
50-70% at equal steps (500).

Why it samples the posterior (the linear, noiseless case the tests check): the loss's
minimiser has ``F_t x_hat = E[o_t | o_t^tau, o_c]`` and ``F_c x_hat = o_c``, so the walk is an
exact conditional diffusion of ``o_t | o_c``, and when ``[F_c; F_t]`` determines ``x`` the last
signal is ``x = [F_c; F_t]^{-1} (o_c, o_t) ~ p(x | o_c)``. The context term pins the part of
``x_hat`` the target view does not see (the null space of ``F_t``); the paper gets it from its
pixel-aligned scene representation (pixelNeRF features of the context image) instead. With a
target view per pair (``views=``: the paper's target camera) the generator and ``F_t`` take
it, and the sampled signal's law does not depend on the view sampled from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie._random import Generators, randn
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.nets.mlp import SinusoidalEmbedding
from reverie.process import GaussianProcess
from reverie.samplers import sample
from reverie.train.interpolants import FitResult, _fit
from reverie.train.loop import TIME_SAMPLINGS, _sample_times

__all__ = ["SignalGenerator", "ForwardModelDenoiser", "dfm_loss", "train_dfm", "dfm_sample"]

ForwardModel = Callable[[Tensor], Tensor]


class SignalGenerator(nn.Module):
    """``gen(o_c, o_t^tau, tau) -> x_hat [B, signal_dim]``: a residual MLP on the concatenated
    context and noisy target observations (vectors), with a sinusoidal embedding of
    ``1000 tau / t_max`` (``t_max``: the process's noisiest time)."""

    def __init__(self, context_dim: int, target_dim: int, signal_dim: int, *, hidden: int = 128,
                 depth: int = 3, t_max: float = 1.0, view_dim: int = 0):
        super().__init__()
        for name, v in (("context_dim", context_dim), ("target_dim", target_dim),
                        ("signal_dim", signal_dim), ("hidden", hidden), ("depth", depth)):
            positive_int(name, v)
        self.context_dim, self.target_dim, self.time_scale = context_dim, target_dim, 1000 / t_max
        self.view_dim = view_dim
        self.time = nn.Sequential(SinusoidalEmbedding(64), nn.Linear(64, hidden), nn.SiLU())
        self.inp = nn.Linear(context_dim + target_dim + view_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, hidden)) for _ in range(depth))
        self.emb = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        # no LayerNorm before the output: the signal's amplitude must pass through
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, signal_dim))

    def forward(self, context: Tensor, noisy: Tensor, t: Tensor, view: Tensor | None = None
                ) -> Tensor:
        if context.shape[1:] != (self.context_dim,) or noisy.shape[1:] != (self.target_dim,):
            raise ValueError(f"expected context [B, {self.context_dim}] and noisy target "
                             f"[B, {self.target_dim}], got {tuple(context.shape)} and "
                             f"{tuple(noisy.shape)}")
        parts = [context, noisy]
        if self.view_dim:
            if view is None or view.shape[1:] != (self.view_dim,):
                got = None if view is None else tuple(view.shape)
                raise ValueError(f"expected the target view [B, {self.view_dim}], got {got}")
            parts.append(view)
        e = self.time(t.float() * self.time_scale)
        h = self.inp(torch.cat(parts, dim=1).float())
        for block, emb in zip(self.blocks, self.emb, strict=True):
            h = h + block(h + emb(e))  # residual block with the time added
        return self.out(h)


def _with_view(fn: Callable[..., Tensor], view: Tensor | None) -> Callable[..., Tensor]:
    return fn if view is None else (lambda *a: fn(*a, view))


def dfm_loss(gen: nn.Module, process: GaussianProcess, forward: ForwardModel, context: Tensor,
             target: Tensor, eps: Tensor, t: Tensor, *, context_forward: ForwardModel | None = None,
             context_weight: float = 1.0, view: Tensor | None = None) -> Tensor:
    """The loss of Tewari et al. (2023) (module docstring) on a batch of observation pairs
    ``context [B, C]``, ``target [B, M]`` with noise ``eps [B, M]`` at times ``t [B]``; with
    target views ``view [B, P]`` the generator and the target forward model take them last."""
    gen, forward = _with_view(gen, view), _with_view(forward, view)
    noisy = process.add_noise(target, eps, t)  # o_t^tau = alpha o_t + sigma eps
    signal = gen(context, noisy, t)  # x_hat = gen(o_c, o_t^tau, tau)
    loss = ((forward(signal) - target) ** 2).sum(1).mean()  # |F_t(x_hat) - o_t|^2
    if context_forward is not None and context_weight:
        loss = loss + context_weight * ((context_forward(signal) - context) ** 2).sum(1).mean()
    return loss


def _pairs(context: Tensor, target: Tensor) -> None:
    for name, v in (("context", context), ("target", target)):
        if not isinstance(v, Tensor) or v.ndim != 2:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name} observations must be a [N, dim] tensor, got {got}")
    if context.shape[0] != target.shape[0] or context.shape[0] == 0:
        raise ValueError(f"need as many context as target observations (>= 1), got "
                         f"{context.shape[0]} and {target.shape[0]}")


def train_dfm(gen: nn.Module, process: GaussianProcess, forward: ForwardModel, context: Tensor,
              target: Tensor, *, context_forward: ForwardModel | None = None,
              context_weight: float = 1.0, steps: int = 3000, batch_size: int = 256,
              lr: float = 2e-3, warmup: int = 100, ema_decay: float = 0.995,
              grad_clip: float = 1.0, time_sampling: str = "lognormal",
              views: Tensor | None = None, seed: int = 0, log_every: int = 100) -> FitResult:
    """Fit ``gen`` by :func:`dfm_loss` on observation pairs ``context [N, C]``, ``target
    [N, M]`` only (the signals are never seen): ``tau`` from EDM's log-normal noise levels
    (``ln sigma ~ N(-1.2, 1.2^2)`` mapped to process time) or, with ``time_sampling="uniform"``
    (the paper's), uniform on ``[t_min, t_max]``; Adam with warm-up, gradient clipping and a
    weight EMA (:func:`reverie.train.interpolants.train_interpolant`'s loop). Returns the EMA
    network in ``.ema``. ``views [N, P]``: the target view of each pair (the paper's target
    camera), passed last to ``gen`` and ``forward``."""
    _pairs(context, target)
    if views is not None and (not isinstance(views, Tensor) or views.ndim != 2
                              or views.shape[0] != context.shape[0]):
        got = tuple(views.shape) if isinstance(views, Tensor) else type(views).__name__
        raise ValueError(f"views must be [N, P] with one row per pair (N={context.shape[0]}), "
                         f"got {got}")
    positive_int("batch_size", batch_size)
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
    if not context_weight >= 0:
        raise ValueError(f"context_weight must be >= 0, got {context_weight}")
    context, target = context.float(), target.float()

    def batch_loss(model: nn.Module, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, context.shape[0], (batch_size,), generator=g)
        t = _sample_times(batch_size, process, time_sampling, -1.2, 1.2, g).float()
        eps = torch.randn(batch_size, target.shape[1], generator=g)
        return dfm_loss(model, process, forward, context[idx], target[idx], eps, t,
                        context_forward=context_forward, context_weight=context_weight,
                        view=None if views is None else views[idx].float())

    return _fit(gen, batch_loss, steps, lr, warmup, ema_decay, grad_clip, seed, log_every)


class ForwardModelDenoiser(DenoiserBase):
    """``D(o_t^tau, tau) = F_t(gen(o_c, o_t^tau, tau))``: the target-observation denoiser of a
    trained generator (Tewari et al. 2023; with a target ``view``, both take it last);
    ``.signal`` holds the signal of the latest call."""

    def __init__(self, gen: Callable[[Tensor, Tensor, Tensor], Tensor], process: GaussianProcess,
                 forward: ForwardModel, context: Tensor, view: Tensor | None = None):
        self.process = process
        param = next(iter(gen.parameters()), None) if isinstance(gen, nn.Module) else None
        view = view if view is None or param is None else view.to(param.dtype)
        self.gen, self.forward = _with_view(gen, view), _with_view(forward, view)
        self.dtype = None if param is None else param.dtype  # run a network in its own dtype
        self.context = context if self.dtype is None else context.to(self.dtype)
        self.signal: Tensor | None = None

    def __call__(self, x: Tensor, t: float | Tensor, **cond: object) -> Tensor:
        t = time_tensor(t, x)
        x_in, t_in = (x, t) if self.dtype is None else (x.to(self.dtype), t.to(self.dtype))
        with torch.no_grad():
            self.signal = self.gen(self.context, x_in, t_in)  # x_hat = gen(o_c, o_t^tau, tau)
            return self.forward(self.signal).to(x.dtype)  # F_t(x_hat)


def dfm_sample(gen: Callable[[Tensor, Tensor, Tensor], Tensor], process: GaussianProcess,
               forward: ForwardModel, context: Tensor, target_dim: int, *, n: int = 1,
               steps: int = 25, sampler: str = "dpmpp_2m", generator: Generators = None,
               return_observation: bool = False, view: Tensor | None = None,
               **options: object) -> Tensor | tuple[Tensor, Tensor]:
    """Signals ``[n, D]`` of ``p(x | o_c)`` for one context observation ``context [C]`` (or one
    per sample, ``[n, C]``): walk the target observation ``[n, target_dim]`` from noise with
    :class:`ForwardModelDenoiser` and ``sampler`` (``options`` go to it), and return the
    generator's signal at the last model call (and the walked target observation when
    ``return_observation``). ``view``: the target view (``[P]`` or ``[n, P]``) of a model
    trained with ``views``; the signal's law should not depend on it."""
    positive_int("n", n)
    positive_int("target_dim", target_dim)
    if not isinstance(context, Tensor) or context.ndim not in (1, 2) or (
            context.ndim == 2 and context.shape[0] != n):
        got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(f"context must be one observation [C] or one per sample [{n}, C], "
                         f"got {got}")
    ctx = context.expand(n, -1) if context.ndim == 1 else context
    if view is not None and view.ndim == 1:
        view = view.expand(n, -1)
    den = ForwardModelDenoiser(gen, process, forward, ctx, view)
    noise = randn((n, target_dim), generator, dtype=torch.float64)
    obs = sample(den, noise, sampler, steps, generator=generator, **options)
    signal = den.signal.to(torch.float64)
    return (signal, obs) if return_observation else signal

"""Diffusion policy in miniature: an exact action-chunk law and the real-time-iteration rollout.

Duan, Yin & Kragic 2025, "Real-Time Iteration Scheme for Diffusion Policy" (RTI-DP): a
diffusion policy predicts a chunk of the next ``H`` actions from an observation; instead of
denoising each control step's chunk from pure noise, RTI-DP takes the previous step's chunk,
shifts it forward by the actions executed since (the tail padded), noises it to an
intermediate step and runs only the remaining ``k`` denoising steps with the new observation
(:func:`reverie.samplers.warm_start`). Here the policy is exact: the chunk given an
observation is a Gaussian process over the action times, so its conditional denoiser is
closed form (:class:`reverie.reference.Gaussian`) and every chunk's law can be compared with
the exact conditional law. :meth:`GaussianPolicy.contraction` is the paper's contraction
analysis in closed form: the warm-started chain maps an error ``d`` of the warm start's mean to
``A d`` with ``|A| < 1`` (so errors shrink geometrically over control steps).

Discrete actions (:class:`GripperPolicy`): a warm start at low noise keeps the previous
chunk's discrete mode (a gripper stays open when it should close); RTI-DP scales the discrete
action down (its released code divides the gripper action by 10 in the data) so the warm
start's noise can switch it. ``rollout(renoise=False)`` is the released code's warm start
(the shifted clean chunk taken as the state at the starting step, no noise added).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference import Gaussian, GaussianMixture

__all__ = ["GaussianPolicy", "GripperPolicy", "shift_chunk", "rollout"]


class GaussianPolicy:
    """An exact "diffusion policy": the chunk ``a in R^H`` given observation ``o`` is
    ``N(mean_fn(o), C)`` with ``C_ij = scale^2 exp(-(i - j)^2 / (2 lengthscale^2)) + jitter
    delta_ij`` (a squared-exponential Gaussian process over the ``H`` action times)."""

    def __init__(self, mean_fn: Callable[[Any], Tensor], horizon: int, *, scale: float = 0.3,
                 lengthscale: float = 2.0, jitter: float = 1e-3):
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 2:
            raise ValueError(f"horizon must be an integer >= 2, got {horizon!r}")
        if not callable(mean_fn):
            raise TypeError(f"mean_fn must be callable, got {type(mean_fn).__name__}")
        self.mean_fn, self.horizon = mean_fn, horizon
        i = torch.arange(horizon, dtype=torch.float64)
        self.cov = scale**2 * torch.exp(-((i[:, None] - i) ** 2) / (2 * lengthscale**2)) \
            + jitter * torch.eye(horizon, dtype=torch.float64)

    def law(self, obs: Any) -> Gaussian:
        """The exact conditional law of the chunk given ``obs``."""
        mean = torch.as_tensor(self.mean_fn(obs), dtype=torch.float64).reshape(-1)
        if mean.shape != (self.horizon,):
            raise ValueError(f"mean_fn must return {self.horizon} actions, got shape "
                             f"{tuple(mean.shape)}")
        return Gaussian(mean, self.cov)

    def denoiser(self, obs: Any, process: GaussianProcess) -> Denoiser:
        """The exact conditional denoiser ``E[a | a_t, obs]`` under ``process``."""
        return self.law(obs).denoiser(process)

    def contraction(self, process: GaussianProcess, t: float) -> float:
        """RTI-DP's contraction factor in closed form: starting at ``t`` from ``alpha a' +
        sigma z``, the exact reverse process returns a chunk whose mean error is ``A (a' - m)``
        with ``A = alpha^2 C (alpha^2 C + sigma^2 I)^-1``; its spectral norm
        ``max_l alpha^2 l / (alpha^2 l + sigma^2) < 1`` over the eigenvalues ``l`` of ``C``."""
        a, s = float(process.alpha(t)), float(process.sigma(t))
        lam = float(torch.linalg.eigvalsh(self.cov).max())
        return a**2 * lam / (a**2 * lam + s**2)


class GripperPolicy:
    """A discrete action in miniature: a chunk of ``H`` gripper commands, all open
    (``-scale``) or all closed (``+scale``), closed with probability ``p_fn(o)``: a
    two-component mixture, each component of standard deviation ``spread * scale``. RTI-DP's
    scaling is ``scale < 1`` (the command is read back by its sign, :meth:`closed`)."""

    def __init__(self, p_fn: Callable[[Any], float], horizon: int, *, scale: float = 1.0,
                 spread: float = 0.05):
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 2:
            raise ValueError(f"horizon must be an integer >= 2, got {horizon!r}")
        if not scale > 0 or not spread > 0:
            raise ValueError(f"scale and spread must be positive, got {scale!r}, {spread!r}")
        self.p_fn, self.horizon, self.scale, self.spread = p_fn, horizon, scale, spread

    def law(self, obs: Any) -> GaussianMixture:
        p = float(self.p_fn(obs))
        if not 0 < p < 1:
            raise ValueError(f"p_fn must return a probability in (0, 1), got {p!r}")
        means = self.scale * torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
        means = means.expand(2, self.horizon)
        return GaussianMixture(means, (self.spread * self.scale) ** 2, [1 - p, p])

    def denoiser(self, obs: Any, process: GaussianProcess) -> Denoiser:
        return self.law(obs).denoiser(process)

    def closed(self, chunk: Tensor) -> Tensor:
        """Whether each chunk ``[n, H]`` commands a closed gripper (the sign of its mean)."""
        return chunk.mean(1) > 0


def shift_chunk(chunk: Tensor, shift: int = 1, pad: str = "hold") -> Tensor:
    """Shift action chunks ``[n, H, ...]`` forward in time by ``shift`` executed actions
    (RTI-DP's warm start): ``out[:, j] = chunk[:, j + shift]``; the ``shift`` tail actions
    (past the old plan) are the last action held (``pad="hold"``) or extrapolated linearly
    from the last two (``"linear"``). A negative ``shift`` shifts backwards (the head padded
    the same way); ``0`` returns the chunk."""
    if not isinstance(chunk, Tensor) or chunk.ndim < 2:
        got = tuple(chunk.shape) if isinstance(chunk, Tensor) else type(chunk).__name__
        raise ValueError(f"chunk must be a tensor [n, H, ...], got {got}")
    h = chunk.shape[1]
    if not isinstance(shift, int) or isinstance(shift, bool) or abs(shift) >= h:
        raise ValueError(f"shift must be an integer with |shift| < H = {h}, got {shift!r}")
    if pad not in ("hold", "linear"):
        raise ValueError(f"pad must be 'hold' or 'linear', got {pad!r}")
    if shift < 0:  # backwards: the mirror image of a forward shift
        return shift_chunk(chunk.flip(1), -shift, pad).flip(1)
    if shift == 0:
        return chunk
    kept = chunk[:, shift:]
    steps = torch.arange(1, shift + 1, dtype=chunk.dtype).reshape(1, -1, *[1] * (chunk.ndim - 2))
    slope = kept[:, -1:] - kept[:, -2:-1] if pad == "linear" and kept.shape[1] > 1 else 0.0
    tail = kept[:, -1:] + steps * slope  # hold: slope 0
    return torch.cat([kept, tail], dim=1)


def rollout(policy: GaussianPolicy | GripperPolicy, observations: Sequence[Any],
            process: GaussianProcess, *, n: int, sampler: str = "dpmpp_2m_sde", steps: int = 20,
            strength: float | None = 0.5, execute: int = 1, shift: int | None = None,
            pad: str = "hold", first: Tensor | None = None, renoise: bool = True,
            generator: torch.Generator | None = None) -> dict[str, list]:
    """RTI-DP's control loop, ``n`` parallel rollouts: at each control step the chunk is drawn
    with the exact denoiser conditioned on that step's observation; the first step from noise
    (or warm-started from ``first``, a previous plan, shifted the same way), each later step
    warm-started (``init``/``strength``) from the previous chunk shifted by ``shift``
    (default ``execute``, the actions executed per control step). ``strength=None``: every
    step from noise with all ``steps`` steps (the baseline). Returns ``chunks`` (one ``[n, H]``
    per step) and ``nfe`` (denoiser calls per step, per sample). ``renoise=False``: the
    released code's warm start, the shifted chunk itself as the state at the starting step."""
    from reverie.samplers import SAMPLERS, resolve_grid, run, sample

    if not observations:
        raise ValueError("observations must be a non-empty sequence")
    shift = execute if shift is None else shift
    chunks: list[Tensor] = []
    nfe: list[int] = []
    prev = first
    for obs in observations:
        den = policy.denoiser(obs, process)
        calls = [0]

        def fn(x, t, _den=den, _calls=calls):  # count the network evaluations
            _calls[0] += 1
            return _den.fn(x, t)

        counted = Denoiser(fn, process, prediction="x0")
        noise = torch.randn(n, policy.horizon, generator=generator, dtype=torch.float64)
        if strength is None or prev is None:
            x = sample(counted, noise, sampler, steps, generator=generator)
        else:
            init = shift_chunk(prev, shift, pad)
            if renoise:  # x_t = alpha(t_k) init + sigma(t_k) noise
                x = sample(counted, noise, sampler, steps, generator=generator, init=init,
                           strength=strength)
            else:  # x_t = init
                g = resolve_grid(SAMPLERS[sampler], process, steps, None)
                k = steps - min(int(steps * strength), steps)
                x = run(sampler, counted, init, g[k:], generator=generator).x0
        chunks.append(x)
        nfe.append(calls[0])
        prev = x
    return {"chunks": chunks, "nfe": nfe}

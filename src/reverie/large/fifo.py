"""FIFO-Diffusion (Kim et al. 2024, "FIFO-Diffusion: generating infinite videos from text
without training"): sequences of any length from a model of a fixed window of frames.

A queue holds ``m = window * partitions`` frames at increasing noise levels
``tau_1 < ... < tau_m`` (the head is the cleanest). One *diagonal denoising* pass moves every
frame one level down (``tau_k -> tau_{k-1}``) with the model run on windows of consecutive
frames, each frame at its own level; the head reaches ``tau_0`` (clean) and is dequeued, and a
pure-noise frame is enqueued at the tail. *Latent partitioning* splits the queue into
``partitions`` blocks of ``window`` frames (each block spans ``window`` of the ``m`` levels,
so the gap between neighbouring frames' levels shrinks as ``partitions`` grows). *Look-ahead
denoising* runs windows at a stride of ``window / 2`` and updates only their latter half, so
every frame is denoised with ``window / 2`` cleaner frames before it (the most recent output
frames in front of the head, here at the clean level).

The model is a *frame denoiser*: ``denoiser(x, t)`` with ``x`` ``[B, F, ...]`` (frames on dim
1) and ``t`` ``[B, F]`` (one time per frame) returns the data prediction; see
:class:`FrameDenoiser` to wrap a network that takes per-frame timesteps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer, positive_int
from reverie._random import Generators, randn
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase, to_x0
from reverie.grids import make_grid
from reverie.process import GaussianProcess

__all__ = ["FrameDenoiser", "fifo", "fifo_ladder", "fifo_noise_frames"]


class FrameDenoiser(DenoiserBase):
    """A network ``fn(x [B, F, ...], t [B, F])`` that takes one timestep per frame and
    predicts ``prediction`` (``eps``, ``x0``, ``v``, ...) as a frame denoiser; ``window``: the
    number of frames it was trained on. Called with a ``[B]`` time it runs every frame at that
    time (an ordinary reverie denoiser)."""

    def __init__(self, fn: Callable[..., Tensor], process: GaussianProcess,
                 prediction: str = "eps", window: int | None = None):
        self.fn, self.process, self.prediction, self.window = fn, process, prediction, window

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = _frame_times(t, x)
        out = self.fn(x, t, **cond)
        b, f = x.shape[:2]
        x0 = to_x0(out.flatten(0, 1), self.prediction, x.flatten(0, 1), t.flatten(), self.process)
        return x0.reshape(b, f, *x.shape[2:])


def _frame_times(t: float | Tensor, x: Tensor) -> Tensor:
    if isinstance(t, Tensor) and t.ndim == 2:
        if t.shape != x.shape[:2]:
            raise ValueError(f"per-frame times must be [batch, frames] = {list(x.shape[:2])}, "
                             f"got {list(t.shape)}")
        return t
    return time_tensor(t, x)[:, None].expand(x.shape[0], x.shape[1])


def fifo_ladder(process: GaussianProcess, levels: int, grid: str | None = None) -> Tensor:
    """The queue's noise levels ``tau_0 = t_clean < tau_1 < ... < tau_levels = t_max``: the
    ``levels``-step time grid of ``process`` (``grid`` name; default the process's) reversed."""
    return make_grid(process, levels, grid or process.default_grid).flip(0)


def fifo_noise_frames(frames: int, window: int, partitions: int = 1) -> int:
    """How many standard-normal frames :func:`fifo` draws for ``frames`` output frames: the
    first window's, one per queue position and one per enqueued frame."""
    m = window * partitions
    return window + m + frames + m - window


def fifo(denoiser: DenoiserBase, frames: int, shape: tuple[int, ...], *, window: int | None = None,
         partitions: int = 1, lookahead: bool = True, grid: str | None = None,
         ladder: Tensor | None = None, sampler: str = "dpmpp_2m", steps: int | None = None,
         generator: Generators = None, noise: Tensor | None = None,
         solver: str = "ddim", cond: Mapping[str, Any] | None = None) -> Tensor:
    """``frames`` frames ``[B, frames, *shape[1:]]`` of a sequence from a frame denoiser of
    ``window`` frames (default ``denoiser.window``), by FIFO-Diffusion (Kim et al. 2024,
    Algorithm 1 with latent partitioning, sec. 4.1, and look-ahead denoising, sec. 4.2).

    ``shape`` is ``(B, *frame_shape)``. The first ``window`` frames are sampled with
    ``sampler`` in ``steps`` steps (default ``window * partitions``) and noised onto the
    ladder as in the paper (the cleaner queue positions hold copies of the first frame, whose
    outputs are dropped). Each queue step moves every frame one level with ``solver``:
    ``"ddim"`` (the paper's) or ``"dpmpp_2m"`` (DPM-Solver++(2M), Lu et al. 2022, each frame
    keeping its previous data prediction as it moves up the queue). ``ladder``: the levels
    ``tau_0 < ... < tau_m`` (default :func:`fifo_ladder` of ``grid``). ``noise``: the
    standard-normal frames to use, ``[B, fifo_noise_frames(...), *frame_shape]`` (default:
    drawn from ``generator``); the result is then a deterministic function of ``noise``.
    Raises ``ValueError`` for a window longer than the model's or (look-ahead) an odd one."""
    from reverie.samplers import sample

    proc = denoiser.process
    own = getattr(denoiser, "window", None)
    f = own if window is None else window
    if f is None:
        raise ValueError("pass window= (the model's frame count); this denoiser does not say")
    positive_int("window", f)
    positive_int("partitions", partitions)
    integer("frames", frames, 1)
    if own is not None and f > own:
        raise ValueError(f"the FIFO window of {f} frames is longer than the model's window of "
                         f"{own} frames")
    if solver not in ("ddim", "dpmpp_2m"):
        raise ValueError(f"unknown FIFO solver {solver!r}; expected 'ddim' or 'dpmpp_2m'")
    if lookahead and f % 2:
        raise ValueError(f"look-ahead denoising needs an even window, got {f}")
    m = f * partitions
    tau = fifo_ladder(proc, m, grid) if ladder is None else torch.as_tensor(ladder).double()
    if tau.shape != (m + 1,) or not bool((tau[1:] > tau[:-1]).all()):
        raise ValueError(f"ladder must be {m + 1} increasing times (window * partitions + 1), "
                         f"got {list(tau.shape)}")
    b, frame = shape[0], tuple(shape[1:])
    need = fifo_noise_frames(frames, f, partitions)
    if noise is None:
        noise = randn((b, need, *frame), generator, dtype=torch.float64)
    elif tuple(noise.shape) != (b, need, *frame):
        raise ValueError(f"noise must be [{b}, {need}, {', '.join(map(str, frame))}] for "
                         f"{frames} frames, got {list(noise.shape)}")
    alpha = proc.alpha(tau).to(noise)
    sigma = proc.sigma(tau).to(noise)
    sigma[0] = 0.0  # the clean end, exactly
    lam = torch.log(alpha) - torch.log(sigma)  # half log-SNR per level (+inf at tau_0)
    h = lam[:-1] - lam[1:]  # the step tau_k -> tau_{k-1} in log-SNR, k = 1..m
    r = torch.cat([h[1:], h[-1:]]) / h  # previous step / this step (2M's ratio)
    cond = dict(cond or {})
    draws = iter(noise.unbind(1))

    # the first window, sampled, then noised onto the ladder (FIFO-Diffusion's initialisation)
    first = torch.stack([next(draws) for _ in range(f)], 1)
    first = sample(denoiser, first, sampler, steps or m, grid, cond=cond)
    src = [first[:, max(0, k - (m - f))] for k in range(m)]
    queue = torch.stack([alpha[k + 1] * src[k] + sigma[k + 1] * next(draws) for k in range(m)], 1)
    half = f // 2
    context = first[:, :1].expand(b, half, *frame) if lookahead else first[:, :0]

    out, prev = [], None
    for _ in range(frames + m - f):
        full = torch.cat([context, queue], 1)  # context at tau_0, queue at tau_1..tau_m
        level = torch.cat([torch.zeros(context.shape[1], dtype=torch.long),
                           torch.arange(1, m + 1)])
        # windows and the queue positions each one updates (latter halves when looking ahead)
        if lookahead:
            starts = range(0, half + m - f + 1, half)
            keep = [(s + half, s + f) for s in starts]
        else:
            starts = range(0, m, f)
            keep = [(s, s + f) for s in starts]
        x = torch.stack([full[:, s: s + f] for s in starts], 0).flatten(0, 1)  # [n*B, f, ...]
        t = torch.stack([tau[level[s: s + f]] for s in starts], 0)  # [n, f]
        t = t.repeat_interleave(b, 0).to(noise.dtype)
        x0 = denoiser(x, t, **{k: _rep(v, len(starts), b) for k, v in cond.items()})
        x0 = x0.reshape(len(starts), b, f, *frame)
        pred = torch.empty_like(full)
        for j, (s, (lo, hi)) in enumerate(zip(starts, keep)):
            pred[:, lo:hi] = x0[j, :, lo - s: hi - s]
        pred = pred[:, context.shape[1]:]  # the queue's predictions, [B, m, ...]
        # one step per frame, tau_k -> tau_{k-1} (k = 1..m), in data prediction (DPM-Solver++)
        d = pred
        if solver == "dpmpp_2m" and prev is not None:  # D = (1 + 1/2r) x0 - 1/2r x0_prev
            c = _frames(1 / (2 * r), queue)
            d = torch.cat([((1 + c) * pred - c * prev)[:, 1:-1], pred[:, -1:]], 1)
            d = torch.cat([pred[:, :1], d], 1)  # first order onto the clean end
        ratio = _frames(sigma[:-1] / sigma[1:], queue)
        gain = _frames(alpha[:-1] * -torch.expm1(-h), queue)
        queue = ratio * queue + gain * d  # = alpha_{k-1} x0 + sigma_{k-1} eps for DDIM
        queue[:, :1] = pred[:, :1]  # the head lands on the clean end: its prediction
        prev = torch.cat([pred[:, 1:], pred[:, -1:]], 1)  # memory moves with its frame
        head = queue[:, :1]
        out.append(head)
        if lookahead:
            context = torch.cat([context[:, 1:], head], 1)
        tail = sigma[m] * next(draws)[:, None]
        queue = torch.cat([queue[:, 1:], tail], 1)
    return torch.cat(out[m - f:], 1)


def _frames(v: Tensor, like: Tensor) -> Tensor:
    """A per-frame coefficient ``[F]`` broadcast against ``[B, F, ...]``."""
    return v.reshape(1, -1, *(1,) * (like.ndim - 2))


def _rep(v: Any, n: int, b: int) -> Any:
    if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == b:
        return v.repeat(n, *(1,) * (v.ndim - 1))
    return v

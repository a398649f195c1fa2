"""Image-conditional diffusion for depth, one step: Garcia Martin et al. 2025, "Fine-Tuning
Image-Conditional Diffusion Models is Easier than You Think", in miniature.

Marigold (Ke et al. 2024) fine-tunes an image generator into a depth estimator: the denoiser
sees the condition image *concatenated* with the noisy depth map, and inference ensembles
several multi-step DDIM runs. Garcia Martin et al. find that its one-step results were bad
only because of a pipeline bug: with diffusers' ``leading`` timestep spacing, a one-step DDIM
run feeds pure noise to the model *labelled* ``t = 1`` (nearly clean), so the model returns
the noise. With the first timestep at ``t_max`` (``trailing`` spacing) a single deterministic
step is as good as the ensemble, at a small fraction of the calls. Then, since inference is
one step, they fine-tune that step end to end with the task loss: input zeros (the noise's
mean) at ``t_max``, output the data prediction, scale-and-shift-invariant L1 to the depth.

Here the images are :func:`reverie.depth.render_photos` (ray-cast floor / wall / box scenes
with exact depth), depth is encoded as GRIN's :class:`~reverie.depth.LogDepth`, the process is
Stable Diffusion's discrete VP (``VP.scaled_linear``, ``t`` in ``0 .. 999``, ``v``
prediction, as Marigold), and the network a small dilated CNN (:class:`ConcatNet`).

* :func:`train_conditional` -- Marigold's diffusion training on (image, depth) pairs.
* :func:`fixed_pipeline` -- diffusers' DDIM pipeline: from unit noise, ``steps`` DDIM steps
  on the ``trailing`` (fixed) or ``leading`` (Marigold's, broken at one step) grid.
* :func:`ensemble` -- Marigold's inference: the mean of several multi-step runs.
* :func:`one_step` -- the paper's estimate: the data prediction at ``t_max`` from zeros.
* :func:`finetune_one_step`, :func:`ssi_l1` -- end-to-end fine-tuning of that step with the
  task loss.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser, DenoiserBase
from reverie.depth.grin import LogDepth, fit_v
from reverie.depth.scenes import pixel_grid, render_photos
from reverie.grids import make_grid
from reverie.process import GaussianProcess
from reverie.samplers import sample

__all__ = ["ConcatNet", "conditional_denoiser", "train_conditional", "fixed_pipeline",
           "ensemble", "one_step", "affine_align", "ssi_l1", "finetune_one_step", "photo_dataset"]


class ConcatNet(nn.Module):
    """``net(x_t, t, image=[B, H, W]) -> v``: Marigold's input layout in miniature -- the
    condition image, the pixel coordinates and the noisy map concatenated as channels, then
    residual dilated 3x3 convolutions (dilations 1, 2, 4, 8, 1: the whole map in view) with
    the time embedding added in each block."""

    def __init__(self, hidden: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8, 1)):
        super().__init__()
        self.config = {"hidden": hidden, "dilations": tuple(dilations)}
        self.inp = nn.Conv2d(4, hidden, 3, padding=1)  # (image, u, v, x_t)
        self.t_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden * len(dilations)))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(4, hidden), nn.SiLU(),
                          nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d))
            for d in dilations)
        self.out = nn.Sequential(nn.GroupNorm(4, hidden), nn.SiLU(), nn.Conv2d(hidden, 1, 3,
                                                                               padding=1))

    def forward(self, x: Tensor, t: Tensor, *, image: Tensor) -> Tensor:
        if image.shape != x.shape:
            raise ValueError(f"image must be shaped like the map {list(x.shape)}, got "
                             f"{list(image.shape)}")
        b, size = x.shape[0], x.shape[-1]
        uv = pixel_grid(size).to(x.dtype).T.reshape(1, 2, size, size).expand(b, -1, -1, -1)
        h = self.inp(torch.cat([2 * image[:, None].to(x.dtype) - 1, uv, x[:, None]], 1))
        half = self.config["hidden"] // 2  # sinusoidal embedding of the training step
        ang = t.reshape(-1).expand(b)[:, None].to(x.dtype) * torch.exp(
            -math.log(1000.0) * torch.arange(half, dtype=x.dtype) / half)
        emb = self.t_mlp(torch.cat([ang.sin(), ang.cos()], -1)).chunk(len(self.blocks), -1)
        for block, e in zip(self.blocks, emb):
            h = h + block(h + e[:, :, None, None])
        return self.out(h)[:, 0]


def conditional_denoiser(net: nn.Module, process: GaussianProcess) -> Denoiser:
    """A reverie denoiser of the network (``v`` prediction); call with ``image=``."""
    return Denoiser(net, process, prediction="v")


def photo_dataset(n: int, size: int, seed: int, encoding: LogDepth | None = None
                  ) -> tuple[Tensor, Tensor]:
    """``(images, encoded depth)`` of ``n`` rendered scenes, float32 ``[n, size, size]``."""
    depth, image = render_photos(n, size, seed)
    enc = LogDepth() if encoding is None else encoding
    return image.float(), enc.encode(depth).float()


def _pairs(data: tuple[Tensor, Tensor] | None, scenes: int, size: int, seed: int
           ) -> tuple[Tensor, Tensor]:
    if data is None:
        return photo_dataset(scenes, size, seed)
    if (not isinstance(data, tuple) or len(data) != 2 or data[0].shape != data[1].shape
            or data[0].ndim != 3):
        raise ValueError("data must be (images [N, H, W], encoded depth [N, H, W])")
    return data[0].float(), data[1].float()


def train_conditional(process: GaussianProcess, *, steps: int = 2000, batch: int = 32,
                      size: int = 16, scenes: int = 4096, lr: float = 2e-3, seed: int = 0,
                      net: nn.Module | None = None, data: tuple[Tensor, Tensor] | None = None
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """Marigold's training in miniature: ``t`` a uniform training step, ``x_t`` the noised
    encoded depth, loss ``|net(x_t, t, image) - v|^2`` (Adam, cosine decay), on ``data`` =
    ``(images, encoded depth)`` or :func:`photo_dataset` (``scenes``, ``size``, ``seed``).
    Returns the network (eval mode) and a record."""
    gen = torch.Generator().manual_seed(seed)
    net = ConcatNet() if net is None else net
    images, data = _pairs(data, scenes, size, seed)

    def draw(gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        idx = torch.randint(len(data), (batch,), generator=gen)
        t = torch.randint(0, int(process.t_max) + 1, (batch,), generator=gen).double()
        return data[idx].double(), t, {"image": images[idx]}

    return fit_v(net, process, draw, steps=steps, lr=lr, gen=gen)


def fixed_pipeline(denoiser: DenoiserBase, noise: Tensor, steps: int = 1,
                   spacing: str = "trailing", *, cond: dict[str, Any] | None = None) -> Tensor:
    """Diffusers' DDIM pipeline (``eta = 0``): start from the unit ``noise`` whatever the first
    timestep, walk ``make_grid(process, steps, spacing)``. With ``trailing`` spacing the first
    timestep is ``t_max`` and one step returns the data prediction there (the paper's fix);
    with ``leading`` (Marigold's) one step evaluates at ``t_min`` -- pure noise labelled
    nearly clean, the bug the paper found."""
    grid = make_grid(denoiser.process, steps, spacing)
    # reverie's sample starts from sigma(t_0) noise; diffusers from the unit noise itself
    start = noise / float(denoiser.process.sigma(grid[0]))
    return sample(denoiser, start, "ddim", grid=grid, cond=cond)


def ensemble(denoiser: DenoiserBase, noise: Tensor, steps: int = 10, spacing: str = "trailing",
             *, cond: dict[str, Any] | None = None) -> Tensor:
    """Marigold's multi-step ensemble: one :func:`fixed_pipeline` run per member of ``noise``
    ``[members, B, ...]`` (``cond`` repeated), averaged per pixel. Costs
    ``members * steps`` calls."""
    if noise.ndim < 2:
        raise ValueError(f"noise must be [members, B, ...], got {list(noise.shape)}")
    m, b = noise.shape[:2]
    rep = {k: v.repeat(m, *([1] * (v.ndim - 1))) for k, v in (cond or {}).items()}
    runs = fixed_pipeline(denoiser, noise.reshape(m * b, *noise.shape[2:]), steps, spacing,
                          cond=rep)
    return runs.reshape(noise.shape).mean(0)


def one_step(denoiser: DenoiserBase, shape: tuple[int, ...] | torch.Size, *,
             noise: Tensor | None = None, dtype: torch.dtype = torch.float64, **cond: Any
             ) -> Tensor:
    """The paper's single-step deterministic estimate: the data prediction ``D(x, t_max)``
    with ``x`` the noise's mean (zeros) unless ``noise`` is given. One call; differentiable
    (used by :func:`finetune_one_step`)."""
    x = torch.zeros(shape, dtype=dtype) if noise is None else noise
    return denoiser(x, denoiser.process.t_max, **cond)


def affine_align(pred: Tensor, target: Tensor) -> Tensor:
    """``s pred + b`` with, per map, the least-squares scale and shift of ``pred`` onto
    ``target`` (maps ``[B, ...]`` of one shape)."""
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"need pred and target of one shape [B, ...], got {list(pred.shape)} "
                         f"and {list(target.shape)}")
    p, y = pred.flatten(1), target.flatten(1)
    pc, yc = p - p.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    s = (pc * yc).sum(1, keepdim=True) / (pc * pc).sum(1, keepdim=True).clamp_min(1e-12)
    return (s * pc + y.mean(1, keepdim=True)).reshape(pred.shape)  # b = mean y - s mean p


def ssi_l1(pred: Tensor, target: Tensor) -> Tensor:
    """The paper's depth loss (from Depth Anything): ``mean |s pred + b - target|`` after the
    per-map least-squares alignment :func:`affine_align`."""
    return (affine_align(pred, target) - target).abs().mean()


_LOSSES = {"ssi": ssi_l1, "l1": lambda p, y: (p - y).abs().mean()}


def finetune_one_step(net: nn.Module, process: GaussianProcess, *, steps: int = 300,
                      batch: int = 32, size: int = 16, scenes: int = 4096, lr: float = 3e-4,
                      loss: str = "l1", seed: int = 1, data: tuple[Tensor, Tensor] | None = None
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """End-to-end fine-tuning of the one-step estimate (the paper's "E2E FT"): a copy of
    ``net`` trained so that :func:`one_step` (zeros at ``t_max``, one call) minimises the task
    ``loss`` on the encoded depth -- ``"ssi"`` (:func:`ssi_l1`, the paper's affine-invariant
    loss) or ``"l1"`` (metric), on ``data`` as :func:`train_conditional`. ``net`` itself is
    left untouched. Returns the fine-tuned copy (eval mode) and a record."""
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")
    gen = torch.Generator().manual_seed(seed)
    tuned = copy.deepcopy(net).train()
    den = conditional_denoiser(tuned, process)
    images, data = _pairs(data, scenes, size, seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    start, losses = time.time(), []
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        pred = one_step(den, data[idx].shape, dtype=torch.float32, image=images[idx])
        value = _LOSSES[loss](pred, data[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    tuned.eval()
    tail = losses[-max(1, steps // 10):]
    return tuned, {"steps": steps, "loss": loss, "seconds": time.time() - start,
                   "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}

"""Plug-and-play diffusion distillation of classifier-free guidance (Hsiao, Wang, Hsieh & Lin
2024, "Plug-and-Play Diffusion Distillation", paper 32).

CFG costs two network calls per step (conditional and unconditional). The paper keeps the base
model frozen and trains a small *guide* network, plugged into it, so that one guided call
reproduces CFG's output: ``D_guided(x, t, c) = D(x, t, c) + G(x, t, c, D(x, t, c))`` is fitted to
``D_cfg = D(x, t, null) + w (D(x, t, c) - D(x, t, null))`` (their guide takes the base's features;
here, for vector data, the base's conditional prediction and the noisy input). Only the guide is
trained (the base is untouched, so one guide plugs into the same base at sampling time and can
be dropped again); its last layer starts at zero, so the untrained guided model is the plain
conditional model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reverie.accelerate.distill import _batches, _coef, _step
from reverie.denoisers import Denoiser, DenoiserBase
from reverie.grids import make_grid
from reverie.nets.mlp import SinusoidalEmbedding

__all__ = ["GuidedModel", "PnPResult", "pnp_distill"]


class GuideNet(nn.Module):
    """The small trainable guide ``G(x, t, c, D_c)``: an MLP on ``[c_in x, D_c, emb(log sigma / 4) +
    emb(c)]`` whose zero-initialised last layer outputs a correction to ``D_c``."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(32), nn.Linear(32, hidden))
        self.label = nn.Embedding(num_classes, hidden)
        self.body = nn.Sequential(nn.Linear(2 * dim + hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor, log_sigma: Tensor, labels: Tensor, d_c: Tensor) -> Tensor:
        emb = self.time(log_sigma / 4 * 100) + self.label(labels)
        return self.body(torch.cat([x, d_c, emb], dim=1))


class GuidedModel(nn.Module):
    """``fn(x, t, class_labels)``: the frozen ``base`` denoiser's conditional data prediction
    plus the guide's correction (one base call instead of CFG's two)."""

    def __init__(self, base: DenoiserBase, guide: GuideNet, sigma_data: float = 0.5):
        super().__init__()
        self.base, self.guide, self.sigma_data = base, guide, float(sigma_data)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None:
            raise ValueError("the guided model is class-conditional: pass class_labels")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        with torch.no_grad():
            d_c = self.base(x, t, class_labels=class_labels)  # the frozen base, one call
        sigma = self.base.process.sigma_ve(t.to(torch.float64))
        c_in = (1 / (sigma**2 + self.sigma_data**2).sqrt()).float()[:, None]  # EDM's input scaling
        g = self.guide(x.float() * c_in, torch.log(sigma).float(), class_labels, d_c.float())
        return d_c + g.to(d_c.dtype)


@dataclass
class PnPResult:
    """``denoiser`` (the guided model, data prediction; sample it with ``cond={"class_labels":
    ...}``), ``scale`` (the CFG scale it was trained for), ``history`` (iterations, loss, s)."""

    denoiser: Denoiser
    scale: float
    history: list[dict[str, Any]] = field(default_factory=list)


def pnp_distill(base: Denoiser, data: Tensor, labels: Tensor, *, scale: float, null_label: int,
                num_classes: int | None = None, hidden: int = 64, iters: int = 500,
                batch: int = 256, lr: float = 3e-3, grid: str = "karras",
                sigma_data: float = 0.5, seed: int = 0) -> PnPResult:
    """Train a guide (paper 32) so that ``base`` plus the guide reproduces CFG at ``scale``
    (``D_null + scale (D_c - D_null)``, ``null_label`` the unconditional class) in one call:
    ``iters`` Adam iterations on ``|D_guided - D_cfg|^2`` at ``data [n, dim]`` (labels
    ``labels [n]``) noised to the times of a 64-step ``grid``, weighted by EDM's ``1 / c_out^2``
    (``sigma_data``); the base stays frozen."""
    if not isinstance(base, DenoiserBase):
        raise TypeError(f"base must be a reverie denoiser, got {type(base).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {scale!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    if data.ndim != 2 or labels.shape != data.shape[:1]:
        raise ValueError("data must be [n, dim] with labels [n], got "
                         f"{tuple(data.shape)} and {tuple(labels.shape)}")
    k = num_classes if num_classes is not None else max(int(labels.max()), null_label) + 1
    guided = GuidedModel(base, GuideNet(data.shape[1], k, hidden), sigma_data)
    opt = torch.optim.Adam(guided.guide.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    both = torch.cat([data.to(torch.float32), labels[:, None].to(torch.float32)], dim=1)
    rows = _batches(both, batch, gen)
    times = make_grid(base.process, 64, grid)[:-1]
    t0, loss_v = time.perf_counter(), float("nan")
    for _ in range(iters):
        xb = next(rows)
        x, c = xb[:, :-1], xb[:, -1].long()
        t = times[torch.randint(0, len(times), (x.shape[0],), generator=gen)]
        a, s = _coef(base.process, t, x)
        z = a * x + s * torch.randn(x.shape, generator=gen)
        with torch.no_grad():  # the CFG target: two base calls
            d_c = base(z, t, class_labels=c)
            d_u = base(z, t, class_labels=torch.full_like(c, null_label))
            target = d_u + scale * (d_c - d_u)
        w = (s**2 + a**2 * sigma_data**2) / (s * sigma_data) ** 2  # EDM's weight 1 / c_out^2
        loss = (w * (guided(z, t, class_labels=c) - target) ** 2).mean()
        loss_v = _step(opt, loss)
    guided.eval()
    for p in guided.guide.parameters():
        p.requires_grad_(False)
    history = [{"iters": iters, "loss": loss_v, "seconds": time.perf_counter() - t0}]
    return PnPResult(Denoiser(guided, base.process, "x0", dtype=torch.float32), float(scale),
                     history)


def _register() -> None:
    from reverie.accelerate import register

    register("pnp_distill", pnp_distill, "distill", "Plug-and-play distillation, Hsiao et al. "
             "2024 (paper 32)", "a small guide on the frozen base learns CFG's output at one "
             "scale: one network call per step instead of two")


_register()

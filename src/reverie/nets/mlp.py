"""A time- and class-conditioned residual MLP for low-dimensional diffusion models."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MLP", "SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar (Vaswani et al. 2017; the noise-level
    embedding of DDPM / EDM): ``[cos(w_k t), sin(w_k t)]`` with ``w_k = max_period^(-k/half)``."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class MLP(nn.Module):
    """``F(x, t, class_labels)``: a residual MLP on vectors ``x [B, dim]``.

    The time input ``t [B]`` (whatever the training objective feeds: the process time, or EDM's
    ``c_noise = log(sigma) / 4``) is multiplied by ``time_scale`` and embedded with sinusoids;
    ``num_class_embeds`` > 0 adds a learned class embedding (labels ``0 .. num_class_embeds-1``;
    the bundled models reserve the last one as the null class for classifier-free guidance).
    Each of the ``depth`` blocks is ``h <- h + W2 silu(W1 LayerNorm(h) + emb)``.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        time_dim: int = 64,
        time_scale: float = 100.0,
        num_class_embeds: int = 0,
    ):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(
                f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}"
            )
        self.config: dict[str, Any] = dict(
            dim=dim,
            hidden=hidden,
            depth=depth,
            time_dim=time_dim,
            time_scale=time_scale,
            num_class_embeds=num_class_embeds,
        )
        self.time_scale = float(time_scale)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(time_dim),
            nn.Linear(time_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.class_embed = nn.Embedding(num_class_embeds, hidden) if num_class_embeds else None
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.lin1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.emb = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.lin2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t * self.time_scale)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("this MLP is class-conditional: pass class_labels")
            emb = emb + self.class_embed(class_labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for norm, l1, le, l2 in zip(self.norms, self.lin1, self.emb, self.lin2):
            h = h + l2(nn.functional.silu(l1(norm(h)) + le(emb)))
        return self.out(nn.functional.silu(self.out_norm(h)))

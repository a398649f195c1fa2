"""A small bidirectional transformer for masked-diffusion language models.

It is the network of MDLM without time conditioning (Sahoo et al. 2024; the SUBS
parameterisation makes the denoiser's target independent of ``t``, so the network sees only
the partially masked sequence): token + learned position embeddings,
pre-LayerNorm blocks with full (non-causal) self-attention and a GELU MLP, and a linear
head to one logit per token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["TinyTransformer"]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )
        self.dropout = dropout

    def forward(self, h: Tensor, keys: Tensor | None = None) -> Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=keys,  # [B, 1, 1, L] True = a real token (padding is never attended)
            dropout_p=self.dropout if self.training else 0.0,
        )  # bidirectional: no causal mask
        h = h + F.dropout(
            self.proj(a.transpose(1, 2).reshape(b, n, d)), self.dropout, self.training
        )
        return h + F.dropout(self.mlp(self.norm2(h)), self.dropout, self.training)


class TinyTransformer(nn.Module):
    """``forward(x: LongTensor[B, L], t=None, attention_mask=None) -> logits[B, L, vocab_size]``
    for ``L <= length``.

    ``t`` is accepted and ignored (no time conditioning, as MDLM recommends with SUBS).
    ``attention_mask`` (bool ``[B, L]``, True = a real token) serves left-padded rows: padding
    is never attended to and each row's positions count from its first real token, so a
    padded row gives the logits it gives alone.
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.config = {
            "vocab_size": vocab_size,
            "length": length,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(
        self, x: Tensor, t: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        n = x.shape[1]
        if n > self.pos.shape[0]:
            raise ValueError(f"sequence length {n} exceeds this model's length {self.pos.shape[0]}")
        keys = None
        if attention_mask is None:
            h = self.tok(x) + self.pos[:n]
        else:
            real = attention_mask.to(device=x.device, dtype=torch.bool)
            h = self.tok(x) + self.pos[(real.long().cumsum(-1) - 1).clamp_min(0)]  # own positions
            keys = real[:, None, None, :]
        for blk in self.blocks:
            h = blk(h, keys)
        return self.head(self.norm(h))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TinyTransformer:
        return cls(**config)

"""An MAE-style tokenizer for latent diffusion: MAETok (Chen et al. 2025, "Masked Autoencoders
Are Effective Tokenizers for Diffusion Models") in miniature.

MAETok is a plain (not variational) autoencoder whose encoder is a transformer over the image
patches *and* a set of learnable latent tokens; during training a random fraction of the patch
tokens is removed before the encoder (mask modeling) while the decoder must rebuild the whole
image from the latent tokens alone. The paper's claim: mask modeling gives a more
discriminative latent space (fewer Gaussian-mixture modes), which a diffusion model learns
more easily. Here: the pixel-reconstruction target only (no HOG / DINO / CLIP auxiliary
decoders), tiny transformers, 8x8 digits; :meth:`MAETokenizer.encode` gives the latent that a
reverie diffusion model is trained and sampled on, :meth:`MAETokenizer.decode` maps samples
back (``mask_ratio = 0`` is the plain autoencoder baseline).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie.nets.ssm import patchify, unpatchify

__all__ = ["MAETokenizer", "train_tokenizer"]


class MAETokenizer(nn.Module):
    """``encode(x [B, C, H, W], mask_ratio) -> z [B, latent_tokens * latent_dim]``,
    ``decode(z) -> x``. Encoder: patch tokens (the kept ones) and ``latent_tokens`` learned
    tokens through a transformer; the latent is the latent tokens' outputs projected to
    ``latent_dim``. Decoder: the latent tokens and one learned mask token per patch position
    through a transformer; the patch positions' outputs are projected to pixels."""

    def __init__(self, shape: tuple[int, int, int] = (1, 8, 8), patch: int = 2, dim: int = 32,
                 latent_tokens: int = 4, latent_dim: int = 4, depth: int = 2, heads: int = 4):
        super().__init__()
        self.shape, self.patch = tuple(int(v) for v in shape), int(patch)
        c, h, w = self.shape
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch {patch}")
        self.tokens = n = (h // patch) * (w // patch)
        per = c * patch * patch
        self.latent_tokens, self.latent_dim = latent_tokens, latent_dim
        self.embed = nn.Linear(per, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, n, dim))
        self.latents = nn.Parameter(0.02 * torch.randn(1, latent_tokens, dim))
        self.to_latent = nn.Linear(dim, latent_dim)
        self.from_latent = nn.Linear(latent_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dec_pos = nn.Parameter(0.02 * torch.randn(1, n + latent_tokens, dim))

        def stack() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0,
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

        self.encoder, self.decoder = stack(), stack()
        self.to_pixels = nn.Linear(dim, per)

    def keep(self, b: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
        """Indices ``[b, kept]`` of the patch tokens the encoder sees: a uniformly random
        subset of ``round((1 - ratio) N)`` per image (MAE's random masking)."""
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
        n = self.tokens
        kept = max(1, round((1 - ratio) * n))
        order = torch.rand(b, n, generator=generator).argsort(1)
        return order[:, :kept].sort(1).values

    def encode(self, x: Tensor, mask_ratio: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the tokenizer expects images [B, "
                             f"{', '.join(map(str, self.shape))}], got {list(x.shape)}")
        tok = self.embed(patchify(x, self.shape, self.patch)) + self.pos
        if mask_ratio > 0:
            idx = self.keep(x.shape[0], mask_ratio, generator)
            tok = tok.gather(1, idx[..., None].expand(-1, -1, tok.shape[-1]))
        h = self.encoder(torch.cat([tok, self.latents.expand(x.shape[0], -1, -1)], 1))
        return self.to_latent(h[:, -self.latent_tokens:]).flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        want = self.latent_tokens * self.latent_dim
        if z.ndim != 2 or z.shape[1] != want:
            raise ValueError(f"latents must be [B, {want}], got {list(z.shape)}")
        b = z.shape[0]
        lat = self.from_latent(z.reshape(b, self.latent_tokens, self.latent_dim))
        h = torch.cat([self.mask_token.expand(b, self.tokens, -1), lat], 1) + self.dec_pos
        h = self.decoder(h)[:, : self.tokens]
        return unpatchify(self.to_pixels(h), self.shape, self.patch)

    def forward(self, x: Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.encode(x, mask_ratio, generator))


def train_tokenizer(tok: MAETokenizer, data: Tensor, steps: int = 1000, mask_ratio: float = 0.5,
                    batch: int = 128, lr: float = 2e-3,
                    generator: torch.Generator | None = None) -> list[float]:
    """MAETok's training in miniature: encode with ``mask_ratio`` of the patches removed,
    decode from the latent tokens, squared error on every pixel. Returns the loss per step."""
    opt = torch.optim.AdamW(tok.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=generator)]
        loss = ((tok(x, mask_ratio, generator) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses

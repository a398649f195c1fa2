"""A class- and coherence-conditioned UNet (Dufour et al. 2024, "Don't drop your samples!
Coherence-aware training benefits conditional diffusion", CVPR).

Each training example carries, besides its label, a coherence score in [0, 1] (how much its
label can be trusted); the network is conditioned on both, so it learns to discount the label
when the coherence is low and can be asked for any coherence at sampling time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CoherenceUNet"]


class CoherenceUNet(nn.Module):
    """``F(x, time, class_labels, coherence)``: a diffusers ``UNet2DModel`` (``unet`` config,
    e.g. :func:`reverie.nets.digits_unet_config`) whose class embedding merges a learned label
    embedding ``e(y)`` (``num_class_embeds`` labels, the last one the null class) with MLP
    embeddings of the coherence score (CAD's coherence embedding merged with the condition):
    ``e(y) * (1 + g(c)) + h(c)``, so the coherence can scale the label's say directly (FiLM;
    ``g`` starts at zero).

    ``coherence``: a float in [0, 1] or a tensor ``[B]`` of them; omitted, it is 1 (a label to
    be trusted). Out of [0, 1]: ``ValueError``.
    """

    def __init__(self, unet: dict[str, Any], num_class_embeds: int = 11):
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("image models need diffusers (pip install diffusers)") from err
        self.config: dict[str, Any] = {"unet": dict(unet), "num_class_embeds": num_class_embeds}
        cfg = {**unet, "num_class_embeds": None, "class_embed_type": "identity"}
        self.unet = UNet2DModel(**cfg)
        dim = 4 * int(unet["block_out_channels"][0])  # the UNet's time-embedding width
        self.label_embed = nn.Embedding(num_class_embeds, dim)
        self.coherence_embed = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.coherence_gate = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.coherence_gate[2].weight)
        nn.init.zeros_(self.coherence_gate[2].bias)

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        class_labels: Tensor | None = None,
        coherence: float | Tensor | None = None,
    ) -> Tensor:
        if class_labels is None:
            raise ValueError("CoherenceUNet needs class_labels (the null class for none)")
        c = torch.ones(x.shape[0]) if coherence is None else torch.as_tensor(coherence)
        c = c.to(device=x.device, dtype=torch.float32).reshape(-1)
        if c.numel() == 1:
            c = c.expand(x.shape[0])
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"coherence must be a number or one per sample ({x.shape[0]}), got "
                             f"{c.shape[0]} values")
        if not bool(((c >= 0) & (c <= 1)).all()):
            raise ValueError(f"coherence must lie in [0, 1], got values in "
                             f"[{float(c.min()):g}, {float(c.max()):g}]")
        c = c[:, None]
        gate, shift = self.coherence_gate(c), self.coherence_embed(c)
        emb = self.label_embed(class_labels) * (1 + gate) + shift
        return self.unet(x, time, class_labels=emb.to(x.dtype)).sample

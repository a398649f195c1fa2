"""GECCO-style conditional point-cloud denoiser (Tyszkiewicz, Fua & Trulls 2023, "GECCO:
Geometrically-Conditioned Point Diffusion Models"), in miniature: a set-equivariant network
whose every point also reads the conditioning *at its own projection* (GECCO projects each
noisy point into the image and samples the image features there). Here the "image" is a 2-D
view, a set of projected points ``[B, M, 2]`` (:func:`reverie.pointclouds.project`), and the
lookup is a Gaussian-kernel average of the view points' embeddings around the noisy point's
projection. Not implemented: the image backbone, the paper's set transformer, training at scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._tensor import time_tensor
from reverie.pointclouds.data import check_points

__all__ = ["PointDenoiserNet"]


class PointDenoiserNet(nn.Module):
    """``(x_t [B, N, 3], t, view [B, M, 2] | None) -> x0_hat [B, N, 3]``, equivariant in the
    points and invariant in the view's order: per point ``[x, t, view feature at its
    projection]`` through an MLP, a mean-pooled context, and a second MLP."""

    def __init__(self, hidden: int = 64, bandwidth: float = 0.2, drop: int = 2):
        super().__init__()
        self.bandwidth, self.drop = bandwidth, drop
        self.view_embed = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.point = nn.Sequential(nn.Linear(4 + hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3))

    def lookup(self, x: Tensor, view: Tensor) -> Tensor:
        """View features at each point's projection ``[B, N, hidden]``."""
        keep = [i for i in range(3) if i != self.drop]
        d2 = torch.cdist(x[..., keep], view) ** 2  # [B, N, M]
        w = torch.softmax(-d2 / (2 * self.bandwidth**2), -1)
        return w @ self.view_embed(view)

    def forward(self, x: Tensor, t: Tensor, view: Tensor | None = None) -> Tensor:
        check_points(x, "x_t")
        t = time_tensor(t, x).to(x.dtype)
        hidden = self.view_embed[-1].out_features
        if view is None:
            feat = x.new_zeros(*x.shape[:2], hidden)
        else:
            check_points(view, "view", 2)
            feat = self.lookup(x, view.to(x.dtype))
        h = self.point(torch.cat([x, t[:, None, None].expand(*x.shape[:2], 1), feat], -1))
        ctx = h.mean(1, keepdim=True).expand_as(h)  # permutation-invariant context
        return self.out(torch.cat([h, ctx], -1))

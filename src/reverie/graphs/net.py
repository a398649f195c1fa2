"""A tiny permutation-equivariant score network on ``(X, A)`` (GDSS's GNN score models in
miniature: graph-convolution layers on the nodes, a symmetric edge head), and graph
embeddings from its intermediate features (Graph Representation Learning with Diffusion
Generative Models: the denoiser's hidden features at a noise level, pooled over nodes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._tensor import time_tensor

__all__ = ["GraphScoreNet", "graph_embedding"]


class GraphScoreNet(nn.Module):
    """``(X_t, A_t, t) -> (X0_hat, A0_hat)``: node states from ``[X, A X / N, deg / N, t]``
    through ``layers`` rounds of ``h <- h + MLP([h, A h / N])``; the edge head reads
    ``[h_i + h_j, h_i * h_j, A_ij, t]`` (symmetric in ``i, j``), zero diagonal."""

    def __init__(self, features: int = 1, hidden: int = 32, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(2 * features + 2, hidden)
        self.mix = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU())
                                 for _ in range(layers))
        self.node_out = nn.Linear(hidden, features)
        self.edge = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 1))

    def hidden(self, x: Tensor, a: Tensor, t: Tensor) -> Tensor:
        """Node states ``[B, N, hidden]`` (the features used as embeddings)."""
        n = a.shape[-1]
        tt = t.to(x.dtype)[:, None, None].expand(-1, n, 1)
        h = self.inp(torch.cat([x, a @ x / n, a.sum(-1, keepdim=True) / n, tt], -1))
        for layer in self.mix:
            h = h + layer(torch.cat([h, a @ h / n], -1))
        return h

    def forward(self, x: Tensor, a: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = time_tensor(t, x)
        h = self.hidden(x, a, t)
        n = a.shape[-1]
        hi, hj = h[:, :, None], h[:, None]
        tt = t.to(x.dtype)[:, None, None, None].expand(-1, n, n, 1)
        e = self.edge(torch.cat([hi + hj, hi * hj, a[..., None], tt], -1))[..., 0]
        return self.node_out(h), e * (1 - torch.eye(n, dtype=e.dtype))


def graph_embedding(net: GraphScoreNet, x: Tensor, a: Tensor, t: float | Tensor) -> Tensor:
    """Permutation-invariant graph embeddings ``[B, 2 hidden]``: the mean and max over nodes
    of the network's hidden node states at noise level ``t`` (inputs used as clean)."""
    with torch.no_grad():
        h = net.hidden(x, a, time_tensor(t, x))
    return torch.cat([h.mean(1), h.amax(1)], -1)

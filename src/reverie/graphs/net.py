"""A tiny permutation-equivariant score network on ``(X, A)`` (GDSS's GNN score models in
miniature: graph-convolution layers on the nodes, a symmetric edge head), and graph
embeddings from its intermediate features (Graph Representation Learning with Diffusion
Generative Models: the denoiser's hidden features at a noise level, pooled over nodes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._tensor import time_tensor

__all__ = ["GraphScoreNet", "graph_embedding", "train_gdss"]


class GraphScoreNet(nn.Module):
    """``(X_t, A_t, t) -> (X0_hat, A0_hat)``: node states from ``[X, A X / N, deg / N, t]``
    through ``layers`` rounds of ``h <- h + MLP([h, A h / N])``; the edge head reads
    ``[h_i + h_j, h_i * h_j, A_ij, (A^2)_ij / N, (A^3)_ij / N^2, t]`` (symmetric in ``i, j``;
    the adjacency powers as in GDSS's ScoreNetworkA), zero diagonal."""

    def __init__(self, features: int = 1, hidden: int = 32, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(2 * features + 2, hidden)
        self.mix = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU())
                                 for _ in range(layers))
        self.node_out = nn.Linear(hidden, features)
        self.edge = nn.Sequential(nn.Linear(2 * hidden + 4, hidden), nn.SiLU(),
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
        a2 = a @ a / n
        powers = torch.stack([a, a2, a2 @ a / n], -1)  # multi-hop adjacency channels
        e = self.edge(torch.cat([hi + hj, hi * hj, powers, tt], -1))[..., 0]
        return self.node_out(h), e * (1 - torch.eye(n, dtype=e.dtype))


def graph_embedding(net: GraphScoreNet, x: Tensor, a: Tensor, t: float | Tensor) -> Tensor:
    """Permutation-invariant graph embeddings ``[B, 2 hidden]``: the mean and max over nodes
    of the network's hidden node states at noise level ``t`` (inputs used as clean)."""
    with torch.no_grad():
        h = net.hidden(x, a, time_tensor(t, x))
    return torch.cat([h.mean(1), h.amax(1)], -1)


def train_gdss(net: GraphScoreNet, graphs: Tensor, system=None, steps: int = 1000,
               batch: int = 32, lr: float = 2e-3, features=None,
               generator: torch.Generator | None = None) -> list[float]:
    """Train ``net`` by denoising score matching on both components at once (GDSS eq. 5-6 in
    data-prediction form): ``|X0_hat - X0|^2 + |triu(A0_hat - A0)|^2`` at ``t ~ U[t_min, 1]``,
    the pair noised by the symmetrised forward system. ``graphs [K, N, N]``; node features
    ``features(A)`` (default the degree over ``N - 1``). Returns the loss per step."""
    from reverie.graphs.data import check_adjacency, triu
    from reverie.graphs.gdss import GDSS, degree_features

    check_adjacency(graphs, "graphs")
    system = system or GDSS()
    features = features or degree_features
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    t_lo = max(system.process_x.t_min, system.process_a.t_min)
    for _ in range(steps):
        idx = torch.randint(len(graphs), (batch,), generator=generator)
        a0 = graphs[idx].float()
        x0 = features(a0)
        t = t_lo + (1 - t_lo) * torch.rand(batch, generator=generator)
        xt, at = system.perturb(x0, a0, t, generator)  # symmetrised noise on A
        xh, ah = net(xt.float(), at.float(), t)
        loss = ((xh - x0) ** 2).mean() + ((triu(ah) - triu(a0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

"""GECCO-style conditional point-cloud denoiser (Tyszkiewicz, Fua & Trulls 2023, "GECCO:
Geometrically-Conditioned Point Diffusion Models"), in miniature: a set-equivariant network
whose every point also reads the conditioning *at its own projection* (GECCO projects each
noisy point into the image and samples the image features there). Here the "image" is a 2-D
view, a set of projected points ``[B, M, 2]`` (:func:`reverie.pointclouds.project`), and the
lookup is a Gaussian-kernel average of the view points' embeddings around the noisy point's
projection, added to the view's mean embedding. ``local=False`` drops the lookup, leaving the
same global feature for every point (the global-feature baseline). :func:`posed_shapes` /
:func:`draw` make randomly sized and rotated primitives, :func:`train_gecco` trains the net on
them (x0 loss), see
scripts/train_tiny_gecco.py. Not implemented: the image backbone, the paper's set transformer,
training at scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie._tensor import bcast, time_tensor
from reverie.pointclouds.data import PRIMITIVES, check_points, primitive, project
from reverie.process import GaussianProcess

__all__ = ["PointDenoiserNet", "posed_shapes", "draw", "train_gecco"]


class PointDenoiserNet(nn.Module):
    """``(x_t [B, N, 3], t, view [B, M, 2] | None) -> x0_hat [B, N, 3]``, equivariant in the
    points and invariant in the view's order: per point ``[x, t, view feature at its
    projection + the view's mean embedding]`` through an MLP, a mean-pooled context, and a
    second MLP. ``local=False``: the view's mean embedding alone (no projection lookup)."""

    def __init__(self, hidden: int = 64, bandwidth: float = 0.2, drop: int = 2,
                 local: bool = True):
        super().__init__()
        self.bandwidth, self.drop, self.local = bandwidth, drop, local
        self.view_embed = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.point = nn.Sequential(nn.Linear(4 + hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3))

    def lookup(self, x: Tensor, view: Tensor) -> Tensor:
        """View features at each point's projection ``[B, N, hidden]``: the Gaussian-kernel
        weighted view embeddings, weights ``k_j / (1 + sum_j k_j)`` (so the feature fades to
        zero off the view's silhouette)."""
        keep = [i for i in range(3) if i != self.drop]
        d2 = torch.cdist(x[..., keep], view) ** 2  # [B, N, M]
        logk = -d2 / (2 * self.bandwidth**2)
        null = logk.new_zeros(*logk.shape[:-1], 1)  # the "nothing here" weight 1
        w = torch.softmax(torch.cat([logk, null], -1), -1)[..., :-1]
        return w @ self.view_embed(view)

    def forward(self, x: Tensor, t: Tensor, view: Tensor | None = None) -> Tensor:
        check_points(x, "x_t")
        t = time_tensor(t, x).to(x.dtype)
        hidden = self.view_embed[-1].out_features
        if view is None:
            feat = x.new_zeros(*x.shape[:2], hidden)
        else:
            check_points(view, "view", 2)
            view = view.to(x.dtype)
            feat = self.view_embed(view).mean(1, keepdim=True).expand(*x.shape[:2], -1)  # global
            if self.local:
                feat = feat + self.lookup(x, view)  # + the features at the point's projection
        h = self.point(torch.cat([x, t[:, None, None].expand(*x.shape[:2], 1), feat], -1))
        ctx = h.mean(1, keepdim=True).expand_as(h)  # permutation-invariant context
        return self.out(torch.cat([h, ctx], -1))


def posed_shapes(batch: int, generator: torch.Generator | None = None,
                 scale: tuple[float, float] = (0.5, 1.0)) -> tuple[Tensor, Tensor, Tensor]:
    """Random shapes ``(kind [B] index into PRIMITIVES, half-size [B], rotation [B, 3, 3])``:
    kind uniform, half-size uniform in ``scale``, rotation Haar-uniform (QR of a Gaussian)."""
    kind = torch.randint(len(PRIMITIVES), (positive_int("batch", batch),), generator=generator)
    size = scale[0] + (scale[1] - scale[0]) * torch.rand(batch, generator=generator)
    q, r = torch.linalg.qr(torch.randn(batch, 3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar: fix the signs
    q = q * torch.det(q)[:, None, None]  # a rotation, det +1
    return kind, size, q


def draw(shapes: tuple[Tensor, Tensor, Tensor], n: int,
         generator: torch.Generator | None = None) -> Tensor:
    """``[B, n, 3]`` fresh surface points of the shapes of :func:`posed_shapes`."""
    kind, size, rot = shapes
    names = list(PRIMITIVES)
    out = torch.empty(len(kind), n, 3)
    for k, name in enumerate(names):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            out[idx] = primitive(name, len(idx), n, generator, size[idx]) @ rot[idx].transpose(1, 2)
    return out


def train_gecco(net: PointDenoiserNet, process: GaussianProcess,
                shapes: tuple[Tensor, Tensor, Tensor], steps: int = 1500, batch: int = 32,
                n: int = 128, m: int = 128, lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Train ``net`` to predict ``x0`` from ``x_t = alpha x0 + sigma eps`` given the view (the
    projection of ``m`` other points of the same shape), ``t`` uniform on ``[t_min, t_max]``,
    shapes drawn from the training set ``shapes``; Adam with a cosine decay. Returns the
    per-step losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, positive_int("steps", steps))
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(shapes[0]), (batch,), generator=g)
        sub = tuple(s[idx] for s in shapes)
        x0, view = draw(sub, n, g), project(draw(sub, m, g), net.drop)
        t = process.t_min + (process.t_max - process.t_min) * torch.rand(batch, generator=g)
        a, s = bcast(process.alpha(t), x0).float(), bcast(process.sigma(t), x0).float()
        xt = a * x0 + s * torch.randn(x0.shape, generator=g)  # forward noising
        loss = (net(xt, t, view) - x0).pow(2).mean()  # x0-prediction loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses

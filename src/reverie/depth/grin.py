"""GRIN in miniature (Guizilini et al. 2024, "GRIN: Zero-Shot Metric Depth with Pixel-Level
Diffusion"): a diffusion model on *pixels* (no latent autoencoder) whose denoiser sees each
pixel as a token carrying its own coordinates, conditioned on an *unstructured* set of sparse
metric-depth points (any number, anywhere: each a token of coordinates and depth that pixel
tokens attend to), predicting *log* depth so one model spans near and far metric scales.

GRIN's denoiser is a Recurrent Interface Network over image features with 3-D geometric
positional encodings of camera rays; here the tokens carry Fourier features of ``(u, v)`` (one
camera, no image) and the blocks are cross-attention (pixels -> points), self-attention over
pixels and an MLP. Depth ``d`` is encoded as ``x = 2 (log d - log d_near) / (log d_far -
log d_near) - 1`` (:class:`LogDepth`), sampled with any reverie sampler and decoded back to
metres (:func:`predict_depth`). :class:`PlaneLogDepth` is an exact Gaussian scene prior with a
closed-form conditional denoiser, to check that pipeline exactly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import bcast, time_tensor
from reverie.denoisers import Denoiser, DenoiserBase
from reverie.depth.scenes import DEPTH_RANGE, _check_points, pixel_grid, render_scenes
from reverie.process import GaussianProcess
from reverie.reference.gaussian import Gaussian
from reverie.samplers import sample

__all__ = ["LogDepth", "GRINNet", "grin_denoiser", "train_grin", "predict_depth",
           "PlaneLogDepth"]


class LogDepth:
    """Metric depth <-> the model's value in ``[-1, 1]``: affine in ``log d`` over
    ``[near, far]`` metres (GRIN's log-scale parameterisation)."""

    def __init__(self, near: float = DEPTH_RANGE[0], far: float = DEPTH_RANGE[1]):
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got {near}, {far}")
        self.near, self.far = float(near), float(far)
        self._lo, self._span = math.log(near), math.log(far) - math.log(near)

    def encode(self, depth: Tensor) -> Tensor:
        if not bool(((depth >= self.near) & (depth <= self.far)).all()):
            raise ValueError(f"depths must lie in [{self.near}, {self.far}] metres")
        return 2 * (torch.log(depth) - self._lo) / self._span - 1

    def decode(self, x: Tensor) -> Tensor:
        return torch.exp((x.clamp(-1, 1) + 1) / 2 * self._span + self._lo)


def _fourier(uv: Tensor, freqs: Tensor) -> Tensor:
    ang = uv[..., None] * freqs  # [..., 2, F]
    return torch.cat([uv, ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.self_ = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(),
                                 nn.Linear(2 * hidden, hidden))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))

    def forward(self, h: Tensor, c: Tensor, t_emb: Tensor) -> Tensor:
        h = h + t_emb[:, None]
        q = self.norms[0](h)
        h = h + self.cross(q, c, c, need_weights=False)[0]  # pixels read the sparse points
        q = self.norms[1](h)
        h = h + self.self_(q, q, q, need_weights=False)[0]  # pixels exchange among themselves
        return h + self.mlp(self.norms[2](h))


class GRINNet(nn.Module):
    """``net(x_t, t, points=uv [B, K, 2], values=x [B, K]) -> v`` for noisy encoded depth
    maps ``x_t`` ``[B, H, H]``; ``t`` in ``[0, 1]``. Any ``K``, any point positions."""

    def __init__(self, hidden: int = 48, heads: int = 4, layers: int = 2, freqs: int = 6):
        super().__init__()
        self.config = {"hidden": hidden, "heads": heads, "layers": layers, "freqs": freqs}
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(freqs) / 2,
                             persistent=False)
        width = 2 + 4 * freqs
        self.pixel = nn.Linear(width + 1, hidden)  # (coordinates, noisy value)
        self.point = nn.Sequential(nn.Linear(width + 1, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden))  # (coordinates, depth)
        self.t_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(_Block(hidden, heads) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, t: Tensor, *, points: Tensor, values: Tensor) -> Tensor:
        b, size = x.shape[0], x.shape[-1]
        f = self.freqs.to(x.dtype)
        grid = _fourier(pixel_grid(size).to(x.dtype), f).expand(b, -1, -1)
        h = self.pixel(torch.cat([grid, x.reshape(b, -1, 1)], -1))
        c = self.point(torch.cat([_fourier(points.to(x.dtype), f), values.to(x.dtype)[..., None]],
                                 -1))
        half = self.config["hidden"] // 2
        ang = 1000 * t.reshape(-1).expand(b)[:, None] * torch.exp(
            -math.log(1000.0) * torch.arange(half, dtype=x.dtype) / half)
        t_emb = self.t_mlp(torch.cat([ang.sin(), ang.cos()], -1))
        for block in self.blocks:
            h = block(h, c, t_emb)
        return self.head(h).reshape(x.shape)


def grin_denoiser(net: GRINNet, process: GaussianProcess) -> Denoiser:
    """A reverie denoiser of the network (``v`` prediction); call with ``points=``,
    ``values=`` (encoded depths)."""
    return Denoiser(net, process, prediction="v")


def train_grin(process: GaussianProcess, *, steps: int = 1500, batch: int = 32, size: int = 16,
               points: tuple[int, int] = (8, 40), scenes: int = 4096, lr: float = 2e-3,
               seed: int = 0, net: GRINNet | None = None, encoding: LogDepth | None = None
               ) -> tuple[GRINNet, dict[str, Any]]:
    """Train :class:`GRINNet` on ``scenes`` rendered depth maps with a random number of sparse
    points (in ``points``) per batch: ``v`` target, ``t`` uniform in log-SNR (as
    :func:`reverie.functions.train_ndp`). Returns the network (eval mode) and a record."""
    gen = torch.Generator().manual_seed(seed)
    enc = LogDepth() if encoding is None else encoding
    net = GRINNet() if net is None else net
    data = enc.encode(render_scenes(scenes, size, seed)).float()
    lam_hi, lam_lo = float(process.log_snr(process.t_min)), float(process.log_snr(process.t_max))

    def draw(gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x0 = data[torch.randint(len(data), (batch,), generator=gen)].double()
        k = int(torch.randint(points[0], points[1] + 1, (1,), generator=gen))
        idx = torch.stack([torch.randperm(size * size, generator=gen)[:k] for _ in range(batch)])
        uv, vals = pixel_grid(size)[idx], torch.gather(x0.reshape(batch, -1), 1, idx)
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        t = process.t_from_log_snr(lam_hi + (lam_lo - lam_hi) * u)
        return x0, t, {"points": uv.float(), "values": vals.float()}

    return fit_v(net, process, draw, steps=steps, lr=lr, gen=gen)


def fit_v(net: nn.Module, process: GaussianProcess, draw, *, steps: int, lr: float,
          gen: torch.Generator) -> tuple[nn.Module, dict[str, Any]]:
    """The ``v``-prediction training loop of the depth models: ``draw(gen)`` gives a batch
    ``(x0, t, conditioning)``; the loss is ``|net(x_t, t, **conditioning) - v|^2`` (Adam, cosine
    decay). Returns the network (eval mode) and a record (steps, seconds, the mean loss of the
    last tenth, parameters)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start, losses = time.time(), []
    for _ in range(steps):
        x0, t, cond = draw(gen)
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        v = bcast(process.alpha(t), x0) * eps - bcast(process.sigma(t), x0) * x0
        pred = net(process.add_noise(x0, eps, t).float(), t.float(), **cond)
        loss = ((pred - v.float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    tail = losses[-max(1, steps // 10):]
    return net, {"steps": steps, "seconds": time.time() - start,
                 "final_loss": sum(tail) / len(tail),
                 "parameters": sum(p.numel() for p in net.parameters())}


def predict_depth(denoiser: DenoiserBase, uv: Tensor, depth: Tensor, size: int, *,
                  samples: int = 4, encoding: LogDepth | None = None, sampler: str = "dpmpp_2m",
                  steps: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Metric depth maps from sparse metric points: encode the points' depths, draw
    ``samples`` encoded maps per scene with reverie's ``sampler`` (the points as ``cond``),
    decode to metres. Returns the per-pixel mean ``[B, size, size]`` and the samples
    ``[samples, B, size, size]`` (their spread is the model's uncertainty)."""
    _check_points(uv, depth)
    enc = LogDepth() if encoding is None else encoding
    b = uv.shape[0]
    cond = {"points": uv.repeat(samples, 1, 1), "values": enc.encode(depth).repeat(samples, 1)}
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples * b, size, size, generator=gen, dtype=torch.float64)
    x = sample(denoiser, noise, sampler, steps, cond=cond, generator=gen)
    maps = enc.decode(x).reshape(samples, b, size, size)
    return maps.mean(0), maps


class PlaneLogDepth(DenoiserBase):
    """An exact Gaussian scene prior and its conditional denoiser. Encoded depth is a random
    tilted plane plus pixel noise, ``x(u, v) = a + b u + c v + e``, with ``(a, b, c) ~
    N(mean, diag(scale^2))`` and ``e ~ N(0, pixel^2)``; a point observes the plane at its
    ``(u, v)`` with noise ``obs``. Given the points the pixels' law is Gaussian in closed
    form (:meth:`posterior`); ``self(x, t, points=, values=)`` is its exact denoiser, so the
    GRIN pipeline runs on an exact answer."""

    def __init__(self, process: GaussianProcess, size: int, mean=(0.0, 0.0, 0.4),
                 scale=(0.3, 0.2, 0.2), pixel: float = 0.05, obs: float = 0.02):
        self.process, self.size = process, size
        self.mean = torch.tensor(mean, dtype=torch.float64)
        self.cov = torch.diag(torch.tensor(scale, dtype=torch.float64) ** 2)
        self.pixel, self.obs = float(pixel), float(obs)

    def _features(self, uv: Tensor) -> Tensor:
        return torch.cat([torch.ones_like(uv[..., :1]), uv], -1).to(torch.float64)

    def prior(self) -> Gaussian:
        """The pixels' prior law (flattened, row-major)."""
        a = self._features(pixel_grid(self.size))
        n = a.shape[0]
        return Gaussian(a @ self.mean, a @ self.cov @ a.T + self.pixel**2 * torch.eye(n,
                        dtype=torch.float64))

    def posterior(self, uv: Tensor, values: Tensor) -> Gaussian:
        """The pixels' law given one scene's points ``uv [K, 2]`` and encoded values ``[K]``."""
        a, q = self._features(pixel_grid(self.size)), self._features(uv)
        prior = self.prior()
        cross = a @ self.cov @ q.T  # Cov(pixels, observations)
        k_obs = q @ self.cov @ q.T + self.obs**2 * torch.eye(len(q), dtype=torch.float64)
        gain = torch.linalg.solve(k_obs, cross.T).T
        mean = prior.mean() + gain @ (values.to(torch.float64) - q @ self.mean)
        cov = prior.covariance() - gain @ cross.T
        return Gaussian(mean, 0.5 * (cov + cov.T))

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if "points" not in cond or "values" not in cond:
            raise ValueError("the depth denoiser needs cond points= [B, K, 2] and values= [B, K]")
        tt = time_tensor(t, x).to(torch.float64)
        pts, vals, flat = cond["points"], cond["values"], x.reshape(x.shape[0], -1)
        if bool((pts == pts[:1]).all() and (vals == vals[:1]).all() and (tt == tt[0]).all()):
            groups = [torch.arange(x.shape[0])]  # one law and one time for the whole batch
        else:
            groups = [torch.tensor([i]) for i in range(x.shape[0])]
        out = torch.empty_like(flat)
        for rows in groups:
            i = int(rows[0])
            law = self.posterior(pts[i], vals[i])
            out[rows] = law.denoise_at(flat[rows].to(torch.float64), self.process.alpha(tt[i]),
                                       self.process.sigma(tt[i])).to(x.dtype)
        return out.reshape(x.shape)

"""The Neural Diffusion Process network (Dutordoir et al. 2023, "Neural Diffusion Processes",
Sec. 3.2 and Fig. 2): a noise model over a *set* of points built from bi-dimensional attention
blocks, equivariant to permutations of the points and invariant to the order of the input
dimensions, so one network denoises function values at any number of locations anywhere.

Input per point ``n`` and input dimension ``d``: ``(x_nd, y_n)`` (with Fourier features of
``x_nd``, our addition) embedded to ``H`` channels;
each block adds the time embedding and attends over the points (for each ``d``) and over the
dimensions (for each ``n``), summed (eq. 10); skip connections are summed and averaged over
``d`` (the invariance), then mapped to the output per point (here ``v``, see
:func:`train_ndp`). Here inputs are 1-D (``D = 1``), but the blocks take ``[B, N, D, H]``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import bcast
from reverie.denoisers import Denoiser
from reverie.functions.gp import GP, Kernel
from reverie.process import GaussianProcess, VPLinear

__all__ = ["BiDimensionalAttention", "NDPNet", "ndp_denoiser", "train_ndp", "load_ndp",
           "save_ndp", "BUNDLED_NDP"]

#: Folder of the bundled model (trained by scripts/train_ndp.py).
BUNDLED_NDP = Path(__file__).resolve().parents[1] / "models" / "ndp-gp"


class BiDimensionalAttention(nn.Module):
    """NDP eq. 10: ``h + MHA over points + MHA over dimensions`` of ``h + time``, then a
    gated output (``tanh * sigmoid``) split into a residual and a skip path."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.time = nn.Linear(hidden, hidden)
        self.over_points = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.over_dims = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.out = nn.Linear(hidden, 2 * hidden)

    def forward(self, h: Tensor, t_emb: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d, c = h.shape
        z = h + self.time(t_emb)[:, None, None, :]
        zp = z.permute(0, 2, 1, 3).reshape(b * d, n, c)  # attend over the points
        ap = self.over_points(zp, zp, zp, need_weights=False)[0]
        ap = ap.reshape(b, d, n, c).permute(0, 2, 1, 3)
        zd = z.reshape(b * n, d, c)  # attend over the input dimensions
        ad = self.over_dims(zd, zd, zd, need_weights=False)[0].reshape(b, n, d, c)
        u = self.out(ap + ad)
        gated = torch.tanh(u[..., :c]) * torch.sigmoid(u[..., c:])
        return (h + gated) / math.sqrt(2), gated  # residual, skip


class NDPNet(nn.Module):
    """``net(y_t, t, locations) -> v`` for values ``[B, N]`` at locations ``[B, N]`` or
    ``[B, N, D]`` (a shared ``[N]`` set is broadcast)."""

    def __init__(self, hidden: int = 64, heads: int = 4, layers: int = 3):
        super().__init__()
        self.config = {"hidden": hidden, "heads": heads, "layers": layers}
        # Fourier features of the location (so attention can learn distance-based weights)
        self.register_buffer("freqs", math.pi / 2 * torch.arange(1, 13.0), persistent=False)
        self.embed = nn.Linear(2 + 2 * 12, hidden)
        self.t_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(BiDimensionalAttention(hidden, heads) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def time_embedding(self, t: Tensor) -> Tensor:
        half = self.config["hidden"] // 2
        freq = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype) / half)
        ang = 1000.0 * t[:, None] * freq[None]  # t in [0, 1]
        return self.t_mlp(torch.cat([ang.sin(), ang.cos()], -1))

    def forward(self, y: Tensor, t: Tensor, locations: Tensor) -> Tensor:
        loc = locations.to(y.dtype)
        if loc.ndim == 1:
            loc = loc.expand(y.shape[0], -1)
        if loc.ndim == 2:
            loc = loc[..., None]
        b, n, d = loc.shape
        ang = loc[..., None] * self.freqs.to(y.dtype)
        pairs = torch.cat([loc[..., None], y[:, :, None, None].expand(b, n, d, 1), ang.sin(),
                           ang.cos()], -1)  # (x_nd, y_n) with x_nd's Fourier features
        h = self.embed(pairs)
        t_emb = self.time_embedding(t.to(y.dtype).reshape(-1).expand(b))
        skip = torch.zeros_like(h)
        for block in self.blocks:
            h, s = block(h, t_emb)
            skip = skip + s
        pooled = (skip / math.sqrt(len(self.blocks))).mean(2)  # invariant over dimensions
        return self.head(pooled)[..., 0]


def ndp_denoiser(net: NDPNet, process: GaussianProcess) -> Denoiser:
    """A reverie denoiser of the network (``v`` prediction); call with ``locations=``."""
    denoiser = Denoiser(net, process, prediction="v")
    denoiser.domain = getattr(net, "domain", None)  # type: ignore[attr-defined]
    return denoiser


def train_ndp(gp: GP, process: GaussianProcess, *, steps: int = 2000, batch: int = 64,
              points: tuple[int, int] = (8, 32), lr: float = 1e-3, seed: int = 0,
              net: NDPNet | None = None, log_every: int = 0) -> tuple[NDPNet, dict[str, Any]]:
    """Train an :class:`NDPNet` on ``gp`` draws at uniform random locations (a new number of
    points in ``points`` per batch). Two departures from NDP's DDPM noise-prediction loss
    (eq. 7), both for VPLinear's ``alpha(t_max) = e^-5``: the target is ``v = alpha eps -
    sigma y`` (Salimans & Ho), since an ``eps`` error is amplified 150-fold in the first
    step's data prediction, and ``t`` is uniform in log-SNR over ``[t_min, t_max]`` (uniform
    ``t`` spends most steps where ``alpha ~ 0``). Returns the network (eval mode) and a
    training record."""
    gen = torch.Generator().manual_seed(seed)
    net = NDPNet() if net is None else net
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start, losses = time.time(), []
    lam_hi, lam_lo = float(process.log_snr(process.t_min)), float(process.log_snr(process.t_max))
    for step in range(steps):
        n = int(torch.randint(points[0], points[1] + 1, (1,), generator=gen))
        x = gp.locations(batch, n, gen)
        y0 = gp.sample(x, generator=gen)
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        t = process.t_from_log_snr(lam_hi + (lam_lo - lam_hi) * u)  # uniform in log-SNR
        eps = torch.randn(y0.shape, generator=gen, dtype=torch.float64)
        yt = process.add_noise(y0, eps, t)
        v = bcast(process.alpha(t), y0) * eps - bcast(process.sigma(t), y0) * y0
        loss = ((net(yt.float(), t.float(), x.float()) - v.float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    net.domain = gp.domain  # type: ignore[assignment]
    record = {"steps": steps, "batch": batch, "points": list(points), "lr": lr, "seed": seed,
              "seconds": round(time.time() - start, 1),
              "final_loss": sum(losses[-100:]) / len(losses[-100:])}
    return net.eval(), record


def save_ndp(net: NDPNet, gp: GP, process: VPLinear, folder: str | Path,
             record: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (net, GP and process settings)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(folder / "model.safetensors"))
    k = gp.kernel
    config = {"net": net.config,
              "gp": {"kernel": k.name, "lengthscale": k.lengthscale, "variance": k.variance,
                     "period": k.period, "noise": gp.noise, "domain": list(gp.domain)},
              "process": {"beta_min": process.beta_min, "beta_max": process.beta_max,
                          "t_min": process.t_min},
              "training": record}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_ndp(folder: str | Path = BUNDLED_NDP) -> tuple[Denoiser, GP]:
    """The trained denoiser and the GP it was trained on (default: the bundled model)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no NDP model in {folder} (train one: python "
                                f"scripts/train_ndp.py)")
    config = json.loads((folder / "config.json").read_text())
    net = NDPNet(**config["net"])
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    g = config["gp"]
    gp = GP(Kernel(g["kernel"], g["lengthscale"], g["variance"], g["period"]), g["noise"],
            tuple(g["domain"]))
    net.domain = gp.domain  # type: ignore[assignment]
    process = VPLinear(**config["process"])
    return ndp_denoiser(net.eval(), process), gp

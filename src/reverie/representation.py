"""Representation learning with diffusion models: LRDM (Traub 2022, "Representation Learning
with Diffusion Models") in miniature.

An encoder ``E`` maps a clean sample to a small representation ``z = E(x0)``; the denoiser is
conditioned on it, ``D(x_t, t, z)``, and both are trained together by the denoising loss
alone, ``|D(alpha x0 + sigma eps, t, E(x0)) - x0|^2``: to denoise well the encoder must put
into ``z`` what the noise destroys, so ``z`` becomes a representation learned without labels;
sampling with a given ``z`` reconstructs samples consistent with it.

* :class:`LRDM` -- an MLP encoder and a ``z``-conditioned residual-MLP denoiser (x0
  prediction), :meth:`LRDM.denoiser` as a reverie denoiser with ``cond`` ``z``;
  :func:`train_lrdm` the joint training.
* :func:`linear_encoder_denoiser` -- the exact case: Gaussian data and a linear encoder
  ``z = W x0``; ``x0 | z`` is Gaussian and its closed-form denoiser is the optimal
  ``D(x_t, t, z)``, the reference for the pipeline.

Not implemented: the paper's image-scale encoder / U-Net, its tractable-representation
variants and downstream evaluations beyond a linear probe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie._tensor import bcast, time_tensor
from reverie.denoisers import Denoiser
from reverie.nets.mlp import SinusoidalEmbedding
from reverie.process import GaussianProcess
from reverie.reference import Gaussian, linear_gaussian_posterior

__all__ = ["LRDM", "train_lrdm", "linear_encoder_denoiser"]


def linear_encoder_denoiser(law: Gaussian, W: Tensor, process: GaussianProcess) -> Denoiser:
    """The exact ``E[x0 | x_t, z]`` for ``x0 ~ law`` and ``z = W x0`` (``W`` ``[k, D]`` of full
    row rank): the denoiser of the Gaussian ``x0 | z`` (``cond``: ``z`` ``[B, k]`` or ``[k]``)."""
    W = torch.as_tensor(W, dtype=torch.float64)
    if W.ndim != 2 or W.shape[1] != law.dim:
        raise ValueError(f"W must be [k, {law.dim}], got {list(W.shape)}")

    def fn(x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        z = torch.as_tensor(z, dtype=torch.float64).reshape(-1, W.shape[0]).expand(len(x), -1)
        a, s = process.alpha(t).flatten()[0], process.sigma(t).flatten()[0]
        out = torch.empty_like(x, dtype=torch.float64)
        for zi in torch.unique(z, dim=0):  # one conditional law per distinct z
            rows = (z == zi).all(-1)
            post = linear_gaussian_posterior(law, W, zi, 0.0)
            out[rows] = post.denoise_at(x[rows].to(torch.float64), a, s)
        return out.to(x)

    return Denoiser(fn, process, "x0")


class LRDM(nn.Module):
    """``encode(x0 [B, D]) -> z [B, k]`` and ``forward(x_t, t, z) -> x0_hat`` on vectors
    (flattened images): residual MLP blocks modulated by the embeddings of ``log sigma`` and
    ``z``."""

    def __init__(self, dim: int, latent: int = 4, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.dim, self.latent = dim, latent
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, latent))
        self.time = nn.Sequential(SinusoidalEmbedding(32), nn.Linear(32, hidden))
        self.cond = nn.Linear(latent, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden),
                                                  nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def encode(self, x0: Tensor) -> Tensor:
        if x0.ndim != 2 or x0.shape[1] != self.dim:
            raise ValueError(f"LRDM encodes [B, {self.dim}] samples, got {list(x0.shape)}")
        return self.encoder(x0)

    def forward(self, x: Tensor, t: Tensor, process: GaussianProcess, z: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim or z.shape != (len(x), self.latent):
            raise ValueError(f"LRDM denoises [B, {self.dim}] with z [B, {self.latent}], got "
                             f"{list(x.shape)} and {list(z.shape)}")
        t = time_tensor(t, x)
        a, s = bcast(process.alpha(t), x).to(x), bcast(process.sigma(t), x).to(x)
        emb = self.time(s.log()[:, 0] * 10) + self.cond(z)  # noise level and representation
        h = self.inp(x / (a**2 + s**2).sqrt())
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """A reverie denoiser with ``cond`` ``z`` ``[B, latent]``."""
        return Denoiser(lambda x, t, z: self(x, t, process, z.to(x).expand(len(x), -1)),
                        process, "x0", dtype=next(self.parameters()).dtype)


def train_lrdm(model: LRDM, data: Tensor, process: GaussianProcess, steps: int = 1000,
               batch: int = 128, lr: float = 2e-3, encode: bool = True,
               generator: torch.Generator | None = None) -> list[float]:
    """Joint training by the denoising loss ``|D(x_t, t, E(x0)) - x0|^2`` at
    ``t ~ U[t_min, t_max]``; ``encode=False`` freezes the encoder at its initialisation (the
    random-representation baseline). Returns the loss per step."""
    params = [p for name, p in model.named_parameters()
              if encode or not name.startswith("encoder.")]
    opt = torch.optim.Adam(params, lr=lr)
    lo, hi = float(process.t_min), float(process.t_max)
    losses = []
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch,), generator=generator)]
        t = lo + (hi - lo) * torch.rand(batch, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt = bcast(process.alpha(t), x0).float() * x0 + bcast(process.sigma(t), x0).float() * eps
        loss = ((model(xt, t, process, model.encode(x0)) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses

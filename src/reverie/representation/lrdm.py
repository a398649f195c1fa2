"""LRDM (Traub 2022, "Representation Learning with Diffusion Models"): an encoder ``E`` maps a
clean sample ``x0`` to a small latent ``z = E(x0)`` and a diffusion model denoises *given*
``z``; encoder and denoiser are trained jointly with the plain diffusion loss
``|| D(x_t, t, E(x0)) - x0 ||^2``, so ``z`` must carry what the denoiser cannot guess from
``x_t`` -- the representation. Sampling given ``E(x)`` reconstructs ``x`` (up to what ``z``
leaves out).

Here the encoder and the denoiser are MLPs on flattened images (:class:`LRDMNet`), trained with
reverie's loop (:func:`reverie.train.train`, EDM objective, the clean batch passed as the
``source`` condition); the representation is judged by a ridge-regression linear probe
(:func:`linear_probe`) and the reconstructions by their error. :class:`LinearGaussianLRDM` is an
exact case: linear-Gaussian data and a linear encoder, where the law of ``x0`` given ``z`` is
Gaussian in closed form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess
from reverie.reference.gaussian import Gaussian
from reverie.samplers import sample

__all__ = ["LRDMNet", "train_lrdm", "encode", "reconstruct", "linear_probe",
           "LinearGaussianLRDM"]


class LRDMNet(nn.Module):
    """``net(x_t, time, source=x0)`` or ``net(x_t, time, z=z)``: the encoder ``E`` (MLP of the
    flattened clean sample to ``latent`` numbers) and the conditional denoiser (MLP of the
    flattened ``x_t``, a time embedding and ``z``), output shaped like ``x_t``."""

    def __init__(self, dim: int = 64, latent: int = 8, hidden: int = 256):
        super().__init__()
        self.config = {"dim": dim, "latent": latent, "hidden": hidden}
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, latent))
        self.t_embed = nn.Sequential(nn.Linear(16, hidden), nn.SiLU())
        self.decoder = nn.Sequential(nn.Linear(dim + latent, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, dim))
        self.inject = nn.Linear(hidden, dim + latent)

    def encode(self, x0: Tensor) -> Tensor:
        return self.encoder(x0.reshape(x0.shape[0], -1))

    def forward(self, x: Tensor, time: Tensor, source: Tensor | None = None,
                z: Tensor | None = None) -> Tensor:
        if (source is None) == (z is None):
            raise ValueError("LRDMNet needs exactly one of source= (a clean sample to encode) "
                             "or z= (a latent)")
        z = self.encode(source.to(x.dtype)) if z is None else z.to(x.dtype)
        freqs = torch.exp(torch.arange(8, dtype=x.dtype) * -math.log(100.0) / 8)
        ang = time.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1) * freqs
        h = self.inject(self.t_embed(torch.cat([ang.sin(), ang.cos()], -1)))
        return self.decoder(torch.cat([x.reshape(x.shape[0], -1), z], -1) + h).reshape(x.shape)


def train_lrdm(data: Tensor, *, latent: int = 8, steps: int = 3000, batch_size: int = 128,
               lr: float = 2e-3, seed: int = 0, net: LRDMNet | None = None, **options: Any):
    """Train encoder and denoiser jointly on ``data [N, ...]`` with reverie's loop (EDM
    objective; each clean batch is also the encoder's ``source``). Returns the loop's
    :class:`~reverie.train.loop.TrainResult` (``.model``: the EMA model, ``.ema.encode``)."""
    from reverie.train import train

    torch.manual_seed(seed)
    net = LRDMNet(data[0].numel(), latent) if net is None else net
    return train(net, data, conditions={"source": data}, steps=steps, batch_size=batch_size,
                 lr=lr, seed=seed, progress=False, **options)


def encode(net: LRDMNet, x: Tensor) -> Tensor:
    """The representation ``z = E(x)`` ``[B, latent]`` (no gradient)."""
    with torch.no_grad():
        return net.encode(x.to(next(net.parameters()).dtype))


def reconstruct(denoiser: DenoiserBase, z: Tensor, noise: Tensor, *, sampler: str = "dpmpp_2m",
                steps: int = 20, **options: Any) -> Tensor:
    """Samples of ``x0`` given latents ``z`` ``[B, latent]`` (one per noise row): the decoder
    side of LRDM, any reverie sampler."""
    if z.ndim != 2 or z.shape[0] != noise.shape[0]:
        raise ValueError(f"need z [B, latent] with B = noise.shape[0] = {noise.shape[0]}, got "
                         f"{list(z.shape)}")
    return sample(denoiser, noise, sampler, steps, cond={"z": z}, **options)


def linear_probe(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor,
                 ridge: float = 1e-3) -> float:
    """Test accuracy of a ridge-regression classifier on one-hot labels (with a bias), fitted
    in closed form on ``(z_train, y_train)`` -- the linear probe of a representation."""
    if z_train.ndim != 2 or z_test.ndim != 2 or len(z_train) != len(y_train) or len(
            z_test) != len(y_test):
        raise ValueError("need z_train [N, k], y_train [N], z_test [M, k], y_test [M]")
    def feats(z: Tensor) -> Tensor:
        return torch.cat([z.to(torch.float64), torch.ones(len(z), 1, dtype=torch.float64)], 1)
    a = feats(z_train)
    onehot = torch.nn.functional.one_hot(y_train.long(), int(y_train.max()) + 1).double()
    w = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=torch.float64),
                           a.T @ onehot)
    return float(((feats(z_test) @ w).argmax(1) == y_test).double().mean())


class LinearGaussianLRDM(DenoiserBase):
    """An exact LRDM: data ``x0 = A u + s e`` (``u ~ N(0, I_k)``, ``e ~ N(0, I_D)``) and a
    linear encoder ``z = W x0``. Given ``z``, ``x0`` is Gaussian (:meth:`given`);
    ``self(x, t, z=z)`` is the exact conditional denoiser ``E[x0 | x_t, z]``."""

    def __init__(self, process: GaussianProcess, mix: Tensor, encoder: Tensor, noise: float):
        self.process = process
        self.A, self.W = mix.to(torch.float64), encoder.to(torch.float64)
        d = self.A.shape[0]
        if self.A.ndim != 2 or self.W.ndim != 2 or self.W.shape[1] != d:
            raise ValueError(f"need mix [D, k] and encoder [latent, D], got "
                             f"{list(self.A.shape)}, {list(self.W.shape)}")
        self.cov = self.A @ self.A.T + noise**2 * torch.eye(d, dtype=torch.float64)
        cw = self.cov @ self.W.T
        self.gain = torch.linalg.solve(self.W @ cw, cw.T).T  # Cov(x0, z) Cov(z)^-1
        cond = self.cov - self.gain @ cw.T
        self._centred = Gaussian(torch.zeros(d, dtype=torch.float64), 0.5 * (cond + cond.T))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.randn(n, self.A.shape[1], generator=generator, dtype=torch.float64)
        return u @ self.A.T + torch.randn(n, self.A.shape[0], generator=generator,
                                          dtype=torch.float64) @ torch.linalg.cholesky(
            self.cov - self.A @ self.A.T).T

    def given(self, z: Tensor) -> Gaussian:
        """The law of ``x0`` given one latent ``z [latent]``."""
        return Gaussian(self.gain @ z.to(torch.float64), self._centred.covariance())

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if "z" not in cond:
            raise ValueError("the LRDM denoiser needs cond z= [B, latent]")
        tt = time_tensor(t, x).to(torch.float64)
        a, s = self.process.alpha(tt), self.process.sigma(tt)
        mean = cond["z"].to(torch.float64) @ self.gain.T  # E[x0 | z] per row
        # a Gaussian with mean m: D(x) = m + D_0(x - alpha m) of the centred law
        shifted = x.to(torch.float64) - a.reshape(-1, 1) * mean
        return (mean + self._centred.denoise_at(shifted, a, s)).to(x.dtype)

"""SparseCtrl in miniature: sparse controls for a frozen video model, on a video whose law is exact.

SparseCtrl (Guo et al., ECCV 2024, "Adding Sparse Controls to Text-to-Video Diffusion Models")
keeps the text-to-video model frozen and trains a *sparse condition encoder* (a ControlNet-like
branch) whose input is the conditions of a few frames (sketch, depth or RGB) with a binary mask
channel; frames without a condition get zeros and mask 0. Its design choice is that the encoder
sees *no noisy latent*, only conditions, mask and time, so it cannot copy the noisy input of
unconditioned frames; its output is added to the frozen model's features.

Here the "video" is ``F`` frames of a 1-D strip of ``P`` pixels with an exact Gaussian law: a
pattern moving one pixel per frame (cyclic shift ``R``) and refreshing at rate ``1 - a^2``,

    x_0 ~ N(0, C),   x_f = a R x_{f-1} + sqrt(1 - a^2) C^(1/2) e_f,

with ``C`` circulant, so every frame has law ``N(0, C)`` and ``Cov(x_f, x_g) = a^(f-g) R^(f-g)
C``. The frozen video model is the exact prior denoiser (:class:`reverie.reference.Gaussian`);
a sparse RGB control of keyframes is the masked linear observation ``y = x[keyframes] + noise``,
whose exact conditional law is :func:`reverie.reference.linear_gaussian_posterior`.

For a linear frozen model the best encoder has a closed form: minimising the denoising loss of
``D(x_t) + h(c, m, t)`` over ``h`` gives ``h = (I - alpha W_t) E[x0 | y]`` with ``D(x_t) = W_t
x_t``, which is exactly the denoiser of ``N(E[x0 | y], S)`` -- the conditional *mean* with the
*prior* covariance. So in this miniature the encoder can move the clip to the keyframes but not
shrink its spread there (it never sees the noisy latent); :func:`encoder_limit` is that law.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference import Gaussian, linear_gaussian_posterior

__all__ = ["MovingVideo", "SparseEncoder", "controls", "best_encoder", "encoder_limit",
           "sparsectrl_denoiser",
           "train_sparse_encoder"]


class MovingVideo:
    """The exact law of ``frames`` frames of ``pixels`` pixels: a smooth pattern (spatial
    correlation length ``width``) moving one pixel per frame, kept with rate ``a`` per frame."""

    def __init__(self, frames: int = 8, pixels: int = 6, a: float = 0.9, width: float = 1.5):
        if frames < 2 or pixels < 2:
            raise ValueError(f"need frames >= 2 and pixels >= 2, got {frames} and {pixels}")
        if not 0.0 <= a < 1.0:
            raise ValueError(f"a must lie in [0, 1), got {a}")
        self.frames, self.pixels = frames, pixels
        i = torch.arange(pixels, dtype=torch.float64)
        d = torch.minimum((i[:, None] - i[None]).abs(), pixels - (i[:, None] - i[None]).abs())
        c = torch.exp(-0.5 * (d / width) ** 2) + 1e-3 * torch.eye(pixels)  # circulant C
        r = torch.roll(torch.eye(pixels, dtype=torch.float64), 1, 0)  # R: shift by one pixel
        blocks = [[None] * frames for _ in range(frames)]
        for f in range(frames):
            for g in range(f + 1):
                k = a ** (f - g) * torch.linalg.matrix_power(r, f - g) @ c  # Cov(x_f, x_g)
                blocks[f][g], blocks[g][f] = k, k.T
        self.cov = torch.cat([torch.cat(row, 1) for row in blocks], 0)
        self.prior = Gaussian(torch.zeros(self.dim, dtype=torch.float64), self.cov)

    @property
    def dim(self) -> int:
        return self.frames * self.pixels

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` clips ``[n, frames, pixels]`` (float64)."""
        return self.prior.sample(n, generator).reshape(n, self.frames, self.pixels)

    def _check_mask(self, mask: Tensor) -> Tensor:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (self.frames,) or not bool(mask.any()):
            raise ValueError(f"mask must be [{self.frames}] booleans with at least one true, got "
                             f"shape {tuple(mask.shape)}")
        return mask

    def observation(self, mask: Tensor) -> Tensor:
        """The matrix ``A`` ``[keyframes * pixels, dim]`` that keeps the frames where ``mask``."""
        keep = self._check_mask(mask).repeat_interleave(self.pixels)
        return torch.eye(self.dim, dtype=torch.float64)[keep]

    def conditional(self, mask: Tensor, keyframes: Tensor, noise_std: float) -> Gaussian:
        """The exact law of the clip given ``keyframes`` ``[mask.sum(), pixels]`` observed with
        Gaussian noise of std ``noise_std`` (> 0 or 0)."""
        a = self.observation(mask)
        y = torch.as_tensor(keyframes, dtype=torch.float64).reshape(-1)
        if y.numel() != a.shape[0]:
            raise ValueError(f"keyframes must hold {int(mask.sum())} x {self.pixels} values, got "
                             f"shape {tuple(keyframes.shape)}")
        post = linear_gaussian_posterior(self.prior, a, y, noise_std**2)
        return Gaussian(post.means[0], post.covariances[0])


def _controls(mask: Tensor, keyframes: Tensor, pixels: int) -> Tensor:
    """SparseCtrl's encoder input: the condition of each frame (zeros where there is none)."""
    c = torch.zeros(*mask.shape, pixels, dtype=keyframes.dtype)
    c[mask] = keyframes.reshape(-1, pixels)
    return c


class SparseEncoder(nn.Module):
    """The sparse condition encoder: an MLP of the per-frame conditions ``cond`` ``[B, F, P]``
    (zeros on frames without one), the mask ``[B, F]`` and the noise level ``log(sigma /
    alpha)`` -- no noisy latent. Its last layer starts at zero (ControlNet's zero convolution),
    so it starts as the frozen model."""

    def __init__(self, frames: int, pixels: int, hidden: int = 128):
        super().__init__()
        self.frames, self.pixels = frames, pixels
        self.net = nn.Sequential(nn.Linear(frames * pixels + frames + 1, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, frames * pixels))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond: Tensor, mask: Tensor, ratio: Tensor) -> Tensor:
        b = cond.shape[0]
        if cond.shape[1:] != (self.frames, self.pixels) or mask.shape != (b, self.frames):
            raise ValueError(f"cond must be [B, {self.frames}, {self.pixels}] and mask "
                             f"[B, {self.frames}]; got {tuple(cond.shape)}, {tuple(mask.shape)}")
        s = torch.log(ratio.reshape(-1).expand(b)).float()[:, None] / 4
        h = torch.cat([cond.reshape(b, -1).float(), mask.float(), s], 1)
        return self.net(h).reshape(b, self.frames, self.pixels)


def sparsectrl_denoiser(video: MovingVideo, encoder: SparseEncoder,
                        process: GaussianProcess) -> Denoiser:
    """The frozen video model plus the encoder's signal: ``D(x_t) + h(cond, mask, t)`` (``x0``
    prediction; call with ``cond=`` ``[B, F, P]`` and ``mask=`` ``[B, F]``)."""

    def fn(x: Tensor, t: Tensor, cond: Tensor, mask: Tensor) -> Tensor:
        base = video.prior.denoise(x.reshape(x.shape[0], -1), t, process).reshape(x.shape)
        with torch.no_grad():
            h = encoder(cond, mask, process.sigma(t) / process.alpha(t))
        return base + h.to(base.dtype)

    return Denoiser(fn, process, prediction="x0")


def train_sparse_encoder(video: MovingVideo, process: GaussianProcess, *, steps: int = 600,
                         batch: int = 256, keyframes: tuple[int, int] = (1, 3),
                         noise_std: float = 0.05, lr: float = 3e-3, seed: int = 0
                         ) -> tuple[SparseEncoder, dict[str, Any]]:
    """Train the encoder alone (the video model stays frozen) on the denoising loss of the
    conditioned model, with a random set of ``keyframes`` conditioned frames per clip
    (SparseCtrl's random sparse masks) observed with noise ``noise_std``; ``t`` uniform in
    log-SNR. Returns the encoder (eval mode) and a record."""
    if not 1 <= keyframes[0] <= keyframes[1] <= video.frames:
        raise ValueError(f"keyframes must be a range (lo, hi) with 1 <= lo <= hi <= "
                         f"{video.frames}, got {keyframes}")
    gen = torch.Generator().manual_seed(seed)
    enc = SparseEncoder(video.frames, video.pixels)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    lam_hi, lam_lo = float(process.log_snr(process.t_min)), float(process.log_snr(process.t_max))
    start, losses = time.time(), []
    for _ in range(steps):
        x0 = video.sample(batch, gen)
        k = torch.randint(keyframes[0], keyframes[1] + 1, (batch, 1), generator=gen)
        rank = torch.rand(batch, video.frames, generator=gen).argsort(1).argsort(1)
        mask = rank < k  # k random frames per clip carry a condition
        noisy = x0 + noise_std * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        cond = noisy * mask[..., None]  # zeros on frames without a condition
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        t = process.t_from_log_snr(lam_hi + (lam_lo - lam_hi) * u)
        alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
        xt = alpha * x0.reshape(batch, -1) + sigma * torch.randn(batch, video.dim, generator=gen,
                                                                 dtype=torch.float64)
        base = video.prior.denoise_at(xt, alpha.reshape(-1), sigma.reshape(-1))  # frozen model
        pred = base.float() + enc(cond, mask, (sigma / alpha).reshape(-1)).reshape(batch, -1)
        loss = ((pred - x0.reshape(batch, -1).float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    enc.eval()
    tail = losses[-max(1, steps // 10):]
    return enc, {"steps": steps, "seconds": time.time() - start,
                 "final_loss": sum(tail) / len(tail),
                 "parameters": sum(p.numel() for p in enc.parameters())}


def encoder_limit(video: MovingVideo, mask: Tensor, keyframes: Tensor,
                  noise_std: float) -> Gaussian:
    """The law an encoder without the noisy latent reaches at best over a linear frozen model:
    ``N(E[x0 | y], S)``, the exact conditional mean with the prior covariance (module doc)."""
    return Gaussian(video.conditional(mask, keyframes, noise_std).means[0], video.cov)


def best_encoder(video: MovingVideo, mask: Tensor, keyframes: Tensor, noise_std: float,
                 scale: float = 1.0):
    """The closed-form best encoder for one control: ``h = (I - alpha W_t) E[x0 | y]`` with
    ``W_t = alpha S (alpha^2 S + sigma^2 I)^-1``; its samples have the law
    :func:`encoder_limit`. ``scale`` multiplies it (a deliberately wrong variant for tests)."""
    mu = video.conditional(mask, keyframes, noise_std).means[0]
    eye = torch.eye(video.dim, dtype=torch.float64)

    def enc(cond: Tensor, mask: Tensor, ratio: Tensor) -> Tensor:
        r2 = float(ratio.reshape(-1)[0]) ** 2  # (sigma / alpha)^2
        h = r2 * torch.linalg.solve(video.cov + r2 * eye, mu)  # (I - alpha W_t) mu
        return scale * h.reshape(video.frames, video.pixels).expand(cond.shape[0], -1, -1)

    return enc


def controls(video: MovingVideo, mask: Tensor, keyframes: Tensor, n: int) -> dict[str, Tensor]:
    """The ``cond`` keywords of :func:`sparsectrl_denoiser` for ``n`` samples of one control."""
    mask = video._check_mask(mask)
    keyframes = torch.as_tensor(keyframes, dtype=torch.float64)
    if keyframes.shape != (int(mask.sum()), video.pixels):
        raise ValueError(f"keyframes must be [{int(mask.sum())}, {video.pixels}] (one frame per "
                         f"true mask entry), got shape {tuple(keyframes.shape)}")
    c = _controls(mask, keyframes, video.pixels)
    return {"cond": c.expand(n, -1, -1), "mask": mask.expand(n, -1)}


"""Structure-modulated noise: a segment-dependent noise mean in the forward process.

SAM-DiffSR (Wang et al. 2024, "SAM-DiffSR: Structure-Modulated Diffusion Model for Image
Super-Resolution"): during training only, each segment of a segmentation of the clean image (from
SAM in the paper) gets a constant value from a structural position embedding, and this encoded
mask ``E`` shifts the noise mean inside its segment:

    eps_M = eps + c(t) E,       x_t = alpha(t) x0 + sigma(t) eps_M,

(``c(t) = 1`` in the paper's default; its optional per-step ``mask_coefficient`` is ``c``). The
network learns ``E[eps_M | x_t]``; the reverse process is *unchanged* (no mask at inference):
``x0_hat = (x_t - sigma eps_hat_M) / alpha`` is still ``E[x0 | x_t]`` of the modulated forward
process, so a :class:`reverie.denoisers.Denoiser` with ``prediction="eps"`` and every
registered sampler run on it. What changes is the law of ``x_t``: its mean is shifted by
``sigma c E``, also at ``t_max``, where the paper still starts from ``N(0, sigma^2 I)``.

:func:`encode_segments` is the paper's encoding (each segment takes the mean over the image of a
fixed position-embedding map restricted to the segment; later segments overwrite earlier ones);
:func:`position_embedding` is its sin-cos map. :class:`ModulatedMixtureReference` gives the
exact marginals and the exact ``E[eps_M | x_t]`` when each mixture component carries its own
noise offset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie._random import Generators, randn_like
from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference import GaussianMixture

__all__ = ["position_embedding", "encode_segments", "modulated_noise", "modulated_add_noise",
           "ModulatedMixtureReference"]


def position_embedding(h: int, w: int) -> Tensor:
    """SAM-DiffSR's sin-cos structural position map ``[h, w]`` (float64):
    ``sin(f_j) cos(sin(f_i))`` with ``f_k = 1000^(2k / size)`` along each axis."""
    fw = torch.pow(1000.0, 2 * torch.arange(w, dtype=torch.float64) / w)
    fh = torch.pow(1000.0, 2 * torch.arange(h, dtype=torch.float64) / h)
    return torch.cos(torch.sin(fh))[:, None] * torch.sin(fw)[None, :]


def encode_segments(labels: Tensor, embedding: Tensor | None = None) -> Tensor:
    """The encoded mask ``E [..., H, W]`` of integer segment maps ``labels [..., H, W]``:
    every pixel of segment ``k >= 0`` gets ``sum_{p in k} embedding[p] / (H W)`` (the mean over
    the image of the embedding restricted to the segment, as in the paper); pixels with a
    negative label (no segment) get 0. ``embedding`` defaults to :func:`position_embedding`."""
    if not isinstance(labels, Tensor) or labels.ndim < 2 or labels.is_floating_point():
        raise TypeError("labels must be an integer tensor [..., H, W] of segment ids")
    h, w = labels.shape[-2:]
    emb = position_embedding(h, w) if embedding is None else embedding.to(torch.float64)
    if emb.shape != (h, w):
        raise ValueError(f"embedding must have shape {(h, w)}, got {tuple(emb.shape)}")
    flat = labels.reshape(-1, h * w)
    ids = flat.clamp(min=0)
    n_seg = int(flat.max()) + 1 if flat.numel() else 0
    sums = torch.zeros(flat.shape[0], max(n_seg, 1), dtype=torch.float64)
    sums.scatter_add_(1, ids, emb.reshape(1, -1).expand_as(flat) * (flat >= 0))
    enc = torch.gather(sums, 1, ids) / (h * w) * (flat >= 0)
    return enc.reshape(labels.shape)


def modulated_noise(encoded: Tensor, generator: Generators = None, coefficient: float = 1.0,
                    noise: Tensor | None = None) -> Tensor:
    """``eps + coefficient * encoded`` with ``eps`` standard Gaussian (fresh, or ``noise``)."""
    if noise is None:
        noise = randn_like(encoded, generator)
    elif noise.shape != encoded.shape:
        raise ValueError(f"noise must have the encoded mask's shape {tuple(encoded.shape)}, "
                         f"got {tuple(noise.shape)}")
    return noise + coefficient * encoded.to(noise.dtype)


def modulated_add_noise(process: GaussianProcess, x0: Tensor, encoded: Tensor,
                        t: float | Tensor, generator: Generators = None,
                        coefficient: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(x_t, eps_M)``: ``x_t = alpha x0 + sigma eps_M`` with the structure-modulated noise
    ``eps_M`` (the regression target of the network)."""
    if encoded.shape != x0.shape:
        raise ValueError(f"the encoded mask must have the data's shape {tuple(x0.shape)}, got "
                         f"{tuple(encoded.shape)}")
    eps_m = modulated_noise(encoded.to(x0.dtype), generator, coefficient)
    return process.add_noise(x0, eps_m, t), eps_m


class ModulatedMixtureReference:
    """Exact laws of the modulated process for mixture data whose component ``k`` carries the
    noise offset ``offsets[k]`` (its encoded mask): ``x_t ~ sum_k w_k N(alpha mu_k + sigma e_k,
    alpha^2 S_k + sigma^2 I)``. :meth:`eps` is the exact ``E[eps_M | x_t]`` (the minimiser of
    the training loss), :meth:`denoiser` the exact data prediction for the samplers."""

    def __init__(self, mixture: GaussianMixture, offsets, process: GaussianProcess):
        self.mixture, self.process = mixture, process
        self.offsets = torch.as_tensor(offsets, dtype=torch.float64)
        if self.offsets.shape != mixture.means.shape:
            raise ValueError(f"offsets must be [K, D] = {tuple(mixture.means.shape)}, got "
                             f"{tuple(self.offsets.shape)}")
        covs = mixture.covariances
        self._parts = [GaussianMixture(mixture.means[k:k + 1], covs[k:k + 1])
                       for k in range(len(mixture.weights))]

    def marginal(self, t: float) -> GaussianMixture:
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        eye = torch.eye(self.mixture.dim, dtype=torch.float64)
        return GaussianMixture(a * self.mixture.means + s * self.offsets,
                               a**2 * self.mixture.covariances + s**2 * eye, self.mixture.weights)

    def denoise(self, x: Tensor, t: float) -> Tensor:
        """``E[x0 | x_t = x]``: per component the Gaussian posterior mean at ``x - sigma e_k``,
        weighted by the component posterior."""
        a, s = self.process.alpha(t), self.process.sigma(t)
        x64 = x.to(torch.float64)
        logp, means = [], []
        for k, part in enumerate(self._parts):
            shifted = x64 - float(s) * self.offsets[k]
            logp.append(part.log_prob_at(shifted, a, s) + self.mixture.log_weights[k])
            means.append(part.denoise_at(shifted, a, s))
        resp = torch.softmax(torch.stack(logp, -1), -1)
        return (resp[..., None] * torch.stack(means, 1)).sum(1).to(x.dtype)

    def eps(self, x: Tensor, t: float) -> Tensor:
        """``E[eps_M | x_t = x] = (x - alpha E[x0 | x]) / sigma``."""
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        return (x - a * self.denoise(x, t)) / s

    def denoiser(self) -> Denoiser:
        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.eps(x, float(t.reshape(-1)[0]))

        return Denoiser(fn, self.process, prediction="eps")

    def prior_sample(self, n: int, t: float, generator: Generators = None) -> Tensor:
        """Exact draws of the modulated ``x_t`` (component labels drawn with the data)."""
        k = torch.multinomial(self.mixture.weights, n, replacement=True, generator=generator)
        x0 = self._draw(k, generator)
        x_t, _ = modulated_add_noise(self.process, x0, self.offsets[k], t, generator)
        return x_t

    def _draw(self, k: Tensor, generator: Generators) -> Tensor:
        z = torch.randn(len(k), self.mixture.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.mixture.covariances
                                     + 1e-12 * torch.eye(self.mixture.dim, dtype=torch.float64))
        return self.mixture.means[k] + (chol[k] @ z[..., None])[..., 0]


"""Nested diffusion: a chain of diffusion models over hierarchical latents.

Zhang et al. (2024), "Nested Diffusion Models Using Hierarchical Latent Priors": latents
``z_1, .., z_L`` at decreasing semantic resolution are built from a pre-trained encoder's
features ``f(x)`` by dimensionality reduction and noise injection (:class:`LatentHierarchy`:
PCA to ``dims[l]`` components, then ``+ noise_levels[l] * N(0, I)``); the most abstract
latent gets an unconditional diffusion model, each lower latent one conditioned on the levels
above it, and the data one conditioned on all latents. Sampling runs the chain top-down
(:func:`nested_sample`), each level with any registered sampler; the condition reaches a model
as the keyword ``latent`` (the concatenation of the higher levels, highest first).

The encoder is any function of the data (the identity in the tests; the paper uses a
pre-trained visual encoder, which is not bundled here). :class:`ConditionalGaussianDenoiser` is
the exact denoiser of a level whose conditional law is Gaussian, ``w | c ~ N(A c + b, S)``: for
Gaussian data and a linear encoder every level is, so the whole chain has an exact reference.
Training: :func:`reverie.train.nested.train_level`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie._random import Generators
from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess

__all__ = ["LatentHierarchy", "ConditionalGaussianDenoiser", "nested_sample"]


@dataclass
class LatentHierarchy:
    """``z_l = (f(x) - mean) @ components[l].T + noise_levels[l] * n_l``, ``l = 1..L`` from the
    finest to the most abstract (fitted by :meth:`fit`). ``encoder`` maps data ``[N, ...]`` to
    features ``[N, F]`` (identity by default)."""

    mean: Tensor
    components: list[Tensor]            # [d_l, F] each, orthonormal rows
    noise_levels: list[float]
    encoder: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def fit(cls, data: Tensor, dims: Sequence[int], noise_levels: Sequence[float],
            encoder: Callable[[Tensor], Tensor] | None = None) -> LatentHierarchy:
        """PCA of the features of ``data``: level ``l`` keeps the leading ``dims[l]`` principal
        directions (``dims`` decreasing: finest first), with noise ``noise_levels[l]``."""
        if len(dims) != len(noise_levels) or not dims:
            raise ValueError(f"need one noise level per latent dimension, got dims={list(dims)} "
                             f"and noise_levels={list(noise_levels)}")
        if list(dims) != sorted(dims, reverse=True) or any(d < 1 for d in dims):
            raise ValueError(f"dims must be positive and decreasing (finest level first), got "
                             f"{list(dims)}")
        if any(s < 0 for s in noise_levels):
            raise ValueError(f"noise levels must be >= 0, got {list(noise_levels)}")
        feats = _features(data, encoder)
        if dims[0] > feats.shape[1]:
            raise ValueError(f"the finest latent ({dims[0]}) cannot exceed the feature "
                             f"dimension {feats.shape[1]}")
        mean = feats.mean(0)
        _, _, vt = torch.linalg.svd(feats - mean, full_matrices=False)
        return cls(mean, [vt[:d].clone() for d in dims], [float(s) for s in noise_levels],
                   encoder)

    def encode(self, data: Tensor, generator: Generators = None) -> list[Tensor]:
        """The latents ``[z_1, .., z_L]`` of ``data`` (fresh injected noise)."""
        feats = _features(data, self.encoder) - self.mean
        out = []
        for comp, s in zip(self.components, self.noise_levels):
            z = feats @ comp.T
            out.append(z + s * torch.randn(z.shape, generator=generator, dtype=z.dtype))
        return out


def _features(data: Tensor, encoder: Callable[[Tensor], Tensor] | None) -> Tensor:
    feats = data if encoder is None else encoder(data)
    return feats.reshape(feats.shape[0], -1).to(torch.float64)


class ConditionalGaussianDenoiser(DenoiserBase):
    """Exact ``E[w0 | w_t, c]`` for ``w0 | c ~ N(A c + b, S)`` (``A = None``: unconditional):
    ``m + alpha S (alpha^2 S + sigma^2 I)^-1 (w_t - alpha m)``, ``m = A c + b``; the condition
    ``c [B, C]`` comes as the keyword ``latent``."""

    def __init__(self, process: GaussianProcess, b, S, A=None):
        self.process = process
        self.b = torch.as_tensor(b, dtype=torch.float64)
        self.S = torch.as_tensor(S, dtype=torch.float64)
        self.A = None if A is None else torch.as_tensor(A, dtype=torch.float64)

    def __call__(self, x: Tensor, t: float | Tensor, latent: Tensor | None = None,
                 **cond: Any) -> Tensor:
        if (self.A is None) != (latent is None):
            raise ValueError("this level " + ("takes no latent" if self.A is None else
                             "needs the latent of the levels above (keyword latent)"))
        tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        a, s = float(self.process.alpha(tt)), float(self.process.sigma(tt))
        m = self.b if latent is None else latent.to(torch.float64) @ self.A.T + self.b
        eye = torch.eye(self.S.shape[0], dtype=torch.float64)
        gain = a * self.S @ torch.linalg.inv(a**2 * self.S + s**2 * eye)
        return (m + (x.to(torch.float64) - a * m) @ gain.T).to(x.dtype)


def nested_sample(levels: Sequence[DenoiserBase], dims: Sequence[int], n: int,
                  sampler: str = "heun", steps: int = 20, *, generator: Generators = None,
                  **options: Any) -> list[Tensor]:
    """Run the chain top-down: ``levels`` and ``dims`` go from the most abstract latent to the
    data (``levels[0]`` unconditional, ``levels[i]`` called with ``latent`` = the outputs of
    levels ``0..i-1`` concatenated). Returns every level's samples, most abstract first."""
    from reverie.samplers import sample

    positive_int("n", n)
    if len(levels) != len(dims) or not levels:
        raise ValueError(f"need one dimension per level, got {len(levels)} levels and "
                         f"{len(dims)} dims")
    out: list[Tensor] = []
    for den, d in zip(levels, dims):
        noise = torch.randn(n, d, generator=generator, dtype=torch.float64)
        cond = {"latent": torch.cat(out, 1)} if out else None
        out.append(sample(den, noise, sampler, steps, generator=generator, cond=cond, **options))
    return out

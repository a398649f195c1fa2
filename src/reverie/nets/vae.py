"""A small variational autoencoder network (Kingma & Welling 2014, "Auto-Encoding Variational
Bayes", Appendix C.2: an MLP Gaussian encoder and an MLP decoder) for
:func:`reverie.train.vae.train_vae`.

With ``hidden=()`` both maps are affine: the linear VAE, whose ELBO is closed-form and whose
optimum is probabilistic PCA (Tipping & Bishop 1999; Lucas et al. 2019, "Don't Blame the
ELBO!"), see :mod:`reverie.reference.ppca`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["MLPVAE"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())  # the paper's hidden units (Appendix C)
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """``encode(x [B, *shape]) -> (mean, logvar)`` of the diagonal Gaussian ``q(z | x)``
    (``[B, latent]`` each) and ``decode(z) -> [B, *shape]``: the decoder's mean (Gaussian
    decoder) or logits (Bernoulli decoder). ``hidden``: widths of the tanh hidden layers of
    each MLP (``()``: affine maps, the linear VAE)."""

    def __init__(self, shape: int | tuple[int, ...], latent: int,
                 hidden: tuple[int, ...] = (256,)):
        super().__init__()
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        dim = math.prod(self.shape)
        if dim < 1 or latent < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"shape, latent and hidden must be positive, got {self.shape}, "
                             f"{latent}, {hidden}")
        self.latent = int(latent)
        self.encoder = _mlp([dim, *hidden, 2 * self.latent])
        self.decoder = _mlp([self.latent, *hidden[::-1], dim])

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the VAE expects [B, {', '.join(map(str, self.shape))}], got "
                             f"{list(x.shape)}")
        mean, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent:
            raise ValueError(f"latents must be [B, {self.latent}], got {list(z.shape)}")
        return self.decoder(z).reshape(z.shape[0], *self.shape)

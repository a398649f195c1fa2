"""Representation learning with diffusion models: LRDM (Traub 2022), an encoder-conditioned
diffusion model whose encoder's latent is the representation (:mod:`reverie.representation.lrdm`).

See docs/representation.md.
"""

from reverie.representation.lrdm import (
    LinearGaussianLRDM,
    LRDMNet,
    encode,
    linear_probe,
    reconstruct,
    train_lrdm,
)

__all__ = ["LRDMNet", "LinearGaussianLRDM", "encode", "linear_probe", "reconstruct",
           "train_lrdm"]

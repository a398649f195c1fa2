"""Representation learning with diffusion models: LRDM (Traub 2022), an encoder-conditioned
diffusion model whose encoder's latent is the representation (:mod:`reverie.representation.lrdm`),
and DoD's two-stage generation conditioned on a visual prior of the first stage's sample
(:mod:`reverie.representation.dod`).

See docs/representation.md.
"""

from reverie.representation.dod import dod_sample
from reverie.representation.lrdm import (
    LinearGaussianLRDM,
    LRDMNet,
    encode,
    linear_probe,
    reconstruct,
    train_lrdm,
)

__all__ = ["LRDMNet", "LinearGaussianLRDM", "dod_sample", "encode", "linear_probe", "reconstruct",
           "train_lrdm"]

"""Representation learning with diffusion models: LRDM (Traub 2022), an encoder-conditioned
diffusion model whose encoder's latent is the representation (:mod:`reverie.representation.lrdm`),
and DoD's two-stage generation conditioned on a visual prior of the first stage's sample
(:mod:`reverie.representation.dod`), and X2I's aligner distillation that lets a frozen
conditional model take another encoder's features (:mod:`reverie.representation.x2i`).

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
from reverie.representation.x2i import distill_aligner, distillation_loss

__all__ = [
    "LRDMNet",
    "LinearGaussianLRDM",
    "distill_aligner",
    "distillation_loss",
    "dod_sample",
    "encode",
    "linear_probe",
    "reconstruct",
    "train_lrdm",
]

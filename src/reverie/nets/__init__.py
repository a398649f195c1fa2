"""Small networks for the bundled models.

* :class:`MLP` -- a time- and class-conditioned residual MLP for low-dimensional data
  (the bundled ``two-moons`` model).
* :func:`digits_unet_config` -- the diffusers ``UNet2DModel`` configuration of the bundled
  ``digits`` model (8x8 grey images, 10 classes plus a null class for classifier-free
  guidance), so its checkpoint is a standard diffusers folder.
* :class:`CoherenceUNet` -- that UNet conditioned on a label and a coherence score (the bundled
  ``digits-coherence`` model; Dufour et al. 2024).

:data:`NETS` maps the class names stored in a ``reverie.json`` model config to constructors.
"""

from reverie.nets.coherence import CoherenceUNet
from reverie.nets.mlp import MLP, SinusoidalEmbedding
from reverie.nets.unet import digits_unet_config, unet_for_images

#: Network classes a native reverie checkpoint may name (``reverie.json`` -> ``net.class``).
NETS = {"MLP": MLP, "CoherenceUNet": CoherenceUNet}

__all__ = ["CoherenceUNet", "MLP", "NETS", "SinusoidalEmbedding", "digits_unet_config",
           "unet_for_images"]

"""Large and long outputs from a window-sized model (docs/large.md).

* :func:`tiled` -- overlapping windows fused per step (MultiDiffusion), wrap-around windows
  for panoramas, randomly shifted tiles (Any-Size-Diffusion's FSTD); :func:`rotating` --
  PanoDiffusion's per-step rotation of a panorama.
* :func:`upscale`, :func:`any_size` -- Any-Size-Diffusion: generate at the trained size with
  the target's aspect ratio, then tiled SDEdit refinement of the enlarged image.
* :func:`outpaint` -- keep a known region and generate the rest (replacement, or any
  posterior sampler of :mod:`reverie.inverse`), on a tiled or panoramic canvas.
* :func:`fam`, :func:`fam_upscale` -- FAM diffusion's frequency modulation: low frequencies
  from the enlarged trained-resolution sample, high frequencies from the high-resolution
  pass; :func:`attention_modulation`, its attention maps steered by the global pass.
* :func:`fifo` -- FIFO-Diffusion: a diagonal denoising queue for sequences of any length.
"""

from reverie.large.anysize import any_size, aspect_shape, upscale
from reverie.large.fam import (
    FAM,
    FILTERS,
    AttentionModulation,
    attention_modulation,
    fam,
    fam_upscale,
    fourier_resize,
)
from reverie.large.fifo import FrameDenoiser, fifo, fifo_ladder, fifo_noise_frames
from reverie.large.outpaint import outpaint
from reverie.large.tiled import WEIGHTS, Rotating, Tiled, rotating, tiled, window_starts

__all__ = [
    "AttentionModulation",
    "FAM",
    "FILTERS",
    "WEIGHTS",
    "Rotating",
    "Tiled",
    "any_size",
    "attention_modulation",
    "aspect_shape",
    "fam",
    "fam_upscale",
    "fifo",
    "fifo_ladder",
    "fifo_noise_frames",
    "FrameDenoiser",
    "fourier_resize",
    "outpaint",
    "rotating",
    "tiled",
    "upscale",
    "window_starts",
]

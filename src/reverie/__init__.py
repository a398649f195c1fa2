"""reverie: inference algorithms for diffusion models, each checked against an exact answer.

The core API::

    import reverie
    proc = reverie.VP.linear()                      # x_t = alpha(t) x0 + sigma(t) eps
    den = reverie.Denoiser(net, proc, "eps")        # any network -> one denoiser interface
    x0 = reverie.sample(den, torch.randn(16, 3, 32, 32), sampler="dpmpp_2m", steps=10)

See :mod:`reverie.process`, :mod:`reverie.denoisers`, :mod:`reverie.grids` and
:mod:`reverie.samplers`.
"""

from reverie import ksamplers as _ksamplers  # noqa: F401  (registers its samplers into SAMPLERS)
from reverie._checks import UserError
from reverie._random import randn, seeded_generators
from reverie.brownian import BrownianTree
from reverie.denoisers import PREDICTIONS, ClassifierFreeGuidance, Denoiser, DenoiserBase
from reverie.grid_fit import optimize_grid
from reverie.grids import GRIDS, make_grid
from reverie.hub import load
from reverie.pipelines import LatentPipeline, StableDiffusion
from reverie.process import (
    EDM,
    VE,
    VP,
    GaussianProcess,
    Interpolant,
    RectifiedFlow,
    VPCosine,
    VPLinear,
)
from reverie.samplers import SAMPLERS, NonFiniteError, SampleOutput, State, Transition, run, sample

__version__ = "0.1.0"


def __getattr__(name: str):  # reverie.diffusers imports diffusers, so only on first use
    if name == "diffusers":
        import importlib

        return importlib.import_module("reverie.diffusers")
    raise AttributeError(f"module 'reverie' has no attribute {name!r}")


__all__ = [
    "BrownianTree",
    "EDM",
    "GRIDS",
    "PREDICTIONS",
    "SAMPLERS",
    "VE",
    "VP",
    "ClassifierFreeGuidance",
    "Denoiser",
    "DenoiserBase",
    "GaussianProcess",
    "Interpolant",
    "LatentPipeline",
    "NonFiniteError",
    "RectifiedFlow",
    "SampleOutput",
    "StableDiffusion",
    "State",
    "Transition",
    "UserError",
    "VPCosine",
    "VPLinear",
    "load",
    "make_grid",
    "optimize_grid",
    "randn",
    "run",
    "sample",
    "seeded_generators",
]

"""Posterior sampling for inverse problems ``y = A(x) + noise`` with a diffusion prior.

``solve(denoiser, operator, y, noise_std, method=NAME, steps=.., particles=.., n=..,
generator=..)`` draws samples of ``p(x | y)``; :data:`METHODS` lists the samplers (DPS, PiGDM,
DDRM, RED-diff, DiffPIR, TDS, MCGdiff, joint structured noise, MMPS). :func:`cddb` corrects a direct
diffusion bridge from the degraded image with data consistency; :func:`diffusion_pde` adds
PDE-residual guidance on a joint solution / coefficient field; :func:`sequential_solve` warm-starts
each frame of a sequence from the previous one; :func:`from_deepinv` turns a deepinv physics into
an operator; :class:`PhaseRetrieval` and :func:`nonlinear_blur` are non-linear forward models
for DPS, RED-diff and TDS; :func:`train_dfm` / :func:`dfm_sample` train and sample a conditional
model of a signal seen only through forward models. See ``docs/inverse.md``.
"""

from reverie.inverse.bayesdiff import (
    BayesDiffResult,
    LastLayerLaplace,
    bayesdiff,
    filter_samples,
    last_layer_laplace,
)
from reverie.inverse.cddb import ConsistentBridgeDenoiser, cddb
from reverie.inverse.deepinv_adapter import (
    DeepinvForward,
    DeepinvOperator,
    compatible_methods,
    from_deepinv,
)
from reverie.inverse.diffusion_pde import diffusion_pde
from reverie.inverse.em import diffusion_fit, em_prior
from reverie.inverse.events import EventResult, event_log_prob, event_sample
from reverie.inverse.flow_vi import FlowPosterior, flow_vi
from reverie.inverse.forward_models import (
    ForwardModelDenoiser,
    SignalGenerator,
    dfm_loss,
    dfm_sample,
    train_dfm,
)
from reverie.inverse.guidance import DiffPIRDenoiser, JointNoiseDenoiser, PiGDMDenoiser
from reverie.inverse.mmps import MMPSDenoiser
from reverie.inverse.noise import GaussianNoise, NoiseModel, PoissonNoise
from reverie.inverse.nonlinear import (
    NonlinearForward,
    PhaseRetrieval,
    Saturated,
    nonlinear_blur,
    random_phase_retrieval,
)
from reverie.inverse.operators import (
    SVD,
    Blur,
    Composed,
    Downsample,
    Identity,
    Inpainting,
    LinearOperator,
    MatrixOperator,
    adjointness_error,
    compressed_sensing,
    gaussian_kernel,
    motion_kernel,
)
from reverie.inverse.sequential import sequential_solve
from reverie.inverse.solve import (
    METHODS,
    InverseResult,
    Method,
    measurement_consistency,
    psnr,
    solve,
)
from reverie.inverse.steerable import LoRALinear, add_lora, steerable_solve

__all__ = [
    "METHODS",
    "ConsistentBridgeDenoiser",
    "cddb",
    "diffusion_pde",
    "ForwardModelDenoiser",
    "SignalGenerator",
    "dfm_loss",
    "dfm_sample",
    "train_dfm",
    "sequential_solve",
    "DeepinvForward",
    "DeepinvOperator",
    "compatible_methods",
    "from_deepinv",
    "BayesDiffResult",
    "LastLayerLaplace",
    "bayesdiff",
    "filter_samples",
    "last_layer_laplace",
    "EventResult",
    "event_log_prob",
    "event_sample",
    "MMPSDenoiser",
    "NonlinearForward",
    "PhaseRetrieval",
    "Saturated",
    "nonlinear_blur",
    "random_phase_retrieval",
    "diffusion_fit",
    "em_prior",
    "FlowPosterior",
    "flow_vi",
    "LoRALinear",
    "add_lora",
    "steerable_solve",
    "DiffPIRDenoiser",
    "InverseResult",
    "JointNoiseDenoiser",
    "Method",
    "PiGDMDenoiser",
    "measurement_consistency",
    "psnr",
    "solve",
    "SVD",
    "Blur",
    "Composed",
    "Downsample",
    "GaussianNoise",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "MatrixOperator",
    "NoiseModel",
    "PoissonNoise",
    "adjointness_error",
    "compressed_sensing",
    "gaussian_kernel",
    "motion_kernel",
]

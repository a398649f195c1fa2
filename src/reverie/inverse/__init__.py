"""Posterior sampling for inverse problems ``y = A(x) + noise`` with a diffusion prior."""

from reverie.inverse.noise import GaussianNoise, NoiseModel, PoissonNoise
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
    gaussian_kernel,
)

__all__ = [
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
    "gaussian_kernel",
]

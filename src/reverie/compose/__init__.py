"""Composition of diffusion models.

* Superposition with tracked densities (SuperDiff, Skreta et al. 2025): :func:`superpose`,
  ``mode="or"`` (mixture) or ``mode="and"`` (equal densities), for any score-only models.
* Products, negations and mixtures of models ("Reduce, Reuse, Recycle", Du et al. 2023) as
  denoiser combinators: :class:`Product`, :class:`Negation`, :class:`Mixture` -- with MCMC
  correctors at each noise level (:class:`ULA`, :class:`MALA`, :class:`HMC`, :class:`UHMC`;
  :func:`sample_with_corrector` runs any core sampler with them).
* Energy-parameterised models for the Metropolis-adjusted correctors: :class:`EnergyDenoiser`,
  :class:`EnergyModel`, :class:`MixtureEnergy` (exact Gaussian mixtures); training one:
  :class:`EnergyNet` (a scalar energy network, noise prediction by autograd) and
  :func:`train_energy` (denoising score matching through the gradient).
* :data:`TOYS` / :func:`toy`: exact 2-D toy mixtures for demos.
"""

from reverie.compose.energy import (
    EnergyDenoiser,
    EnergyModel,
    MixtureEnergy,
    check_same_process,
    has_energy,
)
from reverie.compose.learned import ENERGY_FORMS, EnergyNet, train_energy
from reverie.compose.mcmc import (
    CORRECTORS,
    HMC,
    MALA,
    UHMC,
    ULA,
    CorrectedSample,
    Corrector,
    CorrectorResult,
    make_corrector,
    sample_with_corrector,
)
from reverie.compose.operators import Mixture, Negation, Product
from reverie.compose.superdiff import MODES, Superposition, superpose
from reverie.compose.toys import TOYS, toy

__all__ = [
    "CORRECTORS",
    "HMC",
    "MALA",
    "MODES",
    "UHMC",
    "ULA",
    "CorrectedSample",
    "Corrector",
    "CorrectorResult",
    "EnergyDenoiser",
    "ENERGY_FORMS",
    "EnergyModel",
    "EnergyNet",
    "Mixture",
    "MixtureEnergy",
    "Negation",
    "Product",
    "Superposition",
    "TOYS",
    "check_same_process",
    "has_energy",
    "make_corrector",
    "sample_with_corrector",
    "superpose",
    "toy",
    "train_energy",
]

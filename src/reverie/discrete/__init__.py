"""Masked-diffusion language models: processes, token denoisers, samplers, adapters.

    from reverie import discrete
    model = discrete.load_model("tiny-json")                     # the bundled model
    x = discrete.generate(model, prompt='{"name":', length=64, steps=64,
                          sampler="low_confidence", generator=torch.Generator().manual_seed(0))
    print(model.decode(x[0]))

* processes and the ELBO: :class:`MaskedProcess`, :class:`UniformProcess`, schedules,
  :func:`nelbo`; D3PM's structured transitions (:class:`StructuredProcess`,
  :data:`TRANSITIONS`, :func:`hybrid_loss`); GenMD4's state-dependent masking
  (:class:`GenMD4Process`); Blackout diffusion on counts (:class:`BlackoutProcess`);
* :class:`TokenDenoiser` (any ``fn(x, t) -> logits``, SUBS applied),
  :class:`TokenClassifierFreeGuidance`, :class:`MaskedLM` (transformers models);
* :func:`generate` and the registry :data:`SAMPLERS`; each sampler family's decision
  function is public (``SAMPLERS[name].decide``) so constraints can restrict it; ragged
  prompt batches, ``max_new_tokens``, EOS exit (:func:`end_token_id`), stop strings,
  streaming (:class:`Piece`) and chat templates;
* :func:`load_model` for the bundled ``tiny-json`` model or a saved folder;
* modules: :mod:`~reverie.discrete.posterior` (SGDD, APS, SMC), :mod:`~reverie.discrete.search`
  (best-of-N, FK / twisted SMC, beam), :mod:`~reverie.discrete.bridge` (CTMC Markov bridges,
  DMB's rate matrix), :mod:`~reverie.discrete.rdlm` (RDLM), :mod:`~reverie.discrete.mdpo`
  (MDPO at toy scale), :mod:`~reverie.discrete.embedding` (SED, Plaid).
"""

from reverie.discrete import bridge, embedding, mdpo, posterior, rdlm, search  # noqa: F401
from reverie.discrete.blackout import BlackoutProcess
from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer
from reverie.discrete.d3pm import TRANSITIONS, StructuredProcess, hybrid_loss
from reverie.discrete.denoiser import TokenClassifierFreeGuidance, TokenDenoiser, TokenDenoiserBase
from reverie.discrete.diffusion_gemma import DiffusionGemmaLM
from reverie.discrete.e2d2 import TinyE2D2, e2d2_nelbo
from reverie.discrete.generate import (
    Commit,
    GenerationOutput,
    Piece,
    StepContext,
    TokenSampler,
    end_token_id,
    generate,
)
from reverie.discrete.genmd4 import GenMD4Process, LearnedExponents
from reverie.discrete.hf import MaskedLM
from reverie.discrete.loading import BUNDLED, ReverieBlockLM, ReverieLM, load_model
from reverie.discrete.process import (
    SCHEDULES,
    CosineSchedule,
    DiscreteProcess,
    LinearSchedule,
    MaskedProcess,
    MaskingSchedule,
    PolynomialSchedule,
    UniformProcess,
    make_schedule,
    nelbo,
)
from reverie.discrete.samplers import SAMPLERS
from reverie.discrete.theta_rk2 import decide_theta_rk2  # noqa: F401  (registers theta_rk2)
from reverie.discrete.tokenizer import CharTokenizer

__all__ = [
    "BUNDLED",
    "BlackoutProcess",
    "BlockCausalLM",
    "DiffusionGemmaLM",
    "TinyBlockTransformer",
    "TinyE2D2",
    "e2d2_nelbo",
    "MaskedLM",
    "ReverieBlockLM",
    "ReverieLM",
    "load_model",
    "SAMPLERS",
    "SCHEDULES",
    "TRANSITIONS",
    "StructuredProcess",
    "hybrid_loss",
    "CharTokenizer",
    "Commit",
    "CosineSchedule",
    "DiscreteProcess",
    "GenMD4Process",
    "LearnedExponents",
    "GenerationOutput",
    "LinearSchedule",
    "MaskedProcess",
    "MaskingSchedule",
    "Piece",
    "PolynomialSchedule",
    "StepContext",
    "TokenClassifierFreeGuidance",
    "TokenDenoiser",
    "TokenDenoiserBase",
    "TokenSampler",
    "UniformProcess",
    "end_token_id",
    "generate",
    "make_schedule",
    "nelbo",
]

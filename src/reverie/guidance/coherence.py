"""Coherence-aware classifier-free guidance (Dufour et al. 2024, "Don't drop your samples!
Coherence-aware training benefits conditional diffusion", CVPR, sec. 3).

A coherence-aware model is trained on every example, each with its condition ``y`` and a
coherence score ``c`` in [0, 1] (how much ``y`` can be trusted), and takes ``c`` as an extra
condition (e.g. the bundled ``digits-coherence``: ``reverie.nets.CoherenceUNet``). It learns
to discount ``y`` as ``c`` falls, so the low-coherence prediction plays the unconditional
branch of classifier-free guidance: ``D(y, c_low) + w (D(y, c_high) - D(y, c_low))``, which
needs no label dropout (the paper's coherence-aware CFG).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.denoisers import both_branches
from reverie.guidance import Call, register

__all__ = ["coherence_cfg"]


@register("coherence_cfg", family="cfg", needs=(), conditional_at_one=False,
          options={"high": 1.0, "low": 0.0},
          paper="Dufour et al. 2024 (Don't drop your samples! Coherence-aware training "
          "benefits conditional diffusion), sec. 3",
          description="coherence-aware CFG for a model conditioned on a coherence score "
          "(coherence=): D(y, c=low) + w (D(y, c=high) - D(y, c=low)); no uncond needed")
def coherence_cfg(call: Call, w: float, high: float, low: float) -> Tensor:
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"coherence_cfg needs 0 <= low <= high <= 1, got low={low}, high={high}")
    if "coherence" in call.cond:
        raise ValueError("coherence_cfg sets the coherence itself: give high= and low= options, "
                         "not coherence=")
    n = call.x.shape[0]
    c_high = torch.full((n,), float(high), device=call.x.device)  # the trusted-label branch
    c_low = torch.full((n,), float(low), device=call.x.device)  # the label-ignored branch
    try:
        d_high, d_low = both_branches(call.guided.denoiser, {**call.cond, "coherence": c_low},
                                      call.x, call.t, {**call.cond, "coherence": c_high})
    except TypeError as err:
        if "coherence" not in str(err):
            raise
        raise ValueError("coherence_cfg needs a coherence-conditioned denoiser (one that takes "
                         "coherence=, e.g. reverie.load('digits-coherence'))") from None
    return d_low + w * (d_high - d_low)  # guide from low towards high coherence

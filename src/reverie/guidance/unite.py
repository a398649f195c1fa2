"""Unite and Conquer (Nair, Bandara & Patel 2023, "Unite and Conquer: cross dataset multimodal
synthesis using diffusion models"): several conditions, each from its own model, combined in
one walk.

Each DDPM step is Gaussian, so conditions that are independent given the sample combine in
closed form: the noise (or data) prediction is the unconditional one plus the sum of each
branch's difference from it, every difference weighted by the branch's reliability
``lambda_i`` (how far an off-the-shelf model trained on another dataset is to be trusted) and
the guidance scale ``w``:

    D = D_u + w sum_i lambda_i (D_i - D_u).

The branches are the caller's conditional ``D(x | c)`` followed by ``experts``: each a mapping
of conditioning keywords for the same denoiser, a denoiser (called with the caller's
keywords), or a ``(denoiser, keywords)`` pair. ``uncond`` is as for CFG. At ``w = 1`` and unit
reliabilities this is the exact score of ``p(x) prod_i p(c_i | x)`` whenever the conditions
are independent given the noisy sample too (e.g. conditions on different coordinates of data
whose coordinates are independent), a product of experts relative to ``p(x)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from reverie.denoisers import DenoiserBase
from reverie.guidance import Call, register

__all__ = ["unite_and_conquer"]


def _expert(call: Call, expert) -> Tensor:
    """One expert branch's data prediction at ``(x, t)``."""
    if isinstance(expert, Mapping):
        return call.guided.denoiser(call.x, call.t, **{**call.cond, **expert})
    if isinstance(expert, DenoiserBase):
        return expert(call.x, call.t, **call.cond)
    if (isinstance(expert, Sequence) and len(expert) == 2
            and isinstance(expert[0], DenoiserBase) and isinstance(expert[1], Mapping)):
        return expert[0](call.x, call.t, **expert[1])
    raise TypeError("each expert must be a mapping of conditioning keywords, a denoiser or a "
                    f"(denoiser, keywords) pair; got {type(expert).__name__}")


@register("unite_and_conquer", family="product", needs=("uncond",),
          options={"experts": (), "reliability": None},
          paper="Nair, Bandara & Patel 2023 (Unite and Conquer: cross dataset multimodal "
          "synthesis using diffusion models)",
          description="several conditions (from one model or several) combined as a product "
          "of experts: D_u + w sum_i lambda_i (D_i - D_u) over the caller's conditional and "
          "experts=, with reliability= the lambda_i (default 1 each)")
def unite_and_conquer(call: Call, w: float, experts, reliability) -> Tensor:
    d_c, d_u = call.pair()
    branches = [d_c] + [_expert(call, e) for e in experts]
    lam = [1.0] * len(branches) if reliability is None else [float(v) for v in reliability]
    if len(lam) != len(branches):
        raise ValueError(f"reliability needs one weight per branch (the conditional and "
                         f"{len(experts)} experts = {len(branches)}), got {len(lam)}")
    return d_u + w * sum(v * (d - d_u) for v, d in zip(lam, branches))

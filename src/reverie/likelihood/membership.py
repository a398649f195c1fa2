"""CLiD membership inference: the conditional likelihood discrepancy.

Zhai et al., "Membership Inference on Text-to-Image Diffusion Models via Conditional Likelihood
Discrepancy" (NeurIPS 2024): a conditional model overfits its training pairs ``(x, c)`` more
than the data, so ``log p(x | c) - log p(x)`` (the condition's likelihood gain) is larger for
members than for held-out pairs. The paper estimates the gap from denoising losses with the
condition and with a null / perturbed condition, and its threshold score ``CLiD_th`` mixes it
with the conditional loss:

    score(x, c) = alpha * D(x, c) - (1 - alpha) * L(x, c).

Here ``D`` is the gap integrated over noise levels with the I-MMSE weight, i.e. the pointwise
information of :mod:`.information` (an unbiased estimate of ``log p(x | c) - log p(x)``, not the
paper's uniform-timestep average), and ``L`` the conditional denoising error averaged over the
same log-SNR grid. :func:`roc_auc` scores a member / non-member split.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reverie.denoisers import DenoiserBase
from reverie.likelihood.information import mmse_gap

__all__ = ["clid_score", "roc_auc"]


def clid_score(denoiser: DenoiserBase, x: Tensor, cond: dict[str, Any],
               uncond: dict[str, Any] | None = None, *, alpha: float = 1.0,
               **options: Any) -> Tensor:
    """The CLiD membership score per row of ``x`` (higher: more likely a training member);
    ``options`` go to :func:`reverie.likelihood.mmse_gap`. ``alpha = 1`` (default) is the pure
    discrepancy ``log p(x | c) - log p(x)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gap = mmse_gap(denoiser, x, cond, uncond, **options)
    score = alpha * gap.integrate()  # D(x, c): the conditional likelihood discrepancy
    if alpha < 1.0:  # L(x, c): the conditional denoising error, log-SNR average
        score = score - (1.0 - alpha) * gap.cond_error.mean(0)
    return score


def roc_auc(members: Tensor, nonmembers: Tensor) -> float:
    """Area under the ROC curve of a score that should be larger for ``members``: the
    probability that a random member outscores a random non-member (ties count one half)."""
    m, n = members.reshape(-1, 1).double(), nonmembers.reshape(1, -1).double()
    if m.numel() == 0 or n.numel() == 0:
        raise ValueError(f"need members and non-members, got {m.numel()} and {n.numel()}")
    return float((m > n).double().mean() + 0.5 * (m == n).double().mean())

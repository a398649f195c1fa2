"""X2I in miniature (Ma et al. 2025, "X2I: Seamless Integration of Multimodal Understanding
into Diffusion Transformer via Attention Distillation"): a frozen diffusion model conditioned
on one encoder's output (the teacher: a text encoder's) is given a *different* encoder (the
student: a multimodal model's features) through a small aligner network ``A``, trained by
distillation so that the model conditioned on ``A(student features)`` behaves like the model
conditioned on the teacher's conditioning: ``E || D(x_t, t | A(s)) - D(x_t, t | c) ||^2``
over noisy inputs ``x_t``. The diffusion model is never retrained, and any input the student
encoder accepts (here: another view of the sample) then drives it.

X2I distils the attention outputs of a DiT (and its final prediction); here the frozen model
is any reverie denoiser taking ``cond`` ``z=`` (e.g. an LRDM decoder,
:mod:`reverie.representation.lrdm`) and the distillation matches its data predictions.
:func:`distillation_loss` is the objective, :func:`distill_aligner` fits ``A`` with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reverie._tensor import bcast
from reverie.denoisers import DenoiserBase

__all__ = ["distillation_loss", "distill_aligner"]


def distillation_loss(denoiser: DenoiserBase, aligner: nn.Module, student: Tensor,
                      teacher: Tensor, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Mean ``|| D(x_t, t | z = aligner(student)) - D(x_t, t | z = teacher) ||^2`` at
    ``x_t = alpha(t) x0 + sigma(t) eps`` (one ``t`` per row); differentiable in the aligner."""
    if not len(student) == len(teacher) == len(x0) == len(t) == len(eps):
        raise ValueError(f"student, teacher, x0, t and eps need one batch size, got "
                         f"{[len(v) for v in (student, teacher, x0, t, eps)]}")
    proc = denoiser.process
    xt = bcast(proc.alpha(t), x0).to(x0.dtype) * x0 + bcast(proc.sigma(t), x0).to(x0.dtype) * eps
    with torch.no_grad():
        target = denoiser(xt, t, z=teacher)
    return ((denoiser(xt, t, z=aligner(student)) - target) ** 2).mean()


def distill_aligner(denoiser: DenoiserBase, aligner: nn.Module, student: Tensor,
                    teacher: Tensor, data: Tensor, *, steps: int = 500, batch: int = 128,
                    lr: float = 3e-3, seed: int = 0) -> dict[str, Any]:
    """Fit ``aligner`` by :func:`distillation_loss` on rows of ``(student, teacher, data)``
    with ``t`` uniform in log-SNR over the process's range; the denoiser stays frozen. Returns
    the losses."""
    gen = torch.Generator().manual_seed(seed)
    proc = denoiser.process
    lam_hi, lam_lo = float(proc.log_snr(proc.t_min)), float(proc.log_snr(proc.t_max))
    opt = torch.optim.Adam(aligner.parameters(), lr=lr)
    losses = []
    with torch.enable_grad():  # also under a caller's no_grad
        _fit(denoiser, aligner, student, teacher, data, opt, losses, steps, batch, gen,
             lam_hi, lam_lo)
    return {"steps": steps, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / 20}


def _fit(denoiser, aligner, student, teacher, data, opt, losses, steps, batch, gen, lam_hi,
         lam_lo) -> None:
    proc = denoiser.process
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        t = proc.t_from_log_snr(lam_hi + (lam_lo - lam_hi) * u)
        eps = torch.randn(data[idx].shape, generator=gen, dtype=data.dtype)
        loss = distillation_loss(denoiser, aligner, student[idx], teacher[idx], data[idx], t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

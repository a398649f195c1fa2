"""Self-guided minority sampling (Um & Ye 2024, "Self-guided generation of minority samples
using diffusion models"; their released sampler, ``compute_mg_grad``).

The minority score of ``x_t`` is a reconstruction loss of its own data prediction: perturb
``x0_hat = D(x_t)`` forward to an intermediate time ``t_s``, denoise it again and measure the
distance ``l(x_t) = | x0_hat - D(alpha_s x0_hat + sigma_s eps) |_p`` (the second prediction
held fixed, averaged over ``samples`` draws of ``eps``). Samples the model reconstructs badly
are the rare ones, so guidance ascends ``l``: ``score + w grad_x l`` (the paper's variance-
scaled step on the DDPM mean), with the gradient divided by its largest entry per sample
(``normalize``, the paper's default) and applied at every ``every``-th model call
(intermittent guidance). A negative scale steers towards the majority instead. ``perturb``
sets ``t_s`` as a fraction of the process's time range (the paper's ``p_ratio``, 0.8). At
``alpha = 0`` (a flow's pure-noise end) a score term has no finite data prediction; there the
plain model is used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reverie.guidance import Call, register
from reverie.guidance.gradient import _shift

__all__ = ["minority"]


@register("minority", family="gradient", needs=(), scale_range=(-math.inf, math.inf),
          options={"perturb": 0.8, "samples": 1, "norm": 2.0, "normalize": True, "every": 1,
                   "seed": 0},
          paper="Um & Ye 2024 (Self-guided generation of minority samples using diffusion "
          "models)",
          description="self-guided minority guidance: ascend the reconstruction loss "
          "|D(x) - D(perturbed D(x))| of the sample's own data prediction (the minority "
          "score); negative scales steer towards the majority")
def minority(call: Call, w: float, perturb: float, samples: int, norm: float, normalize: bool,
             every: int, seed: int) -> Tensor:
    if not 0.0 < perturb <= 1.0:
        raise ValueError(f"perturb must lie in (0, 1], got {perturb!r}")
    calls = call.memory.get("minority_calls", 0)
    call.memory["minority_calls"] = calls + 1
    if w == 0 or calls % int(every):  # intermittent guidance: only every n-th model call
        return call.conditional()
    if bool(torch.as_tensor(call.coefs()[0]).eq(0).any()):  # pure noise: a score term is infinite
        return call.conditional()
    gen = call.memory.setdefault("minority_generator", torch.Generator().manual_seed(seed))
    proc, guided = call.process, call.guided
    t_s = proc.t_clean + perturb * (proc.t_max - proc.t_clean)
    t_s = torch.full_like(call.t, t_s)
    with torch.enable_grad():
        x = call.x.detach().requires_grad_(True)
        d = guided.denoiser(x, call.t, **call.cond)
        if not d.requires_grad:
            raise ValueError("guidance method 'minority' differentiates through the denoiser, "
                             "but its output carries no gradient")
        score = torch.zeros(x.shape[0], dtype=d.dtype, device=d.device)
        for _ in range(int(samples)):
            eps = torch.randn(d.shape, generator=gen, dtype=d.dtype).to(d.device)
            again = guided.denoiser(proc.add_noise(d, eps, t_s), t_s, **call.cond).detach()
            score = score + (d - again).flatten(1).norm(p=norm, dim=1) / samples
        (grad,) = torch.autograd.grad(score.sum(), x)
    if normalize:  # the paper's use_normed_grad: the largest entry of each gradient is 1
        grad = grad / grad.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (
            grad.ndim - 1))
    return _shift(call, d.detach(), grad, w)

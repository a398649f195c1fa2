"""RDM's reparameterized training objective (Zheng et al. 2023, "A reparameterized discrete
diffusion model for text generation", Sec. 4; HKUNLP/reparam-discrete-diffusion,
``compute_loss``). The sampling side (RDM's top-k routing) is the ``rdm`` sampler of
:mod:`reverie.discrete.samplers`.

RDM writes each reverse step as routing: a position is either already denoised (``x_t^i =
x0^i``) or noisy, and a noisy one is routed to ``x0^i ~ p(. | x_t)`` at some rate. The ELBO then
reduces to a weighted cross-entropy over the noisy positions only,

    L = E_t lambda(t) E_{x_t ~ q(. | x0)} sum_{i: x_t^i != x0^i} -log p(x0^i | x_t),

with ``lambda = -alpha'(t) / (1 - alpha(t))`` (for absorbing diffusion, where noisy means
masked, this is MD4 / MDLM's bound). RDM trains with a simpler weight instead (its
``--reweighting-type``):

* ``"linear"`` (RDM's default): ``lambda = 1 - t`` -- down-weights the nearly clean times that the
  ELBO's ``1 / t`` (linear schedule) emphasises;
* ``"elbo"``: ``lambda = -alpha' / (1 - alpha)`` (RDM's ``"reciprocal"`` for the linear
  schedule, ``1 / t``): the negative ELBO itself, :func:`reverie.discrete.nelbo`;
* ``"none"``: ``lambda = 1``.

Every such weight keeps the minimiser (the exact ``p(x0^i | x_t)`` at every ``t``); only the
ELBO weight makes the loss a likelihood bound. ``coupled=True`` is RDM's ``--q-sample-mode
coupled``: two iid times per row, sorted ``t_1 >= t_2``, ``x_{t_2}`` drawn from ``q(x_{t_2} |
x_{t_1}, x0)`` (nested masks), both losses averaged: unbiased, since ``x_{t_2}`` is marginally
``q(x_{t_2} | x0)`` and ``{t_1, t_2}`` are two uniform times.

Implemented for absorbing (masked) diffusion, where the noisy positions are the masked ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie._random import Generators
from reverie.discrete._sampling import uniform
from reverie.discrete.process import MaskedProcess, nelbo

__all__ = ["rdm_loss", "REWEIGHTINGS"]

#: The weights ``lambda(t)`` of :func:`rdm_loss`.
REWEIGHTINGS = ("linear", "elbo", "none")


def _weight(proc: MaskedProcess, t: Tensor, reweighting: str) -> Tensor:
    if reweighting == "linear":
        return 1.0 - t
    if reweighting == "elbo":
        return proc.schedule.weight(t)
    return torch.ones_like(t)


def _routed_ce(denoiser, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
    """``sum_{i masked} -log p(x0^i | x_t)``, ``[B]``: the cross-entropy of the noisy positions
    (RDM's ``x_0_ignore``: clean positions carry no loss)."""
    logp = denoiser(xt, t)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(xt == denoiser.mask_id, nll, torch.zeros_like(nll)).sum(-1)


def rdm_loss(
    denoiser,
    x0: Tensor,
    *,
    reweighting: str = "linear",
    coupled: bool = False,
    generator: Generators = None,
) -> Tensor:
    """RDM's reweighted routing loss per sequence, ``[B]`` (nats before weighting; divide by
    ``L`` for RDM's per-token mean). ``denoiser``: a :class:`~reverie.discrete.TokenDenoiser`
    of masked diffusion. With ``reweighting="elbo"`` and ``coupled=False`` this is
    :func:`reverie.discrete.nelbo` with one time per row (the same draws for the same
    generator)."""
    if reweighting not in REWEIGHTINGS:
        raise ValueError(f"unknown reweighting {reweighting!r}; expected one of {REWEIGHTINGS}")
    proc = getattr(denoiser, "process", None)
    if not isinstance(proc, MaskedProcess):
        raise ValueError("RDM's routing loss here is for absorbing (masked) diffusion; the "
                         f"denoiser's process is {type(proc).__name__}")
    if reweighting == "elbo" and not coupled:
        return nelbo(denoiser, x0, generator=generator)
    b = x0.shape[0]
    t1 = 1.0 - uniform((b,), generator, device=x0.device)  # in (0, 1], as in nelbo
    if coupled:  # two iid times, the larger one first
        t2 = 1.0 - uniform((b,), generator, device=x0.device)
        t1, t2 = torch.maximum(t1, t2), torch.minimum(t1, t2)
    xt1 = proc.add_noise(x0, t1, denoiser, generator)
    loss = _weight(proc, t1, reweighting) * _routed_ce(denoiser, x0, xt1, t1)
    if not coupled:
        return loss
    # x_t2 ~ q(. | x_t1, x0): a masked token stays masked with (1 - alpha_t2) / (1 - alpha_t1)
    a1, a2 = proc.alpha(t1).reshape(-1, 1), proc.alpha(t2).reshape(-1, 1)
    stay = torch.where(a1 < 1, (1.0 - a2) / (1.0 - a1), torch.ones_like(a1)).clamp(0.0, 1.0)
    unmask = (xt1 == denoiser.mask_id) & (uniform(x0.shape, generator, device=x0.device) >= stay)
    xt2 = torch.where(unmask, x0, xt1)
    loss2 = _weight(proc, t2, reweighting) * _routed_ce(denoiser, x0, xt2, t2)
    return 0.5 * (loss + loss2)  # {t1, t2} are two iid uniform times: unbiased

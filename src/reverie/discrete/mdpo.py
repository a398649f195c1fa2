"""MDPO: masked diffusion policy optimisation (He, Renz, Cao, Geiger 2025, "MDPO: Overcoming
the Training-Inference Divide of Masked Diffusion Language Models", arXiv 2508.13148; code
``autonomousvision/mdpo``, ``src/open_r1/mdpo/mdpo_trainer.py``), at toy scale.

The model is trained on its *own* denoising trajectories, under the sampler it is used with
(default ``rcr``, MDPO's running-confidence remasking)::

    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(iterations):
        stats = mdpo_step(model, reward, opt, length=4, group_size=16, groups=8,
                          generator=g)

One :func:`mdpo_step`:

1. **rollout** (no gradient): ``groups x group_size`` trajectories of the sampler; at every
   step ``s`` the canvas ``x_s`` and the model's completion estimate ``e_s`` (each masked
   position filled with its most likely token, the code's ``all_steps_output_completion_ids``)
   are kept;
2. **intermediate rewards** ``r_s = reward(e_s)``, and the code's step advantages (its
   "adv-v4"): the reward change ``r_s - r_{s-1}`` (``r_0`` at the first step) plus the mean of
   the rewards after ``s`` (``r_S`` at the last), normalised over each group per step (the
   code's ``+ 1`` cancels in that normalisation and is left out);
3. **policy update**: on the ``train_steps`` steps of largest total ``|A|``, the clipped
   surrogate ``-min(rho A, clip(rho, 1 +- eps) A)`` of the log-probabilities
   ``log p_theta(e_s | x_s)`` at the masked positions, weighted by ``lambda_s = L / #masked``
   and averaged over the masked positions (one optimisation pass, so ``rho = 1`` and the
   gradient is ``A grad log p``).

Not here: the reference-model KL term (``beta = 0``, the code's default), its per-token
confidence weights, several optimisation passes per rollout, prompts and math / code rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reverie._checks import in_range, positive_int
from reverie.discrete._walker import Walker, fill_argmax
from reverie.discrete.denoiser import TokenDenoiserBase

__all__ = ["Rollout", "advantages", "mdpo_step", "rollout"]


class Rollout:
    """Trajectories of a sampler: ``canvases`` ``[S, B, L]`` (the input of each step),
    ``estimates`` ``[S, B, L]`` (the completion estimate at each step), ``rewards`` ``[B, S]``,
    ``samples`` ``[B, L]`` (the final sequences)."""

    def __init__(self, canvases: Tensor, estimates: Tensor, rewards: Tensor, samples: Tensor):
        self.canvases, self.estimates, self.rewards, self.samples = (canvases, estimates,
                                                                     rewards, samples)


@torch.no_grad()
def rollout(model: TokenDenoiserBase, reward: Callable[[Tensor], Tensor], n: int, length: int,
            steps: int | None = None, sampler: str = "rcr",
            generator: torch.Generator | None = None) -> Rollout:
    """``n`` trajectories of ``sampler`` (revising samplers admitted) with the intermediate
    rewards of their completion estimates."""
    walker = Walker(model, length, steps, sampler, generator=generator, revising=True)
    x, carry = walker.start(positive_int("n", n)), None
    canvases, estimates = [], []
    for j in range(walker.steps):
        logp = walker.call(x, walker.times(j, n)[0])
        canvases.append(x)
        estimates.append(fill_argmax(x, logp, model.mask_id))
        x, carry = walker.step(x, j, logp, carry)
    est = torch.stack(estimates)
    est[-1] = x  # the last estimate is the sample itself
    rewards = torch.stack([_reward(reward, e) for e in est], 1)
    return Rollout(torch.stack(canvases), est, rewards, x)


def _reward(reward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r = reward(x)
    if not isinstance(r, Tensor) or r.shape != (x.shape[0],):
        got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"the reward must return one value per sequence, shape "
                         f"[{x.shape[0]}], got {got}")
    return r.double()


def advantages(rewards: Tensor, group_size: int) -> Tensor:
    """MDPO's step advantages ``[B, S]`` from intermediate rewards ``[B, S]``: the change
    ``r_s - r_{s-1}`` plus the mean reward after ``s``, normalised per step over each group of
    ``group_size`` consecutive rows."""
    b, s = rewards.shape
    if b % group_size:
        raise ValueError(f"{b} trajectories do not split into groups of {group_size}")
    change = torch.cat([rewards[:, :1], rewards[:, 1:] - rewards[:, :-1]], 1)
    after = rewards[:, 1:].flip(1).cumsum(1) / torch.arange(1, s, dtype=rewards.dtype)
    future = torch.cat([after.flip(1), rewards[:, -1:]], 1)  # mean of r_{s+1..S}; r_S last
    adv = (change + future).reshape(-1, group_size, s)
    adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-4)
    return adv.reshape(b, s)


def mdpo_step(model: TokenDenoiserBase, reward: Callable[[Tensor], Tensor],
              optimizer: torch.optim.Optimizer, *, length: int, group_size: int = 16,
              groups: int = 8, steps: int | None = None, sampler: str = "rcr",
              train_steps: int = 2, clip: float = 0.2,
              generator: torch.Generator | None = None) -> dict[str, Any]:
    """One MDPO iteration (module notes): rollout, advantages, one policy-gradient update of
    the parameters in ``optimizer`` through ``model`` (its logits must depend on them).
    Returns the rollout's mean final reward and the loss."""
    positive_int("group_size", group_size)
    in_range("clip", clip, 0, 1)
    ro = rollout(model, reward, groups * group_size, length, steps, sampler, generator)
    adv = advantages(ro.rewards, group_size)
    k = min(positive_int("train_steps", train_steps), adv.shape[1])
    chosen = adv.abs().sum(0).topk(k).indices
    optimizer.zero_grad()
    total = 0.0
    for s in chosen.tolist():
        x, target = ro.canvases[s], ro.estimates[s]
        masked = x == model.mask_id
        t = torch.full((x.shape[0],), 1.0 - s / ro.canvases.shape[0])
        logp = model(x, t).log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        a = adv[:, s, None].float()
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
        lam = length / masked.sum(1, keepdim=True).clamp_min(1)
        loss = -(surrogate * lam * masked).sum() / masked.sum().clamp_min(1) / k
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return {"reward": float(ro.rewards[:, -1].mean()), "loss": total,
            "steps_trained": chosen.tolist()}

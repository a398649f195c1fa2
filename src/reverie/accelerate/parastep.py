"""ParaStep's reuse-then-predict parallel denoising (paper 98; Wang, Li, Yu, Guo & Zhao 2025,
"Communication-Efficient Diffusion Denoising Parallelization via Reuse-then-Predict Mechanism").

Adjacent steps have similar noise predictions. With ``degree`` P workers, a *round* starting at
grid index ``i`` (state ``x_i``, last noise prediction ``eps_prev``) does:

1. reuse: worker ``k`` advances ``x_i`` by ``k`` DDIM steps that all reuse ``eps_prev`` (no
   network call), ``x~_{i+k}`` (worker 0 keeps ``x~_i = x_i``);
2. predict: every worker calls the network once at its own point, ``eps_k = eps(x~_{i+k},
   t_{i+k})`` -- the P calls are independent, so they run at once (on P ranks, or batched on one
   device: the paper's single-device "BatchStep");
3. the true trajectory takes the P steps one after another, step ``k`` with ``eps_k``:
   ``x_{i+k+1} = alpha_{i+k+1} x0_k + sigma_{i+k+1} eps_k``, ``x0_k = (x_{i+k} - sigma_{i+k}
   eps_k) / alpha_{i+k}`` (DDIM, eta = 0), and ``eps_prev = eps_{P-1}``.

Only one noise vector per worker is exchanged per round (step-wise communication). The network
is called once per step (NFE = steps) but the sequential depth is ``ceil(steps / P)`` network
latencies. ``degree=1`` is plain DDIM. The first round has no previous prediction: it is
computed first (one extra sequential call, no extra NFE: it is the prediction of step 0).
This is our reading of the mechanism from the paper's abstract and summary; the exact update
the paper's code uses on each model (SVD, CogVideoX, AudioLDM2 schedulers) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie.denoisers import DenoiserBase
from reverie.samplers import SAMPLERS, Schedule, _ddim, _eps, check_finite, resolve_grid

__all__ = ["ParaStepOutput", "parastep"]


@dataclass(frozen=True)
class ParaStepOutput:
    """``x0``: the samples; ``nfe``: network calls (all workers); ``rounds``: sequential
    network latencies (calls that had to wait for the previous one)."""

    x0: Tensor
    nfe: int
    rounds: int


def _repeat_cond(cond: Mapping[str, Any], batch: int, times: int) -> dict[str, Any]:
    return {k: torch.cat([v] * times) if isinstance(v, Tensor) and v.ndim and v.shape[0] == batch
            else v for k, v in cond.items()}


def parastep(denoiser: DenoiserBase, noise: Tensor, steps: int = 20, *, degree: int = 2,
             grid: str | Tensor | None = None, cond: Mapping[str, Any] | None = None,
             parallel: str = "batch") -> ParaStepOutput:
    """Sample with ParaStep's reuse-then-predict rounds of ``degree`` steps (module docstring).

    ``parallel``: ``"batch"`` evaluates a round's ``degree`` predictions in one batched call
    (conditioning tensors with the batch first are repeated), ``"sequential"`` one call after
    another (the definition, for checking), ``"distributed"`` one prediction per rank of the
    ``torch.distributed`` group (its size must equal ``degree``); every rank returns the same
    samples.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an int >= 1, got {degree!r}")
    if degree > steps:
        raise ValueError(f"degree must be <= steps ({steps}), got {degree}")
    if parallel not in ("batch", "sequential", "distributed"):
        raise ValueError(f"unknown parallel={parallel!r}; expected batch, sequential or "
                         "distributed")
    if parallel == "distributed":
        from reverie import distributed as dist

        dist.require_group("parastep(parallel='distributed')")
        if dist.world_size() != degree:
            raise ValueError(f"parallel='distributed' needs a group of degree={degree} ranks, "
                             f"got {dist.world_size()}")
    cond = dict(cond or {})
    g = resolve_grid(SAMPLERS["ddim"], denoiser.process, steps, grid)
    sch = Schedule.build(denoiser.process, g)
    x = noise * sch.sigma[0]  # as reverie.sample: unit noise scaled to the first grid point
    batch = x.shape[0]

    def eps_at(z: Tensor, i: int) -> Tensor:
        return _eps(z, denoiser(z, sch.t[i], **cond), sch, i)

    def predict(points: list[Tensor], first: int) -> list[Tensor]:
        """Step 2: the noise predictions at the round's points (one per worker)."""
        if parallel == "sequential" or len(points) == 1:
            return [eps_at(z, first + k) for k, z in enumerate(points)]
        if parallel == "batch":
            t = torch.cat([torch.full((batch,), sch.t[first + k], dtype=torch.float64)
                           for k in range(len(points))]).to(x.device)
            z = torch.cat(points)
            x0 = denoiser(z, t, **_repeat_cond(cond, batch, len(points))).chunk(len(points))
            return [_eps(p, d, sch, first + k) for k, (p, d) in enumerate(zip(points, x0,
                                                                              strict=True))]
        from reverie import distributed as dist

        r = dist.rank()
        mine = eps_at(points[r], first + r) if r < len(points) else None
        rows = dist.gather_rows(mine, x.device)  # rank order
        return list(rows.split(batch))

    with torch.no_grad():
        i = 0
        eps_prev = eps_at(x, 0)  # step 0's own prediction starts the first round
        nfe, rounds = 1, 1
        first_reused = True  # the first round's worker 0 prediction is eps_prev itself
        while i < sch.steps:
            p = min(degree, sch.steps - i)
            points = [x]
            for k in range(1, p):  # 1. reuse: advance with the previous prediction
                z = points[-1]
                x0 = (z - sch.sigma[i + k - 1] * eps_prev) / sch.alpha[i + k - 1]
                points.append(_ddim(x0, eps_prev, sch, i + k))
            if first_reused:  # worker 0 already has its prediction
                eps = [eps_prev] + (predict(points[1:], i + 1) if p > 1 else [])
                first_reused = False
            else:
                eps = predict(points, i)  # 2. predict, in parallel
            nfe += len(points) - (1 if i == 0 else 0)
            rounds += 1 if (i > 0 or p > 1) else 0
            for k in range(p):  # 3. the true steps, each with its own prediction
                x0 = (x - sch.sigma[i + k] * eps[k]) / sch.alpha[i + k]
                x = _ddim(x0, eps[k], sch, i + k + 1)
                check_finite(x, "parastep", i + k, sch)
            eps_prev = eps[-1]
            i += p
    return ParaStepOutput(x, nfe, rounds)

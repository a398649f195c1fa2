"""Learning a diffusion prior from corrupted observations by expectation-maximisation.

Rozet, Andry, Lanusse & Louppe, "Learning Diffusion Priors from Observations by Expectation
Maximization" (NeurIPS 2024, Alg. 1). Only observations ``y_i = A_i x_i + n_i`` are given,
never a clean ``x_i``. Starting from a prior ``q_0``, each round

* E-step: draws ``x_i ~ q_k(x | y_i)`` for every observation with a posterior sampler on the
  current prior (default: the moment-matching sampler ``"mmps"`` of the paper);
* M-step: fits the next prior ``q_{k+1}`` to these samples (``fit(samples) -> denoiser``:
  in the paper, training the diffusion model for a few epochs from the previous weights --
  :func:`diffusion_fit` is that M-step, on :func:`reverie.train.train`).

The fixed points maximise the likelihood of the observations (EM), so ``q_k`` approaches the
data distribution when the operators ``A_i`` jointly see all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie.denoisers import Denoiser, DenoiserBase
from reverie.inverse.operators import LinearOperator

__all__ = ["diffusion_fit", "em_prior"]


def em_prior(
    fit: Callable[[Tensor], DenoiserBase], prior: DenoiserBase,
    observations: Sequence[tuple[LinearOperator, Tensor]], noise_std: float, *,
    rounds: int = 8, method: str = "mmps", steps: int = 64,
    generator: torch.Generator | None = None,
    callback: Callable[[int, DenoiserBase, Tensor], None] | None = None, **options: Any,
) -> DenoiserBase:
    """The prior after ``rounds`` EM rounds (Rozet et al. 2024, Alg. 1) from the initial
    ``prior``. ``observations``: groups ``(operator, ys [n_g, *operator.out_shape])`` of
    measurements with noise ``noise_std``; ``fit(samples [N, *in_shape]) -> denoiser`` is the
    M-step; ``method``, ``steps`` and ``options`` go to :func:`reverie.inverse.solve` (one
    posterior sample per observation). ``callback(round, denoiser, samples)`` sees each new
    prior and the samples it was fitted to."""
    from reverie.inverse.solve import solve

    positive_int("rounds", rounds)
    if not observations:
        raise ValueError("em_prior needs at least one group of observations (operator, ys)")
    for op, ys in observations:
        if not isinstance(op, LinearOperator):
            raise TypeError(f"each observation group needs a LinearOperator, got "
                            f"{type(op).__name__}")
        if not isinstance(ys, Tensor) or tuple(ys.shape[1:]) != op.out_shape or not len(ys):
            got = tuple(ys.shape) if isinstance(ys, Tensor) else type(ys).__name__
            raise ValueError(f"observations for {op!r} must be [n >= 1, "
                             f"{', '.join(map(str, op.out_shape))}], got {got}")
    den = prior
    for k in range(rounds):
        # E-step: one sample of q_k(x | y_i) per observation
        samples = torch.cat([solve(den, op, ys, noise_std, method=method, steps=steps,
                                   generator=generator, **options) for op, ys in observations])
        den = fit(samples.detach())  # M-step
        if callback is not None:
            callback(k, den, samples)
    return den


def diffusion_fit(
    net: nn.Module, process: Any, *, steps: int = 500, prediction: str = "x0", seed: int = 0,
    **train_options: Any,
) -> Callable[[Tensor], DenoiserBase]:
    """The paper's M-step as a ``fit`` for :func:`em_prior` (Rozet et al. 2024, Alg. 1, line
    "train q_{k+1} on the samples"): each call trains ``net`` for ``steps`` steps on the E-step's
    posterior samples with :func:`reverie.train.train` (objective ``prediction`` on ``process``;
    ``train_options`` such as ``batch_size``, ``lr``, ``warmup``, ``ema_decay`` go to it) and
    returns the denoiser of the EMA weights. ``net`` is trained in place, so round ``k + 1``
    starts from round ``k``'s weights (the paper's warm start), and each round draws from seed
    ``seed + k``."""
    from reverie.train import train

    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    positive_int("steps", steps)
    train_options.setdefault("progress", False)
    rounds = [0]

    def fit(samples: Tensor) -> DenoiserBase:
        dtype = next(iter(net.parameters())).dtype
        res = train(net, samples.to(dtype), process=process, prediction=prediction,
                    steps=steps, seed=seed + rounds[0], **train_options)  # warm start: net
        rounds[0] += 1
        return Denoiser(res.model.eval(), res.process, res.prediction)

    return fit

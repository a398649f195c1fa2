"""SDAR: an autoregressive model converted into a block-diffusion one (SDAR, "A Synergistic
Diffusion-AutoRegression Paradigm for Scalable Sequence Generation", arXiv 2510.06303; code
``JetAstra/SDAR``).

SDAR trains an autoregressive (AR) model by next-token prediction, then converts it by a short
continued training in which two things change at once (no logits shift, no attention-mask
annealing):

1. the attention mask: causal becomes block-causal -- bidirectional inside a block of ``B``
   tokens, causal across blocks (:func:`convert`);
2. the objective: the NLL becomes the block-wise masked-diffusion NELBO, every block denoised
   given the clean blocks before it (BD3-LM's :func:`~reverie.discrete.block.block_nelbo`).

Generation then runs blocks left to right and the tokens of a block in parallel, with dynamic
low-confidence remasking (SDAR's ``low_confidence_dynamic``: reverie's ``threshold`` sampler).

The AR model here is the block-causal network with blocks of one token (BD3-LM: block diffusion
with ``B = 1`` is autoregressive), in one of two forms (:func:`ar_nll`):

* mask-query (the default): the query of position ``i`` is the mask id, it sees the clean
  tokens before ``i`` and predicts ``x_i`` at ``i``. "No logits shift" is then literal: the AR
  weights are the denoiser's, and for ``B = 1`` the converted model's expected block NELBO *is*
  the AR model's NLL (:func:`exact_block_nelbo`);
* ``shifted``: a standard causal LM, position ``i`` reads ``x_{i-1}`` and predicts ``x_i``
  (SDAR's Qwen3 bases). Converted without a shift, position ``i`` then reads ``x_i`` or the
  mask, so the continued training has to re-learn the read-out.

* :func:`ar_nll` -- the AR model's next-token NLL (nats per row), in either form;
* :func:`convert` -- SDAR's paradigm conversion: the AR weights in a block-causal network;
* :func:`block_logp` -- ``log p(x0^i | noisy block of i, clean blocks before it)`` of a
  block-causal network, or exactly of a :class:`~reverie.reference.HiddenMarkovModel`;
* :func:`exact_block_nelbo` -- the block NELBO's expectation over times and masks, in closed
  form (``2^B`` masking patterns with Beta weights; no Monte Carlo);
* :func:`ar_loss`, :func:`block_loss` -- the two training losses, per token;
* :func:`train` -- a small AdamW loop (warm-up, cosine decay) for the tiny models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer
from reverie.discrete.block import (
    TinyBlockTransformer,
    block_causal_mask,
    block_nelbo,
    clean_context_logits,
    run_layers,
)

__all__ = [
    "ar_loss",
    "ar_nll",
    "block_logp",
    "block_loss",
    "convert",
    "exact_block_nelbo",
    "train",
]


def _mask_id(net: TinyBlockTransformer) -> int:
    return int(net.config["vocab_size"])  # the extra input id (no logit)


def ar_nll(net: TinyBlockTransformer, x0: Tensor, shifted: bool = False) -> Tensor:
    """Next-token NLL ``sum_i -log p(x_i | x_<i)`` of ``x0`` ``[B, L]``, nats per row ``[B]``,
    every position at once (teacher forcing), attention causal whatever ``net.block_size``.

    ``shifted=False`` (the form SDAR's conversion keeps): ``x_i`` is predicted at position
    ``i`` by the mask id there, which attends to itself and to the clean tokens before it
    (``[masks ; x0]``, ``2L`` positions). ``shifted=True``: a standard causal LM on ``L``
    positions, position ``i`` reads ``x_{i-1}`` (the mask id as BOS at ``i = 0``) and predicts
    ``x_i`` -- after conversion the token at ``i`` is ``x_i`` itself (or the mask), so the
    continued training has to move the prediction."""
    mask_id = _mask_id(net)
    if shifted:
        inp = torch.cat([torch.full_like(x0[:, :1], mask_id), x0[:, :-1]], 1)
        pos = torch.arange(x0.shape[1], device=x0.device)
        logits, _ = run_layers(net, inp, pos, mask=block_causal_mask(pos, pos, 1))
    else:
        logits = clean_context_logits(net, torch.full_like(x0, mask_id), x0, 1)
    logp = torch.log_softmax(logits, -1)
    return -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1).sum(-1)


def convert(ar: TinyBlockTransformer, block_size: int) -> TinyBlockTransformer:
    """SDAR's paradigm conversion: a block-causal network with blocks of ``block_size`` whose
    weights are the AR network's (same shapes; only the attention mask changes)."""
    if not isinstance(ar, TinyBlockTransformer):
        raise TypeError(f"convert expects a TinyBlockTransformer, got {type(ar).__name__}")
    if ar.block_size != 1:
        raise ValueError(f"SDAR converts an autoregressive network (block_size 1), "
                         f"got block_size {ar.block_size}")
    config = {k: v for k, v in ar.config.items() if k != "block_size"}
    net = TinyBlockTransformer(block_size=integer("block_size", block_size, 1), **config)
    p = ar.pos
    net.to(device=p.device, dtype=p.dtype).load_state_dict(ar.state_dict())  # the AR weights
    return net.train(ar.training)


def block_logp(model: Any, xt: Tensor, x0: Tensor, block_size: int) -> Tensor:
    """``log p(x0^i = v | the block of i in x_t, the clean blocks of x0 before it)``,
    ``[B, L, V]``. ``model`` -- a block-causal network (:func:`clean_context_logits`, all
    blocks in one forward), a :class:`~reverie.reference.HiddenMarkovModel` (exact, by
    forward-backward: later blocks unseen), or a callable ``(xt, x0) -> log-probs``."""
    from reverie.reference import HiddenMarkovModel

    if isinstance(model, HiddenMarkovModel):
        out = []
        for lo in range(0, x0.shape[1], block_size):
            hi = min(lo + block_size, x0.shape[1])
            rest = torch.full_like(x0[:, hi:], model.mask_id)
            canvas = torch.cat([x0[:, :lo], xt[:, lo:hi], rest], 1)  # clean | noisy | unseen
            out.append(model.conditionals(canvas, model.mask_id)[:, lo:hi].log())
        return torch.cat(out, 1)
    if isinstance(model, torch.nn.Module):
        return torch.log_softmax(clean_context_logits(model, xt, x0, block_size), -1)
    return model(xt, x0)


def exact_block_nelbo(model: Any, x0: Tensor, block_size: int, mask_id: int | None = None
                      ) -> Tensor:
    """The block NELBO of ``x0`` ``[B, L]`` (nats per row ``[B]``) averaged exactly over the
    times and the masks: a block masked at ``t ~ U(0, 1]`` (linear schedule, weight ``1/t``)
    whose positions ``S`` are masked contributes ``sum_{i in S} -log p(x0^i | rest)`` with
    weight ``int t^{|S|-1} (1-t)^{B-|S|} dt = (|S|-1)! (B-|S|)! / B!``; all ``2^B`` patterns
    are enumerated, each tiled over every block in one call (a block sees only clean earlier
    blocks). With the exact conditionals it equals ``-log p(x0)``; for ``B = 1`` it is the
    next-token NLL. ``model`` as in :func:`block_logp`; ``mask_id`` defaults to the network's
    extra input id or the reference's ``mask_id``."""
    b = integer("block_size", block_size, 1)
    length = x0.shape[1]
    if length % b:
        raise ValueError(f"the length {length} must be a multiple of block_size {b}")
    if mask_id is None:
        mask_id = getattr(model, "mask_id", None)
    if mask_id is None:
        if not isinstance(getattr(model, "config", None), dict):
            raise ValueError(f"exact_block_nelbo needs mask_id= for a {type(model).__name__}")
        mask_id = _mask_id(model)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for pattern in itertools.product((False, True), repeat=b):
        k = sum(pattern)
        if k == 0:
            continue
        weight = math.factorial(k - 1) * math.factorial(b - k) / math.factorial(b)
        masked = torch.tensor(pattern, device=x0.device).repeat(length // b).expand_as(x0)
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        nll = -block_logp(model, xt, x0, b).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        total += weight * torch.where(masked, nll, torch.zeros_like(nll)).sum(-1).double()
    return total


def ar_loss(net: TinyBlockTransformer, x0: Tensor, generator: torch.Generator | None = None,
            shifted: bool = False) -> Tensor:
    """The AR training loss: :func:`ar_nll` per token, averaged over the batch."""
    return ar_nll(net, x0, shifted).mean() / x0.shape[1]


def block_loss(net: TinyBlockTransformer, x0: Tensor, generator: torch.Generator | None = None
               ) -> Tensor:
    """SDAR's / BD3-LM's loss: :func:`~reverie.discrete.block.block_nelbo` per token with an
    independent time in (0, 1] for every block of every row, averaged over the batch."""
    blocks = -(-x0.shape[1] // net.block_size)
    t = 1.0 - torch.rand((x0.shape[0], blocks), generator=generator, dtype=torch.float64)
    return block_nelbo(net, x0, t, generator).mean() / x0.shape[1]


def train(
    net: TinyBlockTransformer,
    loss: Callable[[TinyBlockTransformer, Tensor, torch.Generator], Tensor],
    data: Callable[[int], Tensor],
    steps: int,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
) -> list[float]:
    """``steps`` AdamW steps on ``loss(net, data(step), generator)`` (linear warm-up over
    ``min(100, steps // 10)`` steps, cosine decay to 5%, gradients clipped at 1), as
    ``scripts/train_tiny_json.py``; returns the losses. ``log(step, loss)`` is called every
    100 steps."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    net.train()
    for step in range(steps):
        frac = max(0, step - warmup) / max(1, steps - warmup)
        scale = min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        value = loss(net, data(step), gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(value.item())
        if log is not None and (step + 1) % 100 == 0:
            log(step + 1, sum(losses[-100:]) / len(losses[-100:]))
    net.eval()
    return losses

"""KV caches for :func:`reverie.discrete.generate` (``cache=None | "prefix" | "dual"``).

* On a block-causal model (:class:`~reverie.discrete.block.BlockCausalLM`) ``"prefix"`` is
  the **exact** prefix cache (:class:`~reverie.discrete.block.ExactPrefixCache`): the tokens
  equal the uncached run's.
* On a bidirectional model whose network exposes its layers (reverie's
  :class:`~reverie.discrete.nets.TinyTransformer`, e.g. the bundled ``tiny-json``) ``"prefix"``
  and ``"dual"`` are Fast-dLLM v1's **approximate** caches (Wu et al. 2025, arXiv 2505.22618,
  ``generate_with_prefix_cache`` / ``generate_with_dual_cache``): at the first step of every
  block one full forward refreshes the keys and values of every position (its logits are used
  for that step); at the other steps of the block

  - ``prefix`` recomputes the block *and everything after it*, attending to the cached keys
    and values of the positions before the block;
  - ``dual`` recomputes only the block, attending to the cached keys and values before *and*
    after it.

  The prefix's keys and values are stale within a block (in a bidirectional model they depend
  on the block's tokens, which change), so the tokens differ from the uncached run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie.discrete.block import BlockCausalLM, ExactPrefixCache, KVCache, run_layers
from reverie.discrete.denoiser import subs
from reverie.discrete.nets import TinyTransformer

__all__ = ["CACHES", "FastDLLMCache", "make_cache"]

#: The values of ``generate(..., cache=...)`` besides ``None``.
CACHES = ("prefix", "dual")


def _network(model: Any) -> Any:
    """The reverie transformer behind a token denoiser, or ``None``."""
    net = getattr(model, "network", None)
    if net is None:  # a TokenDenoiser wrapping the network's forward
        net = getattr(getattr(model, "fn", None), "__self__", None)
    return net if isinstance(net, TinyTransformer) else None


def make_cache(kind: str, model: Any, n: int, length: int, block_length: int,
               pad: Any = None, origin: Any = None) -> Any:
    """The object :func:`~reverie.discrete.generate` calls instead of the model. ``pad`` --
    left padding per row (ragged prompts; the exact prefix cache only); ``origin`` -- the
    column each row's blocks tile from."""
    if kind not in CACHES:
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {kind!r}")
    if isinstance(model, BlockCausalLM):
        if kind == "dual":
            raise ValueError(
                "cache='dual' is for bidirectional models; a block-causal model never attends "
                "to later blocks, so its exact cache is cache='prefix'"
            )
        return ExactPrefixCache(model, n, length, block_length, pad, origin)
    if pad is not None:
        raise ValueError(f"cache={kind!r} needs prompts of one length for now (left-padded rows "
                         "would need per-row positions); pass length= or equal prompts")
    if getattr(model, "time_conditioned", True):
        raise ValueError(
            f"cache={kind!r} needs a model without time conditioning (cached keys and values "
            "would be for another t)"
        )
    net = _network(model)
    if net is None:
        raise ValueError(
            f"cache={kind!r} on a bidirectional model needs a reverie TinyTransformer network "
            f"(its layers expose keys and values); {type(model).__name__} does not, so use "
            "cache=None"
        )
    return FastDLLMCache(model, net, kind, n, length, block_length, origin)


class FastDLLMCache:
    """Fast-dLLM v1's prefix / dual cache for a bidirectional :class:`TinyTransformer`
    (module docstring). Refreshed by a full forward at each row's first step of a block."""

    exact = False

    def __init__(self, model, net: TinyTransformer, kind: str, n: int, length: int,
                 block_length: int, origin: Tensor | None = None):
        self.model, self.net, self.kind, self.block_length = model, net, kind, block_length
        # the column each row's blocks tile from (generate's origin)
        self.origin = torch.zeros(n, dtype=torch.long) if origin is None else origin.long().cpu()
        p = net.tok.weight
        heads, dim = net.config["heads"], net.config["dim"]
        self.cache = KVCache(len(net.blocks), n, heads, length, dim // heads, p.dtype, p.device)
        self.peak_bytes = self.cache.nbytes
        self.block_of = torch.full((n,), -1, dtype=torch.long)  # block start of the refresh
        self.logp: Tensor | None = None
        self.last_x: Tensor | None = None
        self.nfe = 0
        self.row_evals = 0

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        self.row_evals += x.shape[0]
        return self.model(x, t)

    def __call__(self, x: Tensor, t: Tensor, need: Tensor) -> Tensor:
        n, length = x.shape
        mask_id, bl = self.model.mask_id, self.block_length
        if self.logp is None:
            self.logp = torch.zeros(n, length, self.model.vocab_size, device=x.device)
            self.last_x = torch.full_like(x, -1)
        pos = torch.arange(length, device=x.device)
        first = torch.where(x == mask_id, pos, length).min(-1).values.cpu()
        lo = self.origin + ((first - self.origin) // bl) * bl  # the current generation block
        rows = (need & (x != self.last_x).any(-1)).cpu()
        refresh = rows & (lo != self.block_of)
        with torch.no_grad():
            if bool(refresh.any()):  # full forward: every position's keys and values
                idx = refresh.nonzero().squeeze(-1).to(x.device)
                logits, fresh = run_layers(self.net, x[idx], pos)
                self.cache.write(idx, 0, fresh)
                self.logp[idx] = subs(logits, x[idx], mask_id)
                self.block_of[refresh] = lo[refresh]
                self._count(len(idx))
            for start in lo[rows & ~refresh].unique().tolist():
                idx = (rows & ~refresh & (lo == start)).nonzero().squeeze(-1).to(x.device)
                end = length if self.kind == "prefix" else min(start + bl, length)
                before = self.cache.read(idx, 0, start)
                after = self.cache.read(idx, end, length)  # None for the prefix cache
                logits, _ = run_layers(self.net, x[idx, start:end], pos[start:end], before, after)
                self.logp[idx, start:end] = subs(logits, x[idx, start:end], mask_id)
                self._count(len(idx))
        self.last_x[rows.to(x.device)] = x[rows.to(x.device)]
        return self.logp

    def _count(self, rows: int) -> None:
        self.nfe += 1
        self.row_evals += rows

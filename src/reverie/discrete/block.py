"""Block-causal (block diffusion) language models and their exact prefix KV cache.

In a block-causal model (BD3-LM, Arriola et al. 2025; SDAR; LLaDA2; Fast-dLLM v2) a token of
block ``b = position // block_size`` attends to every token of blocks ``<= b``: causal across
blocks, bidirectional inside a block. A finished block's keys and values then depend only on
finished blocks, so they never go stale: generation block by block can encode each finished
block once (the *commit* forward) and denoise the current block against that cache. The tokens
are those of the full-canvas run (same seeds); only rounding differs (on the test model's
logits: 4.8e-7 in float32, 0 in float64).

* :class:`BlockCausalLM` -- the model interface: a token denoiser (its ``__call__`` is the
  uncached full-canvas reference) with ``block_size`` and ``forward_cached(cache, rows, tokens,
  start, commit)``;
* :class:`TinyBlockTransformer` -- a small reference network with that path (and the
  ``model(input_ids, attention_mask, position_ids).logits`` contract of diffusers'
  ``LLaDA2Pipeline``);
* :class:`KVCache` -- preallocated per-layer keys/values: memory is fixed at the start and does
  not grow with the steps;
* :func:`block_nelbo` -- BD3-LM's training loss (every block at once, each against the clean
  blocks before it), which ``scripts/train_tiny_json.py --block-size`` trains with;
* :class:`ExactPrefixCache` -- what :func:`reverie.discrete.generate` calls instead of the model
  with ``cache="prefix"`` on a block-causal model.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reverie._checks import integer
from reverie.discrete.denoiser import TokenDenoiser, subs
from reverie.discrete.nets import TinyTransformer

__all__ = [
    "BlockCausalLM",
    "ExactPrefixCache",
    "KVCache",
    "TinyBlockTransformer",
    "block_causal_mask",
    "block_nelbo",
    "clean_context_logits",
    "run_layers",
]


# ---------------------------------------------------------------------------------------------
# Layers with explicit keys and values (TinyTransformer's blocks)
# ---------------------------------------------------------------------------------------------


def block_causal_mask(q_pos: Tensor, k_pos: Tensor, block_size: int) -> Tensor:
    """``[len(q_pos), len(k_pos)]`` bool: key visible iff its block is not after the query's."""
    return (k_pos[None, :] // block_size) <= (q_pos[:, None] // block_size)


def run_layers(
    net: TinyTransformer,
    tokens: Tensor,
    positions: Tensor,
    before: list[tuple[Tensor, Tensor]] | None = None,
    after: list[tuple[Tensor, Tensor]] | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The transformer of ``net`` on ``tokens`` ``[b, n]`` at ``positions`` ``[n]`` (or
    ``[b, n]``), attending to cached keys/values ``before`` and ``after`` the window (per layer
    ``(k, v)`` ``[b, heads, m, head_dim]``) and to the window itself. ``mask`` -- bool
    ``[n, m_before + n + m_after]`` (or broadcastable to ``[b, 1, n, keys]``), True = visible;
    ``None`` = everything visible. Returns the logits ``[b, n, V]`` and the window's per-layer
    ``(k, v)``. With no cache and no mask this is ``net(tokens)`` op for op."""
    h = net.tok(tokens) + net.pos[positions]
    fresh = []
    for i, blk in enumerate(net.blocks):
        b, n, d = h.shape
        q, k, v = blk.qkv(blk.norm1(h)).reshape(b, n, 3, blk.heads, d // blk.heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        fresh.append((k, v))
        keys, values = k, v
        if before is not None:  # cached context left of the window
            keys, values = torch.cat([before[i][0], keys], 2), torch.cat([before[i][1], values], 2)
        if after is not None:  # cached context right of the window (Fast-dLLM's dual cache)
            keys, values = torch.cat([keys, after[i][0]], 2), torch.cat([values, after[i][1]], 2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        h = h + blk.proj(a.transpose(1, 2).reshape(b, n, d))
        h = h + blk.mlp(blk.norm2(h))
    return net.head(net.norm(h)), fresh


# ---------------------------------------------------------------------------------------------
# The reference block-causal network
# ---------------------------------------------------------------------------------------------


class TinyBlockTransformer(TinyTransformer):
    """:class:`~reverie.discrete.nets.TinyTransformer` with a block-causal mask over blocks of
    ``block_size`` positions. The mask token is an extra input id ``vocab_size`` without a
    logit (MD4 style), so the network never predicts it.

    ``forward(x, t=None)`` -> logits ``[B, L, vocab_size]``; called with ``input_ids=``,
    ``attention_mask=`` (2D) or ``position_ids=`` (diffusers' ``LLaDA2Pipeline``) it returns an
    object with ``.logits``; key positions with attention
    mask 0 are hidden. ``forward_cached`` is the KV-cache path (:class:`BlockCausalLM`)."""

    def __init__(self, vocab_size: int, length: int, block_size: int, **kw: Any):
        super().__init__(vocab_size, length, **kw)
        self.block_size = integer("block_size", block_size, 1)
        self.config["block_size"] = self.block_size
        self.tok = nn.Embedding(vocab_size + 1, self.config["dim"])  # + the mask's input id
        nn.init.normal_(self.tok.weight, std=0.02)

    @property
    def device(self) -> torch.device:  # what diffusers pipelines ask their modules
        return self.pos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos.dtype

    def forward(  # type: ignore[override]
        self,
        x: Tensor | None = None,
        t: Tensor | None = None,
        *,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Any:
        ids = x if x is not None else input_ids
        n = ids.shape[1]
        if n > self.pos.shape[0]:
            raise ValueError(f"sequence length {n} exceeds this model's length {self.pos.shape[0]}")
        pos = torch.arange(n, device=ids.device) if position_ids is None else position_ids
        mask = block_causal_mask(torch.arange(n), torch.arange(n), self.block_size).to(ids.device)
        if attention_mask is not None:  # hide padded keys: [B, 1, n, n]
            mask = mask[None, None] & attention_mask.bool()[:, None, None, :]
        logits, _ = run_layers(self, ids, pos, mask=mask)
        plain = input_ids is None and attention_mask is None and position_ids is None
        return logits if plain else SimpleNamespace(logits=logits)

    def forward_cached(
        self, cache: KVCache, rows: Tensor, tokens: Tensor, start: int, commit: int = 0
    ) -> Tensor:
        """Logits of ``tokens`` ``[r, n]`` at positions ``start..start+n`` of the cached
        ``rows``, given their cache of positions ``[0, start)``. The first ``commit`` tokens
        are finished: their keys and values are stored (the commit of finished blocks, fused
        with the next block's first step; they attend only to earlier blocks, so they are what
        a separate commit forward would store)."""
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        keys = torch.arange(start + tokens.shape[1], device=tokens.device)
        mask = block_causal_mask(pos, keys, self.block_size)
        logits, fresh = run_layers(self, tokens, pos, cache.read(rows, 0, start), mask=mask)
        if commit:
            cache.write(rows, start, [(k[:, :, :commit], v[:, :, :commit]) for k, v in fresh])
        return logits

    def new_cache(self, n: int, capacity: int) -> KVCache:
        p = self.tok.weight
        heads, dim = self.config["heads"], self.config["dim"]
        return KVCache(len(self.blocks), n, heads, capacity, dim // heads, p.dtype, p.device)


# ---------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------


def clean_context_logits(net: TinyTransformer, xt: Tensor, x0: Tensor, block_size: int) -> Tensor:
    """Logits ``[B, L, V]`` of every noisy block of ``xt`` given the *clean* blocks of ``x0``
    before it -- the context generation gives a block -- in one forward (BD3-LM's vectorised
    loss, Arriola et al. 2025). The input is ``[x_t ; x_0]`` (``2L`` tokens, positions
    repeated); a noisy query sees the noisy keys of its own block and the clean keys of earlier
    blocks, a clean query the clean keys of its block and earlier ones."""
    length = xt.shape[1]
    block = torch.arange(length, device=xt.device) // block_size
    both = torch.cat([block, block])
    same, before = both[:, None] == both[None, :], both[None, :] < both[:, None]
    noisy = torch.arange(2 * length, device=xt.device) < length
    mask = torch.where(noisy[:, None], (noisy[None, :] & same) | (~noisy[None, :] & before),
                       ~noisy[None, :] & (same | before))
    pos = torch.cat([torch.arange(length, device=xt.device)] * 2)
    logits, _ = run_layers(net, torch.cat([xt, x0], 1), pos, mask=mask)
    return logits[:, :length]


def block_nelbo(
    net: TinyBlockTransformer, x0: Tensor, t: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """The masked-diffusion NELBO of a block-causal network, nats per row ``[B]``: block ``b``
    of row ``i`` is masked at its own time ``t[i, b]`` in (0, 1] (linear schedule, MD4 weight
    ``1 / t``) and predicted from the clean blocks before it (:func:`clean_context_logits`).
    The mask is the network's extra input id ``vocab_size``."""
    length = x0.shape[1]
    block = torch.arange(length, device=x0.device) // net.block_size
    tb = t.to(x0.device)[:, block]  # each position's time
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    masked = u < tb
    xt = torch.where(masked, torch.full_like(x0, net.config["vocab_size"]), x0)
    logp = torch.log_softmax(clean_context_logits(net, xt, x0, net.block_size).float(), -1)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(masked, nll / tb.float(), torch.zeros_like(nll)).sum(-1)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------


class KVCache:
    """Per-layer keys and values ``[layers, rows, heads, capacity, head_dim]``, allocated once:
    memory (:attr:`nbytes`) is fixed by the canvas and never grows with the steps.
    ``length[r]`` -- how many leading positions of row ``r`` hold valid entries."""

    def __init__(self, layers, n, heads, capacity, head_dim, dtype, device):
        shape = (layers, n, heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = torch.zeros(n, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def read(self, rows: Tensor, lo: int, hi: int) -> list[tuple[Tensor, Tensor]] | None:
        """Per-layer ``(k, v)`` of positions ``[lo, hi)`` of ``rows`` (``None`` when empty)."""
        if hi <= lo:
            return None
        return [(k[rows, :, lo:hi], v[rows, :, lo:hi]) for k, v in zip(self.k, self.v)]

    def write(self, rows: Tensor, start: int, fresh: list[tuple[Tensor, Tensor]]) -> None:
        """Store per-layer ``(k, v)`` ``[r, heads, n, d]`` at positions ``start..start+n``."""
        n = fresh[0][0].shape[2]
        for i, (k, v) in enumerate(fresh):
            self.k[i, rows, :, start : start + n] = k
            self.v[i, rows, :, start : start + n] = v
        self.length[rows.cpu()] = start + n


# ---------------------------------------------------------------------------------------------
# The model interface
# ---------------------------------------------------------------------------------------------


class BlockCausalLM(TokenDenoiser):
    """A block-causal masked-diffusion LM as a token denoiser.

    ``network`` -- called as ``network(x)`` on the whole canvas (the uncached reference) and,
    for ``cache="prefix"``, providing ``forward_cached(cache, rows, tokens, start, commit)`` and
    ``new_cache(n, capacity)`` (see :class:`TinyBlockTransformer`). ``block_size`` -- the
    model's attention block (default ``network.block_size``); generation blocks must be a
    multiple of it. ``mask_id`` -- default ``vocab_size`` (an extra input id, as
    :class:`TinyBlockTransformer`)."""

    attention = "block_causal"

    def __init__(
        self,
        network: nn.Module,
        *,
        vocab_size: int,
        mask_id: int | None = None,
        block_size: int | None = None,
        tokenizer: Any = None,
    ):
        block_size = getattr(network, "block_size", None) if block_size is None else block_size
        if block_size is None:
            raise ValueError("a block-causal model needs its block_size (the network has none)")
        self.block_size = integer("block_size", block_size, 1)
        mask_id = vocab_size if mask_id is None else mask_id
        super().__init__(self._full, mask_id=mask_id, vocab_size=vocab_size,
                         time_conditioned=False, tokenizer=tokenizer)
        self.network = network
        param = next(iter(network.parameters()), None)
        self.device = param.device if param is not None else torch.device("cpu")

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        with torch.no_grad():
            return super().__call__(x, t)

    def _full(self, x: Tensor, t: Tensor) -> Any:
        """The whole canvas, uncached (no ``t``: a second positional argument of a transformers
        model would be its attention mask)."""
        return self.network(x.to(self.device))

    @property
    def has_cache_path(self) -> bool:
        return hasattr(self.network, "forward_cached") and hasattr(self.network, "new_cache")


class ExactPrefixCache:
    """Stands in for the model inside :func:`reverie.discrete.generate` (``cache="prefix"``
    on a :class:`BlockCausalLM`): each row's current block is the fixed tile holding its first
    masked position; the clean tokens between the cached length and the block start are
    encoded once, in the forward of the block's first step (a fused commit), and otherwise
    only the block is run against the cache. ``nfe`` counts model calls, ``row_evals`` rows."""

    exact = True

    def __init__(self, model: BlockCausalLM, n: int, length: int, block_length: int,
                 pad: Tensor | None = None, origin: Tensor | None = None):
        if not model.has_cache_path:
            raise ValueError(
                f"cache='prefix' needs a network with a KV-cache path (forward_cached, "
                f"new_cache), but {type(model.network).__name__} has none; use cache=None"
            )
        self.model = model
        self.block_length = block_length
        self.cache = model.network.new_cache(n, length)
        # left padding per row (a row runs in its own coordinates: column - pad, as the
        # uncached reference calls it on its unpadded part) and where its blocks tile from
        self.pad = torch.zeros(n, dtype=torch.long) if pad is None else pad.long().cpu()
        self.origin = self.pad.clone() if origin is None else origin.long().cpu()
        self.logp: Tensor | None = None
        self.last_x: Tensor | None = None
        self.nfe = 0
        self.row_evals = 0
        self.peak_bytes = self.cache.nbytes

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """Uncached full-canvas call (for multi-stage samplers' intermediate states)."""
        self.nfe += 1
        self.row_evals += x.shape[0]
        return self.model(x, t)

    def __call__(self, x: Tensor, t: Tensor, need: Tensor) -> Tensor:
        n, length = x.shape
        mask_id, bl, bs = self.model.mask_id, self.block_length, self.model.block_size
        if self.logp is None:  # uniform over the vocabulary until a position is evaluated
            v = self.model.vocab_size
            self.logp = subs(torch.zeros(n, length, v, device=x.device), x, mask_id)
            self.last_x = torch.full_like(x, -1)
        pos = torch.arange(length, device=x.device)
        first = torch.where(x == mask_id, pos, length).min(-1).values.cpu()
        # the generation block holding the first masked position (generate tiles blocks of
        # ``bl`` from each row's origin) and the attention blocks covering it, in row
        # coordinates: everything before them is final and committed to the cache
        lo = self.origin + ((first - self.origin) // bl) * bl
        hi = torch.minimum(lo + bl, torch.full_like(lo, length))
        start = ((lo - self.pad) // bs) * bs
        end = torch.minimum(-((self.pad - hi) // bs) * bs, length - self.pad)
        # rows whose input changed (a model without time conditioning repeats itself otherwise)
        rows = (need & (x != self.last_x).any(-1)).cpu()
        filled = self.cache.length.cpu()
        keys = torch.stack([start, end, filled], -1)
        with torch.no_grad():
            # one forward per (window, cached length): the finished tokens between the cache
            # and the window are committed in the same forward that denoises the block
            for a, b, f in keys[rows].unique(dim=0).tolist():
                group = (rows & (keys == torch.tensor([a, b, f])).all(-1)).nonzero().squeeze(-1)
                cols = self.pad[group, None] + torch.arange(f, b)  # [rows, b - f] columns
                tokens = x[group[:, None], cols.to(x.device)]
                logits = self.model.network.forward_cached(
                    self.cache, group.to(x.device), tokens, f, commit=a - f
                )
                self.logp[group[:, None], cols.to(x.device)] = subs(logits, tokens, mask_id)
                self.nfe += 1
                self.row_evals += len(group)
        self.last_x[rows] = x[rows]
        return self.logp

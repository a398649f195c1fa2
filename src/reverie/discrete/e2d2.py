"""E2D2: encoder-decoder masked diffusion LMs (Arriola et al. 2025, "Encoder-Decoder Diffusion
Language Models for Efficient Training and Inference", arXiv 2510.22852).

A (larger) *encoder* reads the clean tokens -- the prompt and the decided blocks -- once per
block; a small *decoder* denoises the current block at every step, attending to its own block
and to the encoder's outputs of the earlier blocks. The encoder is block-causal, so the
outputs of a finished block never change and are cached exactly; a step costs only the
decoder's layers on one block (:func:`step_flops` measures the ratio).

* :class:`TinyE2D2` -- a small reference network with the
  :class:`~reverie.discrete.block.BlockCausalLM` interface (``forward(x)`` the uncached
  reference, ``forward_cached`` / ``new_cache`` the cached path), so
  :func:`reverie.discrete.generate` and every fixed-block sampler run it
  (``BlockCausalLM(TinyE2D2(...), vocab_size=V)``, ``cache="prefix"``);
* :func:`e2d2_nelbo` -- the training loss: the block NELBO with the encoder on the clean
  sequence and the decoder on the noisy blocks (every block in one forward).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from reverie._checks import integer
from reverie.discrete.block import KVCache, block_causal_mask, run_layers
from reverie.discrete.nets import _Block

__all__ = ["E2D2Cache", "TinyE2D2", "e2d2_nelbo", "step_flops"]


class E2D2Cache:
    """The encoder's keys/values (for later encoder calls) and, per decoder layer, the keys and
    values of the encoder's outputs (the decoder's context), both for positions ``[0,
    length)``; allocated once."""

    def __init__(self, enc: KVCache, ctx: KVCache):
        self.enc, self.ctx = enc, ctx

    @property
    def length(self) -> Tensor:
        return self.enc.length

    @property
    def nbytes(self) -> int:
        return self.enc.nbytes + self.ctx.nbytes


class TinyE2D2(nn.Module):
    """Encoder (``enc_depth`` block-causal layers on the clean tokens) + decoder (``dec_depth``
    layers on the noisy tokens; a token of block ``b`` attends to the tokens of block ``b``
    and to the encoder outputs of blocks ``< b``), sharing the token / position embeddings.
    The mask is the extra input id ``vocab_size``. ``encoder_calls`` / ``decoder_calls``
    count the forwards of each part."""

    def __init__(self, vocab_size: int, length: int, block_size: int, dim: int = 32,
                 enc_depth: int = 3, dec_depth: int = 1, heads: int = 2, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.block_size = integer("block_size", block_size, 1)
        self.config = dict(vocab_size=vocab_size, length=length, block_size=block_size, dim=dim,
                           enc_depth=enc_depth, dec_depth=dec_depth, heads=heads,
                           mlp_ratio=mlp_ratio)
        self.tok = nn.Embedding(vocab_size + 1, dim)  # + the mask's input id
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        def stack(depth):
            return nn.ModuleList(_Block(dim, heads, mlp_ratio, 0.0) for _ in range(depth))
        self.enc_blocks, self.enc_norm = stack(enc_depth), nn.LayerNorm(dim)
        self.dec_blocks = stack(dec_depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.encoder_calls = 0
        self.decoder_calls = 0

    # the two stacks as run_layers networks: the encoder's "logits" are its normalised outputs
    def _encoder(self) -> SimpleNamespace:
        return SimpleNamespace(tok=self.tok, pos=self.pos, blocks=self.enc_blocks,
                               norm=self.enc_norm, head=nn.Identity())

    def _decoder(self) -> SimpleNamespace:
        return SimpleNamespace(tok=self.tok, pos=self.pos, blocks=self.dec_blocks,
                               norm=self.norm, head=self.head)

    def _context(self, out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per decoder layer, the keys and values of encoder outputs ``out`` ``[b, m, d]``."""
        kv = []
        for blk in self.dec_blocks:
            b, m, d = out.shape
            _, k, v = blk.qkv(blk.norm1(out)).reshape(b, m, 3, blk.heads, d // blk.heads).unbind(2)
            kv.append((k.transpose(1, 2), v.transpose(1, 2)))
        return kv

    def _decode(self, tokens: Tensor, pos: Tensor, ctx: list, ctx_pos: Tensor) -> Tensor:
        """Decoder logits of ``tokens`` at ``pos``: own block + encoder context of earlier ones."""
        bs = self.block_size
        qb, kb = pos // bs, ctx_pos // bs
        mask = torch.cat([kb[None, :] < qb[:, None], (pos // bs)[None, :] == qb[:, None]], 1)
        self.decoder_calls += 1
        return run_layers(self._decoder(), tokens, pos, ctx, mask=mask)[0]

    def forward(self, x: Tensor, t: Tensor | None = None, clean: Tensor | None = None) -> Tensor:
        """Logits ``[B, L, V]`` of every block of ``x`` given the encoder outputs of the blocks
        before it, the encoder reading ``clean`` (default ``x``: in generation the blocks
        before the current one are clean). The uncached reference."""
        n = x.shape[1]
        if n > self.pos.shape[0]:
            raise ValueError(f"sequence length {n} exceeds this model's length {self.pos.shape[0]}")
        clean = x if clean is None else clean
        pos = torch.arange(n, device=x.device)
        out, _ = run_layers(self._encoder(), clean, pos,
                            mask=block_causal_mask(pos, pos, self.block_size))
        self.encoder_calls += 1
        return self._decode(x, pos, self._context(out), pos)

    def forward_cached(self, cache: E2D2Cache, rows: Tensor, tokens: Tensor, start: int,
                       commit: int = 0) -> Tensor:
        """Logits of ``tokens`` ``[r, n]`` at positions ``start..start+n`` given the cache of
        ``[0, start)``: the first ``commit`` (finished) tokens go through the encoder once and
        into the cache, the rest (the window) through the decoder. A window of several
        attention blocks also encodes all but its last block (not cached: still noisy).
        Finished positions get zero logits (the SUBS carry-over replaces them)."""
        n, bs = tokens.shape[1], self.block_size
        a = start + commit  # the window's first position
        enc_end = a + max(0, (n - commit - 1) // bs) * bs  # encoder reads [start, enc_end)
        ctx = cache.ctx.read(rows, 0, start)
        if enc_end > start:
            pos = torch.arange(start, enc_end, device=tokens.device)
            out, fresh = run_layers(
                self._encoder(), tokens[:, : enc_end - start], pos, cache.enc.read(rows, 0, start),
                mask=block_causal_mask(pos, torch.arange(enc_end, device=tokens.device), bs))
            self.encoder_calls += 1
            new = self._context(out)
            if commit:  # the finished blocks' encoder keys/values and decoder context
                for store, kv in ((cache.enc, fresh), (cache.ctx, new)):
                    store.write(rows, start, [(k[:, :, :commit], v[:, :, :commit]) for k, v in kv])
            ctx = new if ctx is None else [(torch.cat([k0, k], 2), torch.cat([v0, v], 2))
                                           for (k0, v0), (k, v) in zip(ctx, new)]
        ctx_pos = torch.arange(enc_end, device=tokens.device)
        if ctx is None:  # nothing before the window: an empty context
            r, h = tokens.shape[0], self.config["heads"]
            empty = self.pos.new_zeros(r, h, 0, self.config["dim"] // h)
            ctx = [(empty, empty)] * len(self.dec_blocks)
        pos = torch.arange(a, start + n, device=tokens.device)
        logits = self._decode(tokens[:, commit:], pos, ctx, ctx_pos)
        return torch.cat([logits.new_zeros(logits.shape[0], commit, logits.shape[2]), logits], 1)

    def new_cache(self, n: int, capacity: int) -> E2D2Cache:
        p, heads, dim = self.tok.weight, self.config["heads"], self.config["dim"]
        def kv(layers):
            return KVCache(layers, n, heads, capacity, dim // heads, p.dtype, p.device)
        return E2D2Cache(kv(len(self.enc_blocks)), kv(len(self.dec_blocks)))


def e2d2_nelbo(net: TinyE2D2, x0: Tensor, t: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
    """E2D2's training loss, nats per row ``[B]``: block ``b`` of row ``i`` masked at its time
    ``t[i, b]`` in (0, 1] (linear schedule, weight ``1 / t``, as
    :func:`~reverie.discrete.block.block_nelbo`), the encoder on the clean ``x0``, the decoder
    predicting each noisy block from the encoder outputs of the clean blocks before it."""
    block = torch.arange(x0.shape[1], device=x0.device) // net.block_size
    tb = t.to(x0.device)[:, block]  # each position's time
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    masked = u < tb  # masked with probability t of its block
    xt = torch.where(masked, torch.full_like(x0, net.config["vocab_size"]), x0)
    logp = torch.log_softmax(net(xt, clean=x0).float(), -1)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(masked, nll / tb.float(), torch.zeros_like(nll)).sum(-1)


def step_flops(net: nn.Module, context: int, rows: int = 1) -> float:
    """FLOPs (torch's flop counter) of one denoising step of one block of ``net`` (a
    :class:`TinyE2D2` or a :class:`~reverie.discrete.block.TinyBlockTransformer`) after
    ``context`` cached positions (a multiple of the block size)."""
    from torch.utils.flop_counter import FlopCounterMode

    bs, v = net.block_size, net.config["vocab_size"]
    cache = net.new_cache(rows, context + bs)
    r = torch.arange(rows)
    x = torch.randint(0, v, (rows, context + bs))
    with torch.no_grad():
        net.forward_cached(cache, r, x[:, :context + bs], 0, commit=context)  # fill the cache
        with FlopCounterMode(display=False) as counter:
            net.forward_cached(cache, r, x[:, context:], context)
    return float(counter.get_total_flops())

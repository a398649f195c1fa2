"""E2D2 (encoder-decoder masked diffusion): the encoder runs once per block, the decoder per
step; the cached path equals the uncached reference; the loss equals its per-block reference;
a decoder step costs a fraction of a block-causal step of the same total depth."""

import pytest
import torch

from reverie.discrete import BlockCausalLM, TinyBlockTransformer, generate
from reverie.discrete.e2d2 import TinyE2D2, e2d2_nelbo, step_flops


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyE2D2(16, 64, 8, dim=32, enc_depth=3, dec_depth=1, heads=2).double().eval()


def _cached_logits(net, x, block, corrupt=None):
    """Each block's logits from the cache path (the commit fused with the next block);
    ``corrupt(tokens)`` alters the finished tokens before they are encoded (a stale cache)."""
    cache, rows, out = net.new_cache(x.shape[0], x.shape[1]), torch.arange(x.shape[0]), []
    for b in range(0, x.shape[1], block):
        f = int(cache.length[0])
        tokens = x[:, f: b + block].clone()
        if corrupt is not None and b - f:
            corrupt(tokens[:, : b - f])
        out.append(net.forward_cached(cache, rows, tokens, f, commit=b - f)[:, b - f:])
    return torch.cat(out, 1)


@pytest.mark.parametrize("block", [8, 16])
def test_cached_logits_equal_a_fresh_encoder_at_every_step(net, block):
    x = torch.randint(0, 17, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
        assert (_cached_logits(net, x, block) - ref).abs().max() < 1e-12
        # sibling: a stale encoder cache (finished tokens not what was encoded) is rejected
        def stale(t):
            t[:, -1] = (t[:, -1] + 1) % 16
        assert (_cached_logits(net, x, block, stale) - ref).abs().max() > 1e-4


def test_generate_calls_the_encoder_once_per_block_and_the_decoder_per_step(net):
    lm = BlockCausalLM(net, vocab_size=16)
    kw = dict(prompt=[1, 2, 3, 4, 5, 6, 7, 8], length=64, steps=56, sampler="low_confidence",
              n=2, return_stats=True, block_length=8)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    ref = generate(lm, generator=gens, **kw)
    net.encoder_calls = net.decoder_calls = 0
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = generate(lm, generator=gens, cache="prefix", **kw)
    assert torch.equal(out.tokens, ref.tokens)  # the cache is exact
    assert net.decoder_calls == out.nfe == 56  # one decoder call per step
    assert net.encoder_calls == 7  # the prompt block + 6 decided blocks (the last never needed)
    gens = [torch.Generator().manual_seed(i + 9) for i in range(2)]
    assert not torch.equal(generate(lm, generator=gens, **kw).tokens, ref.tokens)  # sibling


def test_loss_equals_the_per_block_reference(net):
    x0 = torch.randint(0, 16, (3, 32), generator=torch.Generator().manual_seed(1))
    t = torch.rand(3, 4, generator=torch.Generator().manual_seed(2)).clamp_min(0.05)
    loss = e2d2_nelbo(net, x0, t, torch.Generator().manual_seed(3))
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tb = t[:, torch.arange(32) // 8]
    masked = u < tb
    xt = torch.where(masked, torch.full_like(x0, 16), x0)

    def per_block(clean_context):
        total = torch.zeros(3, dtype=torch.float64)
        for b in range(0, 32, 8):
            ctx = x0[:, :b] if clean_context else xt[:, :b]
            logp = torch.log_softmax(net(torch.cat([ctx, xt[:, b: b + 8]], 1))[:, b:], -1)
            nll = -logp.gather(-1, x0[:, b: b + 8, None])[..., 0]
            total += (masked[:, b: b + 8] * nll / tb[:, b: b + 8]).sum(-1)
        return total

    with torch.no_grad():
        assert (loss - per_block(True)).abs().max() < 1e-5
        assert (loss - per_block(False)).abs().max() > 1e-3  # sibling: a noisy context


def test_decoder_step_is_cheap():
    """FLOPs of one step on one block after 56 cached positions: a 1-layer decoder against a
    4-layer block-causal model of the same width and total depth."""
    torch.manual_seed(0)
    e2d2 = TinyE2D2(16, 64, 8, dim=32, enc_depth=3, dec_depth=1, heads=2)
    bd3 = TinyBlockTransformer(16, 64, 8, dim=32, depth=4, heads=2)
    ratio = step_flops(e2d2, 56) / step_flops(bd3, 56)
    assert 0.2 < ratio < 0.3  # ~ dec_depth / total depth
    e2d2_deep = TinyE2D2(16, 64, 8, dim=32, enc_depth=1, dec_depth=3, heads=2)
    assert step_flops(e2d2_deep, 56) / step_flops(bd3, 56) > 0.7  # sibling: a deep decoder

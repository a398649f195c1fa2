"""SDAR's AR-to-block-diffusion conversion (reverie.discrete.sdar) against exact references:
the exact Markov chain's block conditionals give the exact NELBO, and the converted model
starts from the AR model's loss."""

import pytest
import torch

from reverie.discrete.block import TinyBlockTransformer, block_nelbo, clean_context_logits
from reverie.discrete.sdar import ar_nll, block_logp, convert, exact_block_nelbo
from reverie.reference import MarkovChain


@pytest.fixture(scope="module")
def chain():
    return MarkovChain.random(3, torch.Generator().manual_seed(0), sharpness=2.0)


def _leaky(chain, block_size):
    """The chain's conditionals given the *later* clean blocks too (not block-causal)."""
    def logp(xt, x0):
        out = []
        for lo in range(0, x0.shape[1], block_size):
            hi = lo + block_size
            canvas = torch.cat([x0[:, :lo], xt[:, lo:hi], x0[:, hi:]], 1)
            out.append(chain.conditionals(canvas, chain.mask_id)[:, lo:hi].log())
        return torch.cat(out, 1)
    return logp


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_exact_block_conditionals_give_the_exact_nelbo(chain, block_size):
    """Block NELBO averaged exactly over times and masks (2^B patterns, Beta weights) of the
    chain's block-causal conditionals == -log p(x0) for every sequence; for B = 1 it is the
    next-token NLL. Siblings: conditionals that see the later blocks, and a chain 15% off."""
    x = chain.sample(16, 8, torch.Generator().manual_seed(1))
    nelbo = exact_block_nelbo(chain, x, block_size)
    assert (nelbo + chain.log_prob(x)).abs().max() < 1e-10
    leaky = exact_block_nelbo(_leaky(chain, block_size), x, block_size, mask_id=chain.mask_id)
    assert (leaky + chain.log_prob(x)).abs().max() > 0.1  # not the law's likelihood
    # a wrong model: its NELBO averaged over the exact law exceeds the entropy (by the KL)
    seqs, p = chain.joint(4)
    off = MarkovChain(chain.initial, chain.transition * torch.tensor([1.15, 1.0, 1.0]))
    entropy = float(-(p * chain.log_prob(seqs)).sum())
    assert abs(float((p * exact_block_nelbo(chain, seqs, 2)).sum()) - entropy) < 1e-10
    assert float((p * exact_block_nelbo(off, seqs, 2)).sum()) > entropy + 1e-3


def test_block_logp_of_the_chain_ignores_later_blocks(chain):
    x = chain.sample(4, 8, torch.Generator().manual_seed(2))
    xt = x.clone()
    xt[:, 3] = chain.mask_id  # next to the later block: the leaky conditionals see it
    y = x.clone()
    y[:, 4:] = (x[:, 4:] + 1) % 3  # other later blocks
    a, b = block_logp(chain, xt, x, 4), block_logp(chain, torch.where(xt == 3, xt, y), y, 4)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-12)
    assert not torch.allclose(_leaky(chain, 4)(xt, x)[:, :4], _leaky(chain, 4)(xt, y)[:, :4])


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return TinyBlockTransformer(3, 8, 1, dim=16, depth=2, heads=2).double().eval()


def test_conversion_starts_at_the_ar_loss(ar, chain):
    """Converted with blocks of one token, the block-diffusion loss at step 0 is the AR
    model's next-token NLL: exactly in expectation, and the training loss with every block
    masked (t = 1). With blocks of 4 the weights are the AR's, only the mask changes.
    Siblings: a freshly initialised network, and the AR logits read with a shift."""
    x = chain.sample(32, 8, torch.Generator().manual_seed(3))
    with torch.no_grad():
        nll = ar_nll(ar, x)
        one = convert(ar, 1)
        assert (exact_block_nelbo(one, x, 1) - nll).abs().max() < 1e-12
        t1 = torch.ones(32, 8, dtype=torch.float64)
        assert (block_nelbo(one, x, t1) - nll).abs().max() < 1e-5  # float32 log-softmax
        four = convert(ar, 4)
        assert four.block_size == 4 and all(
            torch.equal(a, b) for a, b in zip(four.state_dict().values(), ar.state_dict().values()))
        assert (exact_block_nelbo(four, x, 4) - nll).abs().max() > 1e-3  # the mask changed
        torch.manual_seed(1)
        fresh = TinyBlockTransformer(3, 8, 1, dim=16, depth=2, heads=2).double()
        assert (exact_block_nelbo(fresh, x, 1) - nll).abs().max() > 1e-2
        masks = torch.full_like(x, 3)
        lp = torch.log_softmax(clean_context_logits(one, masks, x, 1), -1)
        shifted = -lp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).sum(-1)  # x_i read at i-1
        own = -lp[:, 1:].gather(-1, x[:, 1:, None]).squeeze(-1).sum(-1)
        assert (shifted - own).abs().max() > 1e-2


def test_convert_refuses_non_autoregressive_networks(ar):
    with pytest.raises(ValueError, match="block_size 1"):
        convert(convert(ar, 4), 2)
    with pytest.raises(TypeError, match="TinyBlockTransformer"):
        convert(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match="multiple of block_size"):
        exact_block_nelbo(ar, torch.zeros(2, 6, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="needs mask_id"):
        exact_block_nelbo(lambda xt, x0: None, torch.zeros(2, 8, dtype=torch.long), 4)


def test_shifted_ar_nll_is_a_standard_causal_lm(ar, chain):
    """``shifted=True``: position i reads x_{i-1} (the mask id as BOS) and predicts x_i, as
    the network's own causal forward on the shifted canvas. Sibling: the same read-out with
    attention over the whole canvas (blocks of 8) is another number."""
    x = chain.sample(8, 8, torch.Generator().manual_seed(4))
    inp = torch.cat([torch.full_like(x[:, :1], 3), x[:, :-1]], 1)
    with torch.no_grad():
        def nll(net):
            return -torch.log_softmax(net(inp), -1).gather(-1, x[..., None]).squeeze(-1).sum(-1)
        assert (ar_nll(ar, x, shifted=True) - nll(ar)).abs().max() < 1e-12
        assert (ar_nll(ar, x, shifted=True) - nll(convert(ar, 8))).abs().max() > 1e-3


def test_bench_sdar_smoke():
    """``reverie bench sdar`` end to end on a 2-step budget: every model gets a finite NELBO,
    parse rates and calls per sample (64 for the AR models, at most 64 with blocks of 4)."""
    import argparse
    import math

    from reverie.bench import available
    from reverie.bench import sdar as bench

    assert available()["sdar"] is bench
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--ar-steps", "2", "--steps", "2", "--n", "1", "--heldout", "4",
                              "--dim", "16", "--depth", "1"])
    rows = {r["model"]: r for r in bench.run(args)["rows"]}
    assert set(rows) == {"ar", "sdar", "ar_shifted", "sdar_shifted", "scratch"}
    for name, r in rows.items():
        assert math.isfinite(r["nelbo_per_char"]) and r["nelbo_per_char"] > 0
        assert r["block"] == (1 if name.startswith("ar") else 4)
        for s in ("threshold", "low_confidence"):
            assert 0 <= r[f"{s}_parse_rate"] <= 1
            calls = r[f"{s}_calls_per_sample"]
            assert calls == 64 if r["block"] == 1 or s == "low_confidence" else 16 <= calls <= 64

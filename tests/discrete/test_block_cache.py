"""Block-causal models, the exact prefix KV cache, Fast-dLLM's approximate caches, and the
block-diffusion peers (transformers' DiffusionGemma generate, diffusers' LLaDA2Pipeline) on tiny
models built from configs."""

import pytest
import torch

import reverie
from reverie.discrete import SAMPLERS, TokenDenoiser, UniformProcess, generate, load_model
from reverie.discrete import cache as cache_mod
from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer, run_layers


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def block_lm():
    torch.manual_seed(0)
    net = TinyBlockTransformer(16, 64, 8, dim=32, depth=2, heads=2).double().eval()
    return BlockCausalLM(net, vocab_size=16)


class _Bidirectional(TinyBlockTransformer):
    """A *bidirectional* network behind the block-causal interface (the wrong claim)."""

    def forward(self, x=None, t=None, **kw):
        return run_layers(self, x, torch.arange(x.shape[1]))[0]


def _cached_logits(net, x, block):
    """Each block's logits from the cache path (commit fused with the next block)."""
    cache, rows, out = net.new_cache(x.shape[0], x.shape[1]), torch.arange(x.shape[0]), []
    for b in range(0, x.shape[1], block):
        f = int(cache.length[0])
        out.append(net.forward_cached(cache, rows, x[:, f : b + block], f, commit=b - f)[:, b - f:])
    return torch.cat(out, 1)


def test_cached_logits_equal_the_full_canvas_logits(block_lm):
    x = torch.randint(0, 17, (2, 64), generator=torch.Generator().manual_seed(0))
    net = block_lm.network
    with torch.no_grad():
        assert (_cached_logits(net, x, 8) - net(x)).abs().max() < 1e-12
        bidir = _Bidirectional(16, 64, 8, dim=32, depth=2, heads=2).double().eval()
        bidir.load_state_dict(net.state_dict())
        assert (_cached_logits(bidir, x, 8) - bidir(x)).abs().max() > 1e-3  # stale prefix


FIXED_BLOCKS = [s for s in SAMPLERS if SAMPLERS[s].blocks.name == "fixed"]


@pytest.mark.parametrize("sampler", FIXED_BLOCKS)
def test_exact_prefix_cache_gives_the_uncached_tokens(block_lm, sampler):
    """Every sampler with fixed blocks (multi-stage ones call the uncached model inside)."""
    steps = 59 if SAMPLERS[sampler].steps_rule == "tokens" else 32
    kw = dict(prompt=[1, 2, 3, 4, 5], length=64, steps=steps, sampler=sampler, n=3,
              return_stats=True)
    ref = generate(block_lm, generator=_gens(3), **kw)
    out = generate(block_lm, generator=_gens(3), cache="prefix", **kw)
    assert torch.equal(out.tokens, ref.tokens)
    # the sibling: another seed gives other tokens, so the equality can fail
    assert not torch.equal(generate(block_lm, generator=_gens(3, 9), **kw).tokens, ref.tokens)


@pytest.mark.parametrize("sampler", ["low_confidence", "ancestral"])
def test_exact_prefix_cache_with_ragged_prompts_and_unaligned_blocks(block_lm, sampler):
    """Left-padded rows run in their own coordinates, and generation blocks that start
    mid attention block (prompt lengths not a multiple of the block size, max_new_tokens):
    the cache gives the uncached tokens, and each row equals itself generated alone."""
    prompts = [[1, 2, 3, 4, 5], [1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
    kw = dict(max_new_tokens=48, steps=48, sampler=sampler, block_length=16)
    ref = generate(block_lm, prompt=prompts, generator=_gens(3), **kw)
    out = generate(block_lm, prompt=prompts, generator=_gens(3), cache="prefix", **kw)
    assert torch.equal(out, ref)
    for r, p in enumerate(prompts):
        alone = generate(block_lm, prompt=p, generator=_gens(1, r), cache="prefix", **kw)
        assert torch.equal(alone[0], out[r, out.shape[1] - alone.shape[1]:])
    assert not torch.equal(generate(block_lm, prompt=prompts, generator=_gens(3, 9),
                                    cache="prefix", **kw), out)


def test_prefix_cache_on_a_bidirectional_model_is_not_exact(block_lm):
    """Same weights, but attention that sees later blocks: the cached keys and values of
    finished blocks go stale, and the check above rejects the cache."""
    net = _Bidirectional(16, 64, 8, dim=32, depth=2, heads=2).double().eval()
    net.load_state_dict(block_lm.network.state_dict())
    lm = BlockCausalLM(net, vocab_size=16)
    kw = dict(prompt=[1, 2, 3, 4, 5], length=64, steps=32, sampler="low_confidence",
              temperature=0)
    assert not torch.equal(generate(lm, **kw), generate(lm, cache="prefix", **kw))


def test_cache_memory_is_fixed_and_does_not_grow_with_steps(block_lm, monkeypatch):
    made = []
    real = cache_mod.make_cache
    monkeypatch.setattr(cache_mod, "make_cache", lambda *a: made.append(real(*a)) or made[-1])
    kw = dict(length=64, sampler="low_confidence", n=2, return_stats=True)
    for steps in (8, 59):
        generate(block_lm, [1, 2, 3, 4, 5], steps=steps, generator=_gens(2), cache="prefix", **kw)
    ref = generate(block_lm, [1, 2, 3, 4, 5], steps=59, generator=_gens(2), **kw)
    small, large = made
    assert small.peak_bytes == large.peak_bytes == small.cache.k.numel() * 8 * 2
    assert large.cache.k.shape == (2, 2, 2, 64, 16)  # [layers, rows, heads, length, head_dim]
    assert large.nfe == ref.nfe  # one forward per step: commits are fused into the next block


def test_llada2_pipeline_gives_reverie_tokens():
    """diffusers' LLaDA2Pipeline (no cache, BlockRefinementScheduler) greedy with pure top-k
    commits (threshold > 1), no editing == reverie low_confidence at temperature 0 with 2 tokens
    per step; cached and uncached. Sibling: Dream's top-k margin is another algorithm."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    net = TinyBlockTransformer(32, 64, 8, dim=32, depth=2, heads=2).eval()
    lm = BlockCausalLM(net, vocab_size=32)
    pipe = diffusers.LLaDA2Pipeline(model=net, tokenizer=None,
                                    scheduler=diffusers.BlockRefinementScheduler(block_length=8))
    pipe.set_progress_bar_config(disable=True)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]] * 2)
    with torch.no_grad():
        ref = pipe(input_ids=prompt, gen_length=56, block_length=8, num_inference_steps=4,
                   temperature=0.0, threshold=2.0, editing_threshold=0.0, eos_early_stop=False,
                   mask_token_id=32, eos_token_id=None, output_type="seq").sequences
    kw = dict(length=64, steps=28, temperature=0, n=2)
    for cache in (None, "prefix"):
        out = generate(lm, prompt, sampler="low_confidence", cache=cache, **kw)
        assert torch.equal(out[:, 8:], ref)
    assert not torch.equal(generate(lm, prompt, sampler="topk_margin", **kw)[:, 8:], ref)


# ---------------------------------------------------------------------------------------------
# DiffusionGemma
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    from transformers.models.diffusion_gemma.configuration_diffusion_gemma import (
        DiffusionGemmaTextConfig,
    )

    text = DiffusionGemmaTextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"], num_experts=4,
        top_k_experts=2, moe_intermediate_size=32, max_position_embeddings=1024,
    )
    vision = tf.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                   position_embedding_size=64)
    torch.manual_seed(0)
    config = tf.DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=8)
    model = tf.DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():  # sharper logits than the random init, so the sampler's knobs matter
        for p in model.parameters():
            p.mul_(3.0)
    folder = tmp_path_factory.mktemp("dgemma")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_diffusion_gemma_matches_transformers_generate(gemma_folder):
    lm = reverie.load(gemma_folder)  # a saved block-diffusion transformers folder
    ids = torch.tensor([[2, 10, 11, 12, 13]] * 2)
    torch.manual_seed(1)  # transformers draws from the global generator
    with torch.no_grad():
        ref = lm.model.generate(ids, max_new_tokens=24, max_denoising_steps=6).sequences
    out = generate(lm, ids, length=29, steps=6, n=2, cache="prefix",
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, ref)
    # sibling: a temperature schedule 15% off is another algorithm
    off = generate(lm, ids, length=29, steps=6, n=2, cache="prefix", t_min=0.46,
                   generator=torch.Generator().manual_seed(1))
    assert not torch.equal(off, ref)


@pytest.mark.parametrize("rows", [4, 1])
def test_diffusion_gemma_eos_matches_transformers_generate(gemma_folder, rows):
    """EOS stops rows (pad after it) and, once all are done, the batch: as transformers."""
    lm = reverie.load(gemma_folder)
    ids = torch.tensor([[2, 10, 11, 12, 13]] * rows)
    torch.manual_seed(1)
    with torch.no_grad():
        plain = lm.model.generate(ids, max_new_tokens=32, max_denoising_steps=6).sequences
    eos = int(plain[0, 6])  # ends row 0 in its first canvas
    torch.manual_seed(1)
    with torch.no_grad():
        ref = lm.model.generate(ids, max_new_tokens=32, max_denoising_steps=6, eos_token_id=eos,
                                pad_token_id=0).sequences
    out = generate(lm, ids, max_new_tokens=32, steps=6, n=rows, cache="prefix", eos_id=eos,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, ref)
    assert (out.shape[1] < plain.shape[1]) == (rows == 1)  # one row: the batch stops early
    for row, full in zip(out[:, 5:], plain[:, 5:]):  # nothing cut before a row's first EOS
        hit = (full == eos).nonzero()
        end = int(hit[0]) + 1 if len(hit) else len(full)
        assert torch.equal(row[:end], full[:end]) and (row[end:] == 0).all()
    # sibling: without eos_id the rows run on, which the reference rejects
    assert not torch.equal(generate(lm, ids, max_new_tokens=32, steps=6, n=rows, cache="prefix",
                                    generator=torch.Generator().manual_seed(1))[:, :out.shape[1]],
                           ref)


def test_diffusion_gemma_encoder_cache_is_exact_in_float64(gemma_folder):
    """Cached (incremental encoder) vs uncached (the whole context re-encoded before every
    decoder call): identical tokens in float64 (in float32 one-shot and incremental encoding
    differ by rounding, which can flip a multinomial draw)."""
    lm = load_model(gemma_folder)
    lm.model.config.get_text_config()._experts_implementation = "eager"  # grouped-mm: no fp64
    lm.model.double()
    ids = torch.tensor([[2, 10, 11, 12, 13]] * 2)
    kw = dict(length=29, steps=6, n=2)
    ref = generate(lm, ids, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(generate(lm, ids, generator=torch.Generator().manual_seed(1),
                                cache="prefix", **kw), ref)
    assert not torch.equal(generate(lm, ids, generator=torch.Generator().manual_seed(2),
                                    cache="prefix", **kw), ref)


def test_diffusion_gemma_bad_input(gemma_folder):
    lm = load_model(gemma_folder)
    with pytest.raises(ValueError, match="canvas_length"):
        generate(lm, [2, 3], length=10, steps=2, block_length=5)
    with pytest.raises(ValueError, match="multiple of canvas_length"):
        generate(lm, [2, 3], length=13, steps=2)
    with pytest.raises(ValueError, match="entropy_bound"):
        generate(lm, [2, 3], length=10, steps=2, sampler="low_confidence")
    with pytest.raises(ValueError, match="dual"):
        generate(lm, [2, 3], length=10, steps=2, cache="dual")
    with pytest.raises(ValueError, match="temperature schedule"):
        generate(lm, [2, 3], length=10, steps=2, temperature=0.5)


# ---------------------------------------------------------------------------------------------
# Fast-dLLM's approximate caches on a bidirectional model; bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_json():
    return load_model("tiny-json")


@pytest.mark.parametrize("kind", ["prefix", "dual"])
def test_fast_dllm_cache_refreshed_every_step_is_the_uncached_run(tiny_json, kind):
    """Blocks of one token refresh the cache at every step: the uncached tokens. With blocks
    of 8 the stale keys and values change the tokens (the approximation is visible)."""
    kw = dict(prompt='{"name":', length=32, steps=24, sampler="ancestral", n=8)
    ref = generate(tiny_json, block_length=1, generator=_gens(8), **kw)
    assert torch.equal(generate(tiny_json, block_length=1, cache=kind, generator=_gens(8), **kw),
                       ref)
    ref8 = generate(tiny_json, block_length=8, generator=_gens(8), **kw)
    out8 = generate(tiny_json, block_length=8, cache=kind, generator=_gens(8), **kw)
    assert not torch.equal(out8, ref8)
    assert out8.shape == ref8.shape and not bool((out8 == tiny_json.mask_id).any())


def test_bad_cache_input(block_lm, tiny_json):
    with pytest.raises(ValueError, match="multiple of the model's block size"):
        generate(block_lm, [1], length=64, steps=8, block_length=12)
    with pytest.raises(ValueError, match="cache must be None"):
        generate(block_lm, [1], length=64, steps=8, cache="full")
    with pytest.raises(ValueError, match="bidirectional"):
        generate(block_lm, [1], length=64, steps=8, cache="dual")
    with pytest.raises(ValueError, match="fixed blocks"):
        generate(tiny_json, length=64, steps=16, sampler="adablock", cache="dual")
    uniform = TokenDenoiser(lambda x, t: torch.zeros(*x.shape, 16), mask_id=None,
                            vocab_size=16, process=UniformProcess(), time_conditioned=False)
    with pytest.raises(ValueError, match="masked-diffusion"):  # a model without a mask token
        generate(uniform, length=8, steps=4, cache="prefix")
    plain = TokenDenoiser(lambda x, t: torch.zeros(*x.shape, 16), mask_id=15, vocab_size=16,
                          time_conditioned=False)
    with pytest.raises(ValueError, match="TinyTransformer"):
        generate(plain, length=8, steps=4, cache="dual")


def test_bench_discrete_cache_runs(tmp_path, capsys):
    import json

    from reverie import cli

    out = tmp_path / "cache.json"
    rc = cli.main(["bench", "discrete-cache", "--lengths", "64", "--batches", "1", "--rounds",
                   "1", "--skip-json", "--out", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["block_causal"]
    assert row["identical"] and row["cache_mib"] > 0
    assert "prefix tok/s" in capsys.readouterr().out


def test_llada2_style_module_runs_uncached_and_refuses_a_cache_it_lacks(block_lm):
    """A module with the LLaDA2 contract (``model(input_ids).logits``) and no KV-cache path."""

    class HFStyle(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.net(input_ids=input_ids, attention_mask=attention_mask)

    lm = BlockCausalLM(HFStyle(block_lm.network), vocab_size=16, block_size=8)
    kw = dict(prompt=[1, 2, 3], length=32, steps=8, sampler="low_confidence", temperature=0)
    assert torch.equal(generate(lm, **kw), generate(block_lm, **kw))
    with pytest.raises(ValueError, match="no KV-cache path|has none"):
        generate(lm, cache="prefix", **kw)


def test_cli_cache_flag(capsys):
    """``reverie generate --cache prefix`` runs Fast-dLLM's prefix cache: with one-token blocks
    (refreshed every step) it prints the uncached samples, with blocks of 8 it may not."""
    from reverie.cli import main

    base = ["generate", "--model", "tiny-json", "--prompt", '{"name":', "--length", "24",
            "--n", "3", "--no-progress", "--seed", "4"]
    assert main([*base, "--block-length", "1"]) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--block-length", "1", "--cache", "prefix"]) == 0
    assert capsys.readouterr().out == plain
    assert main([*base, "--block-length", "8", "--cache", "dual"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_bd3_training_logits_are_each_block_given_its_clean_prefix(block_lm):
    """``clean_context_logits`` (the ``[x_t ; x_0]`` trick of BD3-LM's loss) gives block ``b``
    the logits the network gives ``x_0[:b] + x_t[b]`` alone -- what generation sees."""
    from reverie.discrete.block import block_nelbo, clean_context_logits

    net, k = block_lm.network, 8
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 16, (2, 64), generator=g)
    xt = torch.where(torch.rand(2, 64, generator=g) < 0.5, torch.full_like(x0, 16), x0)
    with torch.no_grad():
        got = clean_context_logits(net, xt, x0, k)
        for b in range(0, 64, k):
            alone = net(torch.cat([x0[:, :b], xt[:, b : b + k]], 1))[:, b:]
            assert (got[:, b : b + k] - alone).abs().max() < 1e-12
        # the sibling: noisy earlier blocks as context (the plain forward on x_t) differ
        assert (got[:, k:] - net(xt)[:, k:]).abs().max() > 1e-3
        # the loss: zero where nothing is masked, positive and finite otherwise
        t = torch.full((2, 8), 0.5, dtype=torch.float64)
        loss = block_nelbo(net, x0, t, torch.Generator().manual_seed(0))
        assert loss.shape == (2,) and torch.isfinite(loss).all() and (loss > 0).all()
        assert (block_nelbo(net, x0, t * 1e-9, torch.Generator().manual_seed(0)) == 0).all()

"""Tokens/s of block generation with and without KV caches (report numbers; not a test).

1. block-causal reference model (TinyBlockTransformer, untrained, dim 128, depth 4, block 32):
   uncached vs exact prefix cache at length 64/256/1024, identical tokens checked;
2. tiny-json (bidirectional): Fast-dLLM prefix / dual vs uncached: JSON parse rate and tokens/s;
3. peers on tiny models: diffusers LLaDA2Pipeline vs reverie (same tokens), transformers
   DiffusionGemma generate vs reverie (same tokens).
Warm (one untimed run first), interleaved repeats, 1 thread.
"""

import json
import sys
import time

import torch

from reverie.discrete import generate, load_model
from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer

torch.set_num_threads(1)


def timed(fn, reps=2):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def block_causal(lengths=(64, 256, 1024)):
    torch.manual_seed(0)
    for length in lengths:
        net = TinyBlockTransformer(64, length, 32, dim=128, depth=4, heads=4).eval()
        lm = BlockCausalLM(net, vocab_size=64)
        kw = dict(prompt=[1, 2, 3, 4], length=length, steps=length // 4, sampler="low_confidence",
                  n=1, return_stats=True)
        res = {}
        for cache in (None, "prefix"):
            run = lambda lm=lm, cache=cache, kw=kw: generate(  # noqa: E731
                lm, generator=torch.Generator().manual_seed(0), cache=cache, **kw)
            res[cache] = timed(run, reps=1 if length > 256 else 2)
        same = torch.equal(res[None][1].tokens, res["prefix"][1].tokens)
        tps = {k: (length - 4) / v[0] for k, v in res.items()}
        print(f"block-causal L={length}: uncached {tps[None]:.0f} tok/s, prefix {tps['prefix']:.0f}"
              f" tok/s, speed-up {tps['prefix'] / tps[None]:.2f}x, identical={same}", flush=True)


def fast_dllm(n=128):
    m = load_model("tiny-json")
    for sampler, steps in (("low_confidence", 56), ("ancestral", 56)):
        for cache in (None, "prefix", "dual"):
            gens = [torch.Generator().manual_seed(i) for i in range(n)]
            t = time.perf_counter()
            x = generate(m, prompt='{"name":', length=64, steps=steps, sampler=sampler,
                         block_length=8, n=n, generator=gens, cache=cache)
            dt = time.perf_counter() - t
            ok = 0
            for r in x:
                try:
                    json.loads(m.decode(r))
                    ok += 1
                except ValueError:
                    pass
            print(f"tiny-json {sampler} cache={cache}: parse {ok}/{n} = {100 * ok / n:.1f}%, "
                  f"{n * 56 / dt:.0f} tok/s", flush=True)


def peers():
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    torch.manual_seed(0)
    net = TinyBlockTransformer(64, 256, 32, dim=128, depth=4, heads=4).eval()
    lm = BlockCausalLM(net, vocab_size=64)
    pipe = LLaDA2Pipeline(model=net, scheduler=BlockRefinementScheduler(block_length=32),
                          tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    prompt = torch.arange(1, 33)[None]
    def llada2():
        with torch.no_grad():
            return pipe(input_ids=prompt, gen_length=224, block_length=32, num_inference_steps=8,
                        temperature=0.0, threshold=2.0, editing_threshold=0.0,
                        eos_early_stop=False, mask_token_id=64, eos_token_id=None,
                        output_type="seq").sequences
    t_ref, ref = timed(llada2)
    print(f"LLaDA2Pipeline (no cache) L=256 block 32, 8 steps/block: {224 / t_ref:.0f} tok/s")
    for cache in (None, "prefix"):
        t, out = timed(lambda cache=cache: generate(lm, prompt, length=256, steps=56, temperature=0,
                                        sampler="low_confidence", cache=cache))
        print(f"reverie low_confidence T=0 cache={cache}: {224 / t:.0f} tok/s, "
              f"identical to LLaDA2Pipeline={torch.equal(out[:, 32:], ref)}")
    import tempfile

    import transformers as tf
    from transformers.models.diffusion_gemma.configuration_diffusion_gemma import (
        DiffusionGemmaTextConfig,
    )
    text = DiffusionGemmaTextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"], num_experts=4,
        top_k_experts=2, moe_intermediate_size=32, max_position_embeddings=1024)
    vision = tf.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                   position_embedding_size=64)
    torch.manual_seed(0)
    model = tf.DiffusionGemmaForBlockDiffusion(
        tf.DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=8)).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        dg = load_model(d)
    ids = torch.tensor([[2, 10, 11, 12, 13]] * 2)
    def hf():
        torch.manual_seed(1)
        with torch.no_grad():
            return dg.model.generate(ids, max_new_tokens=64, max_denoising_steps=12).sequences
    t_ref, ref = timed(hf)
    print(f"transformers DiffusionGemma generate, batch 2, 64 new, 12 steps/canvas: "
          f"{128 / t_ref:.0f} tok/s")
    for cache in ("prefix", None):
        t, out = timed(lambda cache=cache: generate(dg, ids, length=69, steps=12, n=2, cache=cache,
                                        generator=torch.Generator().manual_seed(1)))
        print(f"reverie DiffusionGemma cache={cache}: {128 / t:.0f} tok/s, identical to "
              f"transformers={torch.equal(out, ref)}", flush=True)


if __name__ == "__main__":
    parts = sys.argv[1:] or ["block", "fast", "peers"]
    if "block" in parts:
        block_causal()
    if "fast" in parts:
        fast_dllm()
    if "peers" in parts:
        peers()

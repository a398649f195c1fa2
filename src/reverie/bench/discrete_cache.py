"""KV caches for masked-diffusion LMs: tokens/s with and without them, and what they cost.

Part 1 -- block-causal model (an untrained :class:`~reverie.discrete.block.TinyBlockTransformer`,
width 128, depth 4, block 32; speed does not depend on the weights at a fixed number of steps):
``low_confidence`` with ``length / 4`` steps, uncached vs the exact prefix cache, for each
length and batch size; the tokens must be identical (checked), and the cache's memory is
reported. Warm (an untimed run first) and interleaved: each round runs every cell once,
alternating the order; the median round is reported.

Part 2 -- the bundled ``tiny-json`` (bidirectional): Fast-dLLM's approximate prefix and dual
caches vs uncached, blocks of 8, ``--n-json`` samples with a JSON prompt: parse rate and tokens/s;
and its block-causal sibling ``tiny-json-block``: the exact prefix cache vs uncached at steps = L
(identical tokens, checked), parse rate and tokens/s.

Part 3 (``--peers``) -- the same tiny models under diffusers' ``LLaDA2Pipeline`` and
transformers' DiffusionGemma ``generate``: tokens/s and whether reverie's tokens are identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from typing import Any

import torch

from reverie.bench.common import Timer, format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="64,256,1024", help="canvas lengths (part 1)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes (part 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--n-json", type=int, default=128, help="samples per tiny-json run")
    parser.add_argument("--skip-json", action="store_true", help="no tiny-json part")
    parser.add_argument("--peers", action="store_true", help="also LLaDA2Pipeline, DiffusionGemma")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _interleaved(runs: dict[Any, Any], rounds: int) -> dict[Any, float]:
    """Median seconds per cell over ``rounds`` interleaved rounds (after one warm-up each)."""
    for fn in runs.values():
        fn()
    seconds: dict[Any, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            with Timer() as tm:
                runs[k]()
            seconds[k].append(tm.seconds)
    return {k: statistics.median(v) for k, v in seconds.items()}


def _seeded(lm, cache, kw):
    """One generation from a fresh seed (every run draws the same numbers)."""
    from reverie.discrete import generate

    return generate(lm, generator=torch.Generator().manual_seed(0), cache=cache, **kw)


def _block_part(args) -> list[dict]:
    from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer

    rows = []
    for length in _ints(args.lengths):
        torch.manual_seed(0)
        net = TinyBlockTransformer(64, length, 32, dim=128, depth=4, heads=4).eval()
        lm = BlockCausalLM(net, vocab_size=64)
        for n in _ints(args.batches):
            kw = dict(prompt=[1, 2, 3, 4], length=length, steps=length // 4, n=n,
                      sampler="low_confidence", return_stats=True)
            runs = {c: partial(_seeded, lm, c, kw) for c in (None, "prefix")}
            outs = {c: fn() for c, fn in runs.items()}
            secs = _interleaved(runs, args.rounds)
            tok = n * (length - 4)
            rows.append({
                "length": length, "batch": n,
                "uncached_tok_s": tok / secs[None], "prefix_tok_s": tok / secs["prefix"],
                "speedup": secs[None] / secs["prefix"],
                "identical": bool(torch.equal(outs[None].tokens, outs["prefix"].tokens)),
                "nfe": outs["prefix"].nfe,
                # what the exact cache allocates once for this batch and canvas
                "cache_mib": net.new_cache(n, length).nbytes / 2**20,
            })
            print(rows[-1], flush=True)
    return rows


def _parse_rate(model, x: torch.Tensor) -> float:
    ok = 0
    for row in x:
        try:
            json.loads(model.decode(row))
            ok += 1
        except ValueError:
            pass
    return ok / len(x)


def _json_part(args) -> list[dict]:
    from reverie.discrete import generate, load_model

    model = load_model("tiny-json")
    n, rows = args.n_json, []
    for sampler in ("low_confidence", "ancestral"):
        def draw(c, sampler=sampler):
            return generate(model, prompt='{"name":', length=64, steps=56, sampler=sampler,
                            block_length=8, n=n, cache=c,
                            generator=[torch.Generator().manual_seed(i) for i in range(n)])
        outs = {c: draw(c) for c in (None, "prefix", "dual")}
        secs = _interleaved({c: (lambda c=c: draw(c)) for c in outs}, args.rounds)
        for c, x in outs.items():
            rows.append({"sampler": sampler, "cache": str(c), "parse_rate": _parse_rate(model, x),
                         "tok_s": n * 56 / secs[c], "speedup": secs[None] / secs[c]})
            print(rows[-1], flush=True)
    return rows


def _bundled_block_part(args) -> list[dict]:
    """The bundled block-causal ``tiny-json-block``: unconditional samples at steps = L, blocks
    of its block size, uncached vs the exact prefix cache (identical tokens, checked)."""
    from reverie.discrete import generate, load_model

    model = load_model("tiny-json-block")
    n, length, rows = args.n_json, model.length, []
    for sampler in ("ancestral", "low_confidence"):
        def draw(c, sampler=sampler):
            return generate(model, length=length, steps=length, sampler=sampler, n=n, cache=c,
                            generator=[torch.Generator().manual_seed(i) for i in range(n)])
        outs = {c: draw(c) for c in (None, "prefix")}
        secs = _interleaved({c: (lambda c=c: draw(c)) for c in outs}, args.rounds)
        for c, x in outs.items():
            rows.append({"sampler": sampler, "cache": str(c), "parse_rate": _parse_rate(model, x),
                         "tok_s": n * length / secs[c], "speedup": secs[None] / secs[c],
                         "identical": bool(torch.equal(x, outs[None]))})
            print(rows[-1], flush=True)
    return rows


def _peers_part(args) -> list[dict]:
    import tempfile

    import transformers as tf
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline
    from transformers.models.diffusion_gemma.configuration_diffusion_gemma import (
        DiffusionGemmaTextConfig,
    )

    from reverie.discrete import generate, load_model
    from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer

    rows = []
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

    runs = {"LLaDA2Pipeline": llada2}
    for c in (None, "prefix"):
        runs[f"reverie cache={c}"] = lambda c=c: generate(
            lm, prompt, length=256, steps=56, temperature=0, sampler="low_confidence", cache=c
        )[:, 32:]
    ref = llada2()
    secs = _interleaved(runs, args.rounds)
    for k in runs:
        rows.append({"peer": "LLaDA2 (block-causal, L=256, block 32, 8 steps/block, greedy)",
                     "run": k, "tok_s": 224 / secs[k], "identical": bool(torch.equal(runs[k](),
                                                                                     ref))})
        print(rows[-1], flush=True)

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

    runs = {"transformers generate": hf}
    for c in ("prefix", None):
        runs[f"reverie cache={c}"] = lambda c=c: generate(
            dg, ids, length=69, steps=12, n=2, cache=c, generator=torch.Generator().manual_seed(1)
        )
    ref = hf()
    secs = _interleaved(runs, args.rounds)
    for k in runs:
        rows.append({"peer": "DiffusionGemma (tiny, batch 2, 64 new, canvas 8, 12 steps)",
                     "run": k, "tok_s": 128 / secs[k],
                     "identical": bool(torch.equal(runs[k](), ref))})
        print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    block = _block_part(args)
    print("\n## block-causal model: low_confidence, steps = length / 4, uncached vs exact prefix "
          f"cache (median of {args.rounds} warm interleaved rounds)\n")
    print(format_table(
        ["length", "batch", "uncached tok/s", "prefix tok/s", "speed-up", "identical", "NFE",
         "cache MiB"],
        [[r["length"], r["batch"], r["uncached_tok_s"], r["prefix_tok_s"], r["speedup"],
          r["identical"], r["nfe"], r["cache_mib"]] for r in block],
    ))
    result: dict[str, Any] = {"block_causal": block}
    if not args.skip_json:
        js = _json_part(args)
        print(f"\n## tiny-json, prompt '{{\"name\":', blocks of 8, n = {args.n_json}: "
              "Fast-dLLM caches\n")
        print(format_table(["sampler", "cache", "parse rate", "tok/s", "speed-up"],
                           [[r["sampler"], r["cache"], r["parse_rate"], r["tok_s"],
                             r["speedup"]] for r in js]))
        result["tiny_json"] = js
        bb = _bundled_block_part(args)
        print(f"\n## tiny-json-block (bundled, block-causal), no prompt, steps = L = 64, "
              f"n = {args.n_json}: exact prefix cache\n")
        print(format_table(["sampler", "cache", "parse rate", "tok/s", "speed-up", "identical"],
                           [[r["sampler"], r["cache"], r["parse_rate"], r["tok_s"],
                             r["speedup"], r["identical"]] for r in bb]))
        result["tiny_json_block"] = bb
    if args.peers:
        peers = _peers_part(args)
        print("\n## peers on the same tiny models\n")
        print(format_table(["peer", "run", "tok/s", "identical"],
                           [[r["peer"], r["run"], r["tok_s"], r["identical"]] for r in peers]))
        result["peers"] = peers
    print(f"\nmachine: {machine()}")
    return result

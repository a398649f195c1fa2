"""SDAR in miniature on tiny-json (``reverie bench sdar``): an autoregressive model converted
into a block-diffusion one (:mod:`reverie.discrete.sdar`).

Three tiny character-level models on the tiny-json records of ``scripts/train_tiny_json.py``
(same width, depth and data stream; 1 CPU thread):

* ``ar`` -- autoregressive: the block-causal network with blocks of one token trained by
  next-token prediction for ``--ar-steps`` steps, each token predicted at its own position by
  the mask id (:func:`reverie.discrete.sdar.ar_nll`);
* ``sdar`` -- the AR weights converted to blocks of ``--block-size`` and trained ``--steps``
  more steps with the block NELBO (SDAR's paradigm conversion);
* ``ar_shifted`` / ``sdar_shifted`` -- the same with a standard causal LM (position ``i`` reads
  ``x_{i-1}`` and predicts ``x_i``), converted without a logits shift as SDAR does;
* ``scratch`` -- the same block-causal network trained from a random initialisation with the
  block NELBO for the same ``--steps`` steps (and, with ``--scratch-total``, ``scratch_total``:
  for the AR and the conversion steps together).

Reported per model: the held-out NLL (``ar``) or the exact expected block NELBO (the others;
an upper bound on their NLL) in nats per character, and for ``--n`` unconstrained samples
(steps = L, temperature 1) the JSON parse rate and the model calls per sample of ``threshold``
(SDAR's dynamic low-confidence remasking, reverie's default threshold 0.9) and of static
``low_confidence`` (one token per call). The data module is loaded from the repository's
``scripts/train_tiny_json.py``; ``scripts/train_tiny_sdar.py`` runs the same training and
saves the models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from reverie.bench.common import format_table, machine

SAMPLERS = ("threshold", "low_confidence")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ar-steps", type=int, default=600, help="AR pre-training steps")
    parser.add_argument("--steps", type=int, default=200,
                        help="conversion steps (and the scratch model's steps)")
    parser.add_argument("--block-size", type=int, default=4, help="SDAR's default block is 4")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n", type=int, default=256, help="samples per model and sampler")
    parser.add_argument("--heldout", type=int, default=256, help="held-out records for the NELBO")
    parser.add_argument("--scratch-total", action="store_true",
                        help="also train from scratch for ar-steps + steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")


def tiny_json_data() -> Any:
    """The data module ``scripts/train_tiny_json.py`` of this repository (records, batches,
    tokenizer characters, ``parse_rate``)."""
    path = Path(__file__).resolve().parents[3] / "scripts" / "train_tiny_json.py"
    if not path.exists():
        raise FileNotFoundError(f"the tiny-json data script is not at {path}; run from a "
                                f"checkout of the reverie repository")
    spec = importlib.util.spec_from_file_location("_tiny_json_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_models(args: argparse.Namespace, log=print) -> tuple[dict[str, Any], dict[str, float]]:
    """Train ``ar``, convert it (``sdar``) and train ``scratch`` (and ``scratch_total``);
    returns the networks and their training seconds."""
    from functools import partial

    from reverie.discrete.block import TinyBlockTransformer
    from reverie.discrete.sdar import ar_loss, block_loss, convert, train

    data = tiny_json_data()
    tok = data.CharTokenizer(data.CHARS)
    v, size = tok.vocab_size - 1, {"dim": args.dim, "depth": args.depth, "heads": args.heads}

    def stream(seed: int):  # the same records for every model trained from this seed
        rng = random.Random(seed)
        return lambda step: data.batch(rng, tok, args.batch)

    def fit(name, net, loss, steps, seed):
        start = time.perf_counter()
        train(net, loss, stream(seed), steps, lr=args.lr, seed=seed,
              log=lambda s, x: log(f"{name} step {s}/{steps}  loss/token {x:.4f}"))
        seconds[name] = round(time.perf_counter() - start, 1)
        return net

    seconds: dict[str, float] = {}
    nets = {}
    for tag, shifted in (("", False), ("_shifted", True)):
        torch.manual_seed(args.seed)
        ar = TinyBlockTransformer(v, data.LENGTH, 1, **size)
        nets["ar" + tag] = fit("ar" + tag, ar, partial(ar_loss, shifted=shifted), args.ar_steps,
                               args.seed)
        # SDAR: the AR weights, the block-causal mask, the block NELBO; same records as scratch
        nets["sdar" + tag] = fit("sdar" + tag, convert(ar, args.block_size), block_loss,
                                 args.steps, args.seed + 1)
    torch.manual_seed(args.seed + 1)
    nets["scratch"] = fit("scratch", TinyBlockTransformer(v, data.LENGTH, args.block_size, **size),
                          block_loss, args.steps, args.seed + 1)
    if args.scratch_total:
        torch.manual_seed(args.seed + 1)
        net = TinyBlockTransformer(v, data.LENGTH, args.block_size, **size)
        nets["scratch_total"] = fit("scratch_total", net, block_loss,
                                    args.ar_steps + args.steps, args.seed + 1)
    return nets, seconds


def _sample_causal(net: Any, n: int, length: int, seed: int) -> torch.Tensor:
    """Ancestral samples of a standard causal LM (``ar_nll(..., shifted=True)``): position
    ``i`` reads ``x_{i-1}`` (the mask id as BOS) and its logits draw ``x_i``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, length + 1), int(net.config["vocab_size"]), dtype=torch.long)
    with torch.no_grad():
        for i in range(length):
            p = torch.softmax(net(x[:, : i + 1])[:, i].double(), -1)
            x[:, i + 1] = torch.multinomial(p, 1, generator=g).squeeze(-1)
    return x[:, 1:]


def evaluate(net: Any, args: argparse.Namespace, data: Any, shifted: bool = False
             ) -> dict[str, Any]:
    """Exact held-out NLL / NELBO per character, and parse rate and calls per sample of each
    sampler (exact prefix cache; steps = L, one block per ``net.block_size``). A standard
    causal LM (``shifted``) is sampled ancestrally (what every sampler does with blocks of one
    token), reported under both samplers."""
    from reverie.discrete import generate
    from reverie.discrete.block import BlockCausalLM
    from reverie.discrete.sdar import ar_nll, exact_block_nelbo

    tok = data.CharTokenizer(data.CHARS)
    val = data.batch(random.Random(args.seed + 12345), tok, args.heldout)
    with torch.no_grad():
        nll = ar_nll(net, val, True) if shifted else exact_block_nelbo(net, val, net.block_size)
    out: dict[str, Any] = {"block_size": net.block_size,
                           "nelbo_per_char": round(float(nll.mean()) / data.LENGTH, 4)}
    lm = BlockCausalLM(net, vocab_size=tok.vocab_size - 1, tokenizer=tok)
    for sampler in SAMPLERS:
        start = time.perf_counter()
        if shifted:
            tokens, calls, batched = _sample_causal(net, args.n, data.LENGTH, args.seed + 11), \
                data.LENGTH, data.LENGTH
        else:
            res = generate(lm, length=data.LENGTH, steps=data.LENGTH, sampler=sampler, n=args.n,
                           cache="prefix", return_stats=True,
                           generator=[torch.Generator().manual_seed(args.seed + 11 + i)
                                      for i in range(args.n)])
            tokens, calls, batched = res.tokens, res.row_evals / args.n, res.nfe
        texts = [tok.decode(r) for r in tokens.tolist()]
        out[sampler] = {"parse_rate": data.parse_rate(texts),
                        "calls_per_sample": round(calls, 2), "batched_calls": batched,
                        "seconds": round(time.perf_counter() - start, 1), "example": texts[0]}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    nets, seconds = train_models(args)
    data = tiny_json_data()
    steps = {"ar": args.ar_steps, "ar_shifted": args.ar_steps, "sdar": args.steps,
             "sdar_shifted": args.steps, "scratch": args.steps,
             "scratch_total": args.ar_steps + args.steps}
    rows, examples = [], {}
    for name, net in nets.items():
        m = evaluate(net, args, data, shifted=name == "ar_shifted")
        rows.append({"model": name, "block": m["block_size"], "steps": steps[name],
                     "train_s": seconds[name], "nelbo_per_char": m["nelbo_per_char"],
                     **{f"{s}_{k}": m[s][k] for s in SAMPLERS
                        for k in ("parse_rate", "calls_per_sample")}})
        examples[name] = m["threshold"]["example"]
    print(f"machine: {machine()}")
    print(format_table(list(rows[0]), [list(r.values()) for r in rows]))
    for name, text in examples.items():
        print(f"{name}: {json.dumps(text)}")
    skip = ("func", "out", "bench_name", "command")  # the CLI's own arguments
    config = {k: v for k, v in vars(args).items() if k not in skip}
    return {"config": config, "rows": rows, "examples": examples}

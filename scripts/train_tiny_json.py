"""Train the bundled ``tiny-json`` masked-diffusion language model (and its block-causal sibling).

    PYTHONPATH=src python scripts/train_tiny_json.py --out /tmp/stage1
    PYTHONPATH=src python scripts/train_tiny_json.py --init /tmp/stage1 --steps 9000 --lr 1e-3 \
        --ema 0.999 --out src/reverie/models/tiny-json                 # the bundled tiny-json
    PYTHONPATH=src python scripts/train_tiny_json.py --block-size 16 \
        --out src/reverie/models/tiny-json-block                       # the bundled sibling

The script generates its own data: JSON records of four schemas (people, products, points with
tags, and arithmetic expressions with their value), one record per 64-character canvas, padded
with the padding token after the text. ``--layout fixed`` (the default) pads every value with
spaces to its column width (:data:`WIDTHS`), so every record of a schema has the same length and
each key sits at the same position -- JSON whitespace, the parsed record is unchanged;
``--layout compact`` writes compact JSON. The model is a small bidirectional transformer
(:class:`reverie.discrete.nets.TinyTransformer`) trained with the continuous-time
masked-diffusion ELBO (MD4 / MDLM, linear schedule, SUBS, no time conditioning) from
:func:`reverie.discrete.nelbo`; with ``--block-size`` a block-causal
:class:`reverie.discrete.block.TinyBlockTransformer` trained with BD3-LM's loss
(:func:`reverie.discrete.block.block_nelbo`). Everything is seeded; the weights are saved as
safetensors with a ``config.json`` that :func:`reverie.discrete.load_model` reads.
``--init FOLDER`` continues training a saved model (same architecture); ``--ema DECAY`` saves
and evaluates an exponential moving average of the weights.

Runtime on the shared 2-core machine (CPU only, one torch thread, the default; two OpenMP
threads were more than 10x slower on a busy machine, hence ``--threads 1``), 2026-11-30:

* bundled ``tiny-json``: stage 1, 3000 steps, 7.1 min (0.13-0.14 s/step, lightly loaded): held-out
  NELBO 0.308 nats/token, ancestral parse rate at steps = L 0.63; stage 2 (continued, EMA), 9000
  steps, 44 min under load: NELBO 0.279, ancestral 0.72, low-confidence 1.00 (256 samples, seed
  11; evaluated by :func:`evaluate`).
* bundled ``tiny-json-block``: 3000 steps, 25.5 min under load: NELBO 0.285 (block-causal
  factorisation), ancestral 0.56, low-confidence 1.00.
* not bundled: the earlier compact-layout model (3000 steps, NELBO 0.332, ancestral 0.43) and its
  continuations (to 0.52); a 2.7 M-parameter model (``--dim 192 --depth 6 --heads 6``, EMA) at
  4000 of 6000 steps: ancestral 0.55, stopped. The ancestral failures are misaligned characters
  (``"agg"``, ``"smalu``): exact sampling needs sharper conditionals than these CPU budgets give,
  while confidence decoders parse 99-100%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer, block_nelbo  # noqa: E402
from reverie.discrete.denoiser import TokenDenoiser  # noqa: E402
from reverie.discrete.nets import TinyTransformer  # noqa: E402
from reverie.discrete.process import MaskedProcess, nelbo  # noqa: E402
from reverie.discrete.tokenizer import CharTokenizer  # noqa: E402

LENGTH = 64
CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]":,.-+*/()'
NAMES = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Ken",
    "Barbara",
    "Edsger",
    "Donald",
    "John",
    "Margaret",
    "Tim",
    "Frances",
    "Dennis",
    "Radia",
    "Guido",
    "Sophie",
    "Niklaus",
    "Claude",
    "Hedy",
    "Yann",
]
CITIES = [
    "Paris",
    "London",
    "Berlin",
    "Rome",
    "Oslo",
    "Lima",
    "Cairo",
    "Tokyo",
    "Delhi",
    "Quito",
    "Lagos",
    "Seoul",
    "Dublin",
    "Vienna",
    "Prague",
    "Austin",
]
ITEMS = [
    "lamp",
    "desk",
    "chair",
    "pen",
    "book",
    "mug",
    "phone",
    "cable",
    "sofa",
    "bike",
    "kite",
    "clock",
    "plate",
    "shirt",
]
TAGS = ["red", "blue", "green", "new", "old", "big", "small", "hot", "cold", "fast"]


def _expr(rng: random.Random, depth: int = 0) -> str:
    if depth > 0 and (depth >= 2 or rng.random() < 0.35):
        return str(rng.randint(0, 20))
    a, b = _expr(rng, depth + 1), _expr(rng, depth + 1)
    op = rng.choice("+-*")
    s = f"{a}{op}{b}"
    return f"({s})" if depth > 0 and rng.random() < 0.7 else s


def record(rng: random.Random) -> dict:
    """One synthetic JSON record of a random schema."""
    kind = rng.randrange(4)
    if kind == 0:
        return {"name": rng.choice(NAMES), "age": rng.randint(18, 90), "city": rng.choice(CITIES)}
    if kind == 1:
        return {
            "id": rng.randint(1, 999),
            "item": rng.choice(ITEMS),
            "price": round(rng.uniform(1, 99), rng.choice([0, 1, 2])),
            "stock": rng.random() < 0.5,
        }
    if kind == 2:
        return {
            "x": rng.randint(-50, 50),
            "y": rng.randint(-50, 50),
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
        }
    while True:
        e = _expr(rng)
        if len(e) <= 22:
            break
    return {"expr": e, "value": eval(e)}  # noqa: S307 - our own arithmetic over small ints


#: Column widths of each schema's values in the ``fixed`` layout (the longest value each can
#: take): a value is followed by spaces up to its width, so every record of a schema has the
#: same length and each key sits at the same position -- JSON whitespace, the parsed record
#: is unchanged.
WIDTHS = {
    "name": 10, "age": 2, "city": 8,
    "id": 3, "item": 7, "price": 5, "stock": 5,
    "x": 3, "y": 3, "tags": 24,
    "expr": 19, "value": 5,
}


def fixed(rec: dict) -> str:
    """``rec`` as compact JSON with each value padded by spaces to its column width."""
    parts = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':')).ljust(WIDTHS[k])}"
             for k, v in rec.items()]
    return "{" + ",".join(parts) + "}"


def text(rng: random.Random, layout: str = "fixed") -> str:
    """One record as text: ``compact`` JSON, or the ``fixed`` column layout."""
    while True:
        rec = record(rng)
        s = fixed(rec) if layout == "fixed" else json.dumps(rec, separators=(",", ":"))
        if len(s) <= LENGTH:
            return s


def batch(rng: random.Random, tok: CharTokenizer, n: int, layout: str = "fixed") -> torch.Tensor:
    rows = []
    for _ in range(n):
        ids = tok.encode(text(rng, layout))
        rows.append(ids + [tok.pad_token_id] * (LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def parse_rate(texts: list[str]) -> float:
    ok = 0
    for s in texts:
        try:
            json.loads(s)
            ok += 1
        except ValueError:
            pass
    return ok / max(len(texts), 1)


def evaluate(
    den: TokenDenoiser, tok: CharTokenizer, seed: int, n: int, layout: str = "fixed"
) -> dict:
    """Held-out NELBO per token and the JSON parse rate of ``n`` unconstrained samples at
    steps = L for two samplers (ancestral and LLaDA low-confidence remasking)."""
    out: dict = {}
    with torch.no_grad():
        val = batch(random.Random(seed + 12345), tok, 512, layout)
        vgen = torch.Generator().manual_seed(7)
        if isinstance(den, BlockCausalLM):
            tv = 1.0 - torch.rand((val.shape[0], 8, LENGTH // den.block_size), generator=vgen,
                                  dtype=torch.float64)
            nll = torch.stack([block_nelbo(den.network, val, tv[:, j], vgen) for j in range(8)])
        else:
            nll = nelbo(den, val, samples=8, generator=vgen)
        out["heldout_nelbo_per_token"] = round(float(nll.mean() / LENGTH), 4)
        if n <= 0:
            return out
        from reverie.discrete import generate

        for sampler in ("ancestral", "low_confidence"):
            samples = generate(
                den,
                length=LENGTH,
                steps=LENGTH,
                sampler=sampler,
                n=n,
                generator=torch.Generator().manual_seed(11),
            )
            out[f"parse_rate_{sampler}_steps_L"] = parse_rate(
                [tok.decode(r) for r in samples.tolist()]
            )
    return out


def save(net: TinyTransformer, tok: CharTokenizer, out: Path, training: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` atomically into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    config = {
        "format": "reverie-discrete",
        "architecture": type(net).__name__,
        "model": net.config,
        "tokenizer": tok.to_dict(),
        "mask_id": tok.mask_token_id,
        "pad_id": tok.pad_token_id,
        "length": LENGTH,
        "process": {"kind": "masked", "schedule": "linear"},
        "time_conditioned": False,
        "delimiters": [","],
        "training": training,
    }
    tmpc = out / "config.json.tmp"
    tmpc.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmpc, out / "config.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", default=str(ROOT / "src/reverie/models/tiny-json"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    # one thread: on a shared, oversubscribed CPU two OpenMP threads ran >10x slower
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval", type=int, default=256, help="samples for the final parse-rate check")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=0, help="also save checkpoints (pilots)")
    p.add_argument("--block-size", type=int, default=0,
                   help="train a block-causal model with blocks of this size (0: bidirectional)")
    p.add_argument("--layout", choices=("fixed", "compact"), default="fixed",
                   help="record text: values padded to fixed columns, or compact JSON")
    p.add_argument("--init", default=None, help="start from the weights of this model folder")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0: off)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    tok = CharTokenizer(CHARS)
    size = {"dim": args.dim, "depth": args.depth, "heads": args.heads}
    if args.block_size:  # block-causal sibling: the mask is the extra input id (no logit)
        assert tok.mask_token_id == tok.vocab_size - 1
        net = TinyBlockTransformer(tok.vocab_size - 1, LENGTH, args.block_size, **size)
        den = BlockCausalLM(net, vocab_size=tok.vocab_size - 1, tokenizer=tok)
    else:
        net = TinyTransformer(tok.vocab_size, LENGTH, **size)
        den = TokenDenoiser(
            net,
            mask_id=tok.mask_token_id,
            vocab_size=tok.vocab_size,
            process=MaskedProcess("linear"),
            time_conditioned=False,
            tokenizer=tok,
        )
    if args.init:  # continue training a saved model (same architecture)
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(Path(args.init) / "model.safetensors")))
    # exponential moving average of the weights: what is saved and evaluated when --ema > 0
    avg = (
        torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        )
        if args.ema
        else None
    )
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(300, args.steps // 10)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"tiny-json: {n_params / 1e6:.2f}M parameters, vocab {tok.vocab_size}, length {LENGTH}",
        flush=True,
    )

    def final() -> TinyTransformer:  # the weights a checkpoint saves
        return avg.module if avg is not None else net

    start = time.time()
    ema = None
    net.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x0 = batch(rng, tok, args.batch, args.layout)
        # stratified times over the batch (MD4's low-discrepancy sampler), t in (0, 1]
        u = torch.rand((), generator=gen, dtype=torch.float64)
        t = 1.0 - torch.remainder(
            u + torch.arange(args.batch, dtype=torch.float64) / args.batch, 1.0
        )
        if args.block_size:  # an independent time in (0, 1] for every block of every row
            shape = (args.batch, LENGTH // args.block_size)
            tb = 1.0 - torch.rand(shape, generator=gen, dtype=torch.float64)
            loss = block_nelbo(net, x0, tb, gen).mean() / LENGTH
        else:
            loss = nelbo(den, x0, t=t, generator=gen).mean() / LENGTH
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if avg is not None:
            avg.update_parameters(net)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step == 0:
            el = time.time() - start
            print(
                f"step {step + 1}/{args.steps}  nelbo/token {ema:.4f}  lr {lr_at(step):.2e}  "
                f"{el:.0f}s ({el / (step + 1):.2f}s/step)",
                flush=True,
            )
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(final(), tok, Path(args.out) / f"step{step + 1}", {"steps": step + 1})
    train_seconds = time.time() - start
    if avg is not None:  # the averaged weights become the model
        net.load_state_dict(avg.module.state_dict())
    net.eval()

    training = {
        "script": "scripts/train_tiny_json.py",
        "seed": args.seed,
        "layout": args.layout,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "dim": args.dim,
        "depth": args.depth,
        "heads": args.heads,
        "threads": args.threads,
        "init": args.init,  # None: trained from scratch
        "ema": args.ema,
        "train_seconds": round(train_seconds, 1),
        "final_nelbo_per_token": round(ema, 4),
    }
    save(net, tok, Path(args.out), training)  # weights first: evaluation can never lose them
    # held-out NELBO (nats per token) and parse rates of unconstrained samples
    metrics = evaluate(den, tok, args.seed, args.eval, args.layout)
    print("evaluation: " + json.dumps(metrics), flush=True)
    save(net, tok, Path(args.out), {**training, "eval_samples": args.eval, **metrics})
    out = Path(args.out)
    print(f"saved to {out} after {train_seconds / 60:.1f} min of training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

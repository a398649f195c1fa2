"""``reverie generate``: sample text from a masked-diffusion language model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reverie._io import write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a masked-diffusion language model (default: bundled tiny-json)",
        description="Sample text from a masked-diffusion language model with any token sampler.",
    )
    p.add_argument("--model", default="tiny-json",
                   help="bundled name (tiny-json), a saved folder, or a transformers folder/hub id")
    p.add_argument("--prompt", action="append", default=None,
                   help="text the samples start with; repeat it for a batch of prompts of any "
                        "lengths (left padded; --n samples each)")
    p.add_argument("--length", type=int, default=None,
                   help="canvas length in tokens, prompt included (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated after each prompt (instead of --length)")
    p.add_argument("--stop", action="append", default=None,
                   help="end a sample where its text first holds this string, cut before it "
                        "(repeatable)")
    p.add_argument("--eos", action="store_true",
                   help="end a sample at the model's end token (tiny-json: its padding) once "
                        "everything before it is decided; finished samples leave the batch")
    p.add_argument("--stream", action="store_true",
                   help="print committed text as it is decided (one sample at a time on "
                        "the terminal: pieces of other samples are printed when theirs ends)")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt with the tokenizer's chat template (transformers "
                        "tokenizers that have one)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: one per token)")
    p.add_argument("--sampler", default="low_confidence",
                   help="a name from reverie.discrete.SAMPLERS (default: LLaDA low-confidence)")
    p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks")
    p.add_argument("--cache", choices=["prefix", "dual"], default=None,
                   help="KV cache: exact prefix cache on block-causal models; Fast-dLLM's "
                   "approximate prefix / dual caches on bidirectional ones (default: none)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1,
                   help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sample k uses seed + k")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold (threshold / adablock samplers)")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance on the prompt (1 = none)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow custom model code (LLaDA, Dream) when loading transformers models")
    p.add_argument("--regex", default=None, help="the generated text must full-match this regex")
    p.add_argument("--schema", default=None,
                   help="the generated text must be JSON valid under this schema (a file or JSON)")
    p.add_argument("--grammar", default=None,
                   help="the generated text must be a sentence of this context-free grammar "
                        "(a Lark EBNF file, or the grammar text; start rule 'start')")
    p.add_argument("--constraint-method", default="dingo", choices=["dingo", "per_token"],
                   help="DINGO (most probable valid block) or per-token masking (baseline)")
    p.add_argument("--scaffold", action="store_true",
                   help="with --schema: write the schema's skeleton (braces, keys, commas) into "
                        "the canvas and decode only the values (S3)")
    p.add_argument("--budget", type=int, default=None,
                   help="with --scaffold: tokens per value slot (default: share the canvas)")
    p.add_argument("--out", default=None, help="also write the samples as JSON lines to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for small models on busy machines)")
    p.set_defaults(func=run, distributed_ok=True)  # runs sharded under torchrun


def run(args: argparse.Namespace) -> int:
    from reverie import distributed as dist
    from reverie._random import seeded_generators
    from reverie.discrete import SAMPLERS, generate, load_model
    from reverie.discrete.generate import end_token_id

    if args.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    options = _constraint_options(args)  # a bad pattern fails before the model is loaded
    if args.max_new_tokens is not None and args.length is not None:
        raise ValueError("pass --length or --max-new-tokens, not both")
    kw = {"trust_remote_code": True} if args.trust_remote_code else {}
    model = load_model(args.model, **kw)
    size: dict = {"max_new_tokens": args.max_new_tokens}
    if args.max_new_tokens is None:
        length = args.length if args.length is not None else getattr(model, "length", None)
        size = {"length": length}
        if size["length"] is None:
            raise ValueError("this model has no default length; pass --length or --max-new-tokens")
    if args.threshold is not None:
        options["threshold"] = args.threshold
    prompts = args.prompt or [None]
    if len(prompts) > 1:  # --n samples of each prompt, prompt by prompt
        prompts = [p for p in prompts for _ in range(args.n)]
    rows = len(prompts) if len(prompts) > 1 else args.n
    if args.eos:
        eos = end_token_id(model)
        if eos is None:
            raise ValueError("--eos: this model names no end token (eos_id, pad_id)")
        options["eos_id"] = eos
    out = generate(
        model, prompt=prompts if len(prompts) > 1 else prompts[0], steps=args.steps,
        sampler=args.sampler, block_length=args.block_length, temperature=args.temperature,
        n=1 if len(prompts) > 1 else args.n, generator=seeded_generators(args.seed, rows),
        guidance_scale=args.guidance_scale,
        progress=not args.no_progress and not args.stream and dist.is_main(),
        return_stats=not args.stream, stop=args.stop, stream=args.stream, chat=args.chat,
        cache=args.cache, distributed=dist.is_initialized(), **size, **options,
    )
    if not dist.is_main():  # under torchrun rank 0 prints and writes every rank's rows
        return 0
    # with --stop / --eos / --stream the text is the prompt (not with --chat) + the generated
    # text cut at the end; otherwise the whole decoded canvas, as before
    heads = [("" if args.chat or p is None else p) for p in prompts]
    if len(heads) < rows:
        heads = heads * rows
    if args.stream:
        texts = _print_stream(out, heads)
        if args.out:
            write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), args.out)
        return 0
    x = out.tokens
    if args.stop or args.eos:
        texts = [h + t for h, t in zip(heads, out.texts)]
    else:
        texts = [model.decode(row) for row in x]
    for text in texts:
        print(text)
    if args.out:
        write_text("".join(json.dumps({"text": t, "tokens": r}) + "\n"
                           for t, r in zip(texts, x.tolist())), args.out)
    return 0


def _print_stream(pieces, heads: list[str]) -> list[str]:
    """Print sample 0's text as its pieces come (flushed), then the other samples' texts, one
    per line, once the stream has ended (their pieces arrive interleaved)."""
    import sys

    texts = list(heads)
    sys.stdout.write(texts[0])
    sys.stdout.flush()
    for piece in pieces:
        texts[piece.row] += piece
        if piece.row == 0:
            sys.stdout.write(str(piece))
            sys.stdout.flush()
    sys.stdout.write("\n")
    for text in texts[1:]:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return texts


def _constraint_options(args: argparse.Namespace) -> dict:
    """``constraint=`` / ``constraint_method=`` for :func:`generate` from ``--regex``,
    ``--schema`` (a file, or JSON text), with ``--scaffold`` / ``--budget``, or ``--grammar``
    (a Lark file or text)."""
    given = [f for f in ("regex", "schema", "grammar") if getattr(args, f, None) is not None]
    if len(given) > 1:
        raise ValueError(f"pass one of --regex, --schema, --grammar, not {' and '.join(given)}")
    if (args.scaffold or args.budget is not None) and args.schema is None:
        raise ValueError("--scaffold and --budget need --schema")
    if args.budget is not None and not args.scaffold:
        raise ValueError("--budget needs --scaffold")
    if not given:
        return {}
    from reverie.discrete.constraints import Grammar, JsonSchema, Regex

    if args.grammar is not None:  # a file, or the grammar itself (it has a rule's colon)
        path = Path(args.grammar)
        if ":" not in args.grammar and not path.is_file():
            raise ValueError(f"--grammar: no such file {args.grammar!r} (pass a file or a "
                             "Lark grammar)")
        constraint = Grammar(path.read_text() if path.is_file() else args.grammar)
    elif args.regex is not None:
        constraint = Regex(args.regex)
    else:
        text = args.schema
        if not text.lstrip().startswith("{"):  # a file name
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"--schema: no such file {text!r} (pass a file or JSON text)")
            text = path.read_text()
        constraint = JsonSchema(text, scaffold=args.scaffold, budget=args.budget)
    return {"constraint": constraint, "constraint_method": args.constraint_method}

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
    p.add_argument("--prompt", default=None, help="text the samples start with")
    p.add_argument("--length", type=int, default=None,
                   help="canvas length in tokens, prompt included (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: one per token)")
    p.add_argument("--sampler", default="low_confidence",
                   help="a name from reverie.discrete.SAMPLERS (default: LLaDA low-confidence)")
    p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--n", type=int, default=1, help="number of samples")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reverie._random import seeded_generators
    from reverie.discrete import SAMPLERS, generate, load_model

    if args.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    options = _constraint_options(args)  # a bad pattern fails before the model is loaded
    kw = {"trust_remote_code": True} if args.trust_remote_code else {}
    model = load_model(args.model, **kw)
    length = args.length if args.length is not None else getattr(model, "length", None)
    if length is None:
        raise ValueError("this model has no default length; pass --length")
    if args.threshold is not None:
        options["threshold"] = args.threshold
    x = generate(
        model, prompt=args.prompt, length=length, steps=args.steps, sampler=args.sampler,
        block_length=args.block_length, temperature=args.temperature, n=args.n,
        generator=seeded_generators(args.seed, args.n), guidance_scale=args.guidance_scale,
        progress=not args.no_progress, **options,
    )
    texts = [model.decode(row) for row in x]
    for text in texts:
        print(text)
    if args.out:
        write_text("".join(json.dumps({"text": t, "tokens": r}) + "\n"
                           for t, r in zip(texts, x.tolist())), args.out)
    return 0


def _constraint_options(args: argparse.Namespace) -> dict:
    """``constraint=`` / ``constraint_method=`` for :func:`generate` from ``--regex`` or
    ``--schema`` (a file, or JSON text), with ``--scaffold`` / ``--budget``."""
    if args.regex is not None and args.schema is not None:
        raise ValueError("pass either --regex or --schema, not both")
    if (args.scaffold or args.budget is not None) and args.schema is None:
        raise ValueError("--scaffold and --budget need --schema")
    if args.budget is not None and not args.scaffold:
        raise ValueError("--budget needs --scaffold")
    if args.regex is None and args.schema is None:
        return {}
    from reverie.discrete.constraints import JsonSchema, Regex

    if args.regex is not None:
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

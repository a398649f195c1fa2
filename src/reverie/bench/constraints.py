"""Constrained decoding (DINGO): automaton build time and memory, DP cost per denoising step.

Part 1, automata: for real JSON schemas (a user profile, an order with an array of line items,
a log event with uuid / date-time formats and a bounded string) over synthetic byte-level BPE
vocabularies of 32k and 128k tokens, the one-time build time of the token automaton, its
states, token classes, stored transitions and memory, next to the dense ``states x vocab``
table it replaces.

Part 1b, compile (``--compile-only`` runs it alone): per schema and vocabulary size (32k,
128k, and 256k with ``--vocab-sizes``), the token automaton's build time cold (empty caches,
the vocabulary's byte trie already built), from the disk cache (a fresh process's first call)
and from the in-memory cache; next to outlines-core's own ``Index`` build over the same
vocabulary and llguidance's grammar compile plus first token mask (JSON schema and the same
regex), measured in the same run. Per vocabulary, the one-time costs: ``Vocabulary`` from the
tokenizer (then memoised), the byte trie, llguidance's ``LLTokenizer``.

Part 2, cost: the DP's time per denoising step for one block (32 or 64 positions, half of them
staying masked, as mid-way through a block's steps) as a ratio to one forward pass of a
randomly initialised masked transformer (BERT-base body: 12 layers, width 768, 12 heads, tied
embeddings of the same vocabulary; ~110M parameters at 32k, ~183M at 128k) over 256 tokens,
measured interleaved on the same machine; also the sampling variant (forward filtering,
backward sampling) and the per-token masking baseline.

Part 3, validity (needs the bundled ``tiny-json`` weights, or ``--validity-model FOLDER``):
for the record shapes ``tiny-json`` was trained on, the fraction of generated texts that parse
as JSON and that are valid under the schema (checked by a small JSON-schema validator, not by
the regex), unconstrained, with per-token masking, with DINGO, and with DINGO on a schema
scaffold (S3: skeleton in the canvas, values decoded), using the same sampler and seeds and
one step per decoded position.

No hub downloads: the vocabularies are byte-level BPE tokenizers (the shape of GPT-2 / Llama-3
/ Qwen vocabularies: 256 byte tokens plus merges) trained with the ``tokenizers`` library on a
corpus this module generates (pseudo-words with Zipf frequencies, JSON records, code lines);
they are cached under ``$REVERIE_CACHE`` (default ``~/.cache/reverie``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from reverie._io import atomic_path
from reverie.bench.common import Timer, format_table, machine

#: Real-world-shaped JSON schemas whose automata are measured.
SCHEMAS: dict[str, dict[str, Any]] = {
    "user": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "zip": {"type": "string", "pattern": "[0-9]{5}"},
                },
                "required": ["street", "city", "zip"],
            },
            "active": {"type": "boolean"},
            "score": {"type": "number"},
            "role": {"enum": ["admin", "user", "guest"]},
        },
        "required": ["name", "age", "email", "tags", "address", "active", "score", "role"],
    },
    "order": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "ORD-[0-9]{6}"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "price": {"type": "number"},
                    },
                    "required": ["sku", "quantity", "price"],
                },
                "minItems": 1,
            },
            "total": {"type": "number"},
            "currency": {"enum": ["USD", "EUR", "GBP"]},
            "paid": {"type": "boolean"},
        },
        "required": ["order_id", "items", "total", "currency", "paid"],
    },
    "event": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "timestamp": {"type": "string", "format": "date-time"},
            "level": {"enum": ["debug", "info", "warning", "error"]},
            "message": {"type": "string", "maxLength": 80},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "user": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
        "required": ["id", "timestamp", "level", "message"],
    },
}

SPECIALS = ["<|eos|>", "<|mask|>"]

#: The record shapes of the bundled ``tiny-json`` model's training data.
TINY_JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object",
               "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                              "city": {"type": "string"}},
               "required": ["name", "age", "city"]},
    "product": {"type": "object",
                "properties": {"id": {"type": "integer"}, "item": {"type": "string"},
                               "price": {"type": "number"}, "stock": {"type": "boolean"}},
                "required": ["id", "item", "price", "stock"]},
    "point": {"type": "object",
              "properties": {"x": {"type": "integer"}, "y": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["x", "y", "tags"]},
}


def schema_valid(value: Any, schema: dict[str, Any]) -> bool:
    """JSON-schema validity for the keywords the benchmark schemas use (``type``,
    ``properties``, ``required``, ``items``, ``enum``, ``anyOf``), independent of the regex."""
    if "anyOf" in schema:
        return any(schema_valid(value, s) for s in schema["anyOf"])
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind is not None and not checks[kind](value):
        return False
    if kind == "object":
        if any(k not in value for k in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        return all(schema_valid(v, props[k]) for k, v in value.items() if k in props)
    if kind == "array" and "items" in schema:
        return all(schema_valid(v, schema["items"]) for v in value)
    return True


#: The decoding modes of the validity rows.
VALIDITY_METHODS = ("unconstrained", "per_token", "dingo", "scaffold")


def validity_rows(model: Any, *, n: int = 64, sampler: str = "low_confidence",
                  temperature: float = 1.0, block_length: int | None = None,
                  steps: int | None = None, schemas: list[str] | None = None,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Parse rate and schema validity of ``n`` samples per schema of
    :data:`TINY_JSON_SCHEMAS` (default: all; steps default: one per decoded position):
    unconstrained, per-token masking, DINGO, and DINGO with schema scaffolding (S3: the
    skeleton fixed in the canvas, only the values decoded). Each row keeps its first text as
    ``example``."""
    from reverie._random import seeded_generators
    from reverie.discrete import generate
    from reverie.discrete.constraints import JsonSchema

    length = getattr(model, "length", None) or 64
    rows = []
    for name in schemas or list(TINY_JSON_SCHEMAS):
        schema = TINY_JSON_SCHEMAS[name]
        for method in VALIDITY_METHODS:
            kw: dict[str, Any] = {}
            if method == "scaffold":
                kw = {"constraint": JsonSchema(schema, scaffold=True)}
            elif method != "unconstrained":
                kw = {"constraint": JsonSchema(schema), "constraint_method": method}
            with Timer() as t:
                x = generate(model, length=length, steps=steps, sampler=sampler,
                             block_length=block_length, temperature=temperature, n=n,
                             generator=seeded_generators(seed, n), **kw)
            parsed = valid = 0
            for row in x:
                try:
                    obj = json.loads(model.decode(row))
                except ValueError:
                    continue
                parsed += 1
                valid += schema_valid(obj, schema)
            rows.append({"schema": name, "method": method, "n": n, "parse_rate": parsed / n,
                         "schema_valid": valid / n, "seconds": t.seconds,
                         "example": model.decode(x[0])})
    return rows


# ----------------------------------------------------------------------------- vocabularies
def synthetic_corpus(seed: int = 0, n_words: int = 400_000, n_lines: int = 200_000) -> list[str]:
    """Text with the statistics a BPE vocabulary is learnt from: Zipf-distributed pseudo-words
    built from syllables (sentences), JSON records (compact and indented) and code lines."""
    rng = random.Random(seed)
    cons = "b c d f g h j k l m n p qu r s t v w x z ch sh th st tr pl br".split()
    vows = "a e i o u y ai ea ou io ee oo".split()

    def word() -> str:
        k = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(k))
        return w + rng.choice(cons) if rng.random() < 0.3 else w

    lexicon = sorted({word() for _ in range(n_words)})
    rng.shuffle(lexicon)
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(lexicon))))

    def words(k: int) -> list[str]:
        return rng.choices(lexicon, cum_weights=cum, k=k)

    lines = []
    for _ in range(n_lines):
        r = rng.random()
        if r < 0.5:
            s = " ".join(words(rng.randint(5, 20)))
            lines.append(s[0].upper() + s[1:] + rng.choice(".!?,;:"))
        elif r < 0.8:
            rec = {
                words(1)[0]: rng.choice([
                    rng.randint(-1000, 100000), round(rng.uniform(-1e3, 1e3), 3),
                    " ".join(words(3)), True, None, [rng.randint(0, 99) for _ in range(3)],
                ])
                for _ in range(rng.randint(1, 5))
            }
            lines.append(json.dumps(rec, indent=rng.choice([None, 2])))
        else:
            a, b = words(2)
            n = rng.randint(0, 999)
            lines.append(f"def {a}_{b}({a}, {b}=None):\n    return {a} + {n} * {b}")
    return lines


def _cache_dir() -> Path:
    path = Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def synthetic_tokenizer(size: int, seed: int = 0) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of ``size`` tokens (ids 0, 1 = EOS, mask),
    trained on :func:`synthetic_corpus`; cached on disk (written atomically)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = _cache_dir() / f"synthetic-bpe-{size}-seed{seed}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # the default corpus tops out at ~183k tokens; 4x the words for larger vocabularies
    corpus = (synthetic_corpus(seed) if size <= 150_000
              else synthetic_corpus(seed, n_words=1_600_000, n_lines=500_000))
    tok.train_from_iterator(corpus, trainer)
    if tok.get_vocab_size() != size:
        raise RuntimeError(f"the synthetic corpus yields {tok.get_vocab_size()} tokens, not {size}")
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return tok


def synthetic_vocabulary(size: int, seed: int = 0) -> Any:
    """:class:`~reverie.discrete.constraints.Vocabulary` of :func:`synthetic_tokenizer`."""
    from reverie.discrete.constraints import Vocabulary

    tok = synthetic_tokenizer(size, seed)
    return Vocabulary.from_tokenizer(tok, eos_id=tok.token_to_id(SPECIALS[0]),
                                     mask_id=tok.token_to_id(SPECIALS[1]))


# ----------------------------------------------------------------------------- model
class MaskedTransformer(torch.nn.Module):
    """A BERT-base-shaped bidirectional transformer with tied input/output embeddings."""

    def __init__(self, vocab: int, width: int = 768, layers: int = 12, heads: int = 12,
                 length: int = 256) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Parameter(torch.zeros(length, width))
        layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.embed(x) + self.pos[: x.shape[1]])
        return self.norm(h) @ self.embed.weight.T


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with Timer() as t:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return t.seconds


# ----------------------------------------------------------------------------- benchmark
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", nargs="+",
                        default=["automata", "compile", "cost", "validity", "grammar", "suite"],
                        choices=["automata", "compile", "cost", "validity", "grammar", "suite"])
    parser.add_argument("--compile-only", action="store_true",
                        help="run only the compile-time table (same as --parts compile)")
    parser.add_argument("--compile-repeats", type=int, default=3,
                        help="repeats of each compile timing (median)")
    parser.add_argument("--no-outlines-index", action="store_true",
                        help="skip outlines-core's Index build in the compile table (slow)")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[32_000, 128_000])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--schemas", nargs="+", default=list(SCHEMAS), choices=list(SCHEMAS))
    parser.add_argument("--cost-schema", default="user", choices=list(SCHEMAS),
                        help="schema whose automaton is used for the per-step cost")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--seq-len", type=int, default=256, help="forward-pass sequence length")
    parser.add_argument("--masked-fraction", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validity-model", default="tiny-json",
                        help="model for the validity rows (bundled name or saved folder); "
                             "'none' skips them")
    parser.add_argument("--validity-n", type=int, default=64, help="samples per schema and method")
    parser.add_argument("--validity-sampler", default="low_confidence")
    parser.add_argument("--validity-temperature", type=float, default=1.0)
    parser.add_argument("--suite", default=str(SUITE),
                        help="folder of the official JSON-Schema-Test-Suite files (suite part)")
    parser.add_argument("--grammar-n", type=int, default=32,
                        help="samples per grammar and decoding (grammar part)")


#: The official JSON-Schema-Test-Suite files vendored with the tests (draft 2020-12).
SUITE = Path(__file__).resolve().parents[3] / "tests" / "data" / "json_schema_suite"

#: Context-free grammars of the grammar part, each with the prompt it continues on tiny-json:
#: JSON with unbounded nesting, and tiny-json's arithmetic records (balanced parentheses, left
#: recursion); both allow the spaces of tiny-json's column layout after values.
GRAMMARS = {
    "json": ("", r"""
?start: value ws
?value: object | array | string | number | "true" | "false" | "null"
array: "[" [value ws ("," value ws)*] "]"
object: "{" [pair ("," pair)*] "}"
pair: string ":" value ws
string: /"[^"\\]*"/
number: /-?(0|[1-9][0-9]*)(\.[0-9]+)?/
ws: " "*
"""),
    "expr record": ('{"expr":"', r"""
start: sum "\"" ws ",\"value\":" int ws "}"
?sum: term | sum ("+" | "-") term
?term: atom | term "*" atom
?atom: int | "(" sum ")"
int: /-?(0|[1-9][0-9]*)/
ws: " "*
"""),
}


def grammar_rows(model: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """For each grammar of :data:`GRAMMARS`: the fraction of ``n`` ancestral samples at
    steps = L (per-row seeds) whose generated text is a sentence of the grammar (checked by
    Lark's Earley parser), unconstrained and with ``constraint=Grammar(...)``, and seconds per
    sample."""
    from reverie.discrete import generate
    from reverie.discrete.constraints import Grammar

    rows = []
    for name, (prompt, text) in GRAMMARS.items():
        grammar = Grammar(text)
        length = model.length
        for constrained in (False, True):
            gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
            with Timer() as t:
                out = generate(model, prompt=prompt or None, length=length,
                               steps=length - len(prompt), sampler="ancestral", n=n,
                               generator=gens, constraint=grammar if constrained else None)
            ok = [grammar.matches(model.decode(r)[len(prompt):]) for r in out]
            rows.append({"grammar": name, "constrained": constrained,
                         "valid": sum(ok) / n, "seconds_per_sample": t.seconds / n})
            print(rows[-1], flush=True)
    return rows


METHODS = ("dingo", "sample", "per_token")


def _cost(size: int, automaton: Any, args: argparse.Namespace,
          device: torch.device) -> list[dict[str, Any]]:
    """Median time of one forward pass and of each block decoder, measured interleaved."""
    from reverie.discrete.constraints import best_block, per_token_block, sample_block

    model = MaskedTransformer(size, length=args.seq_len).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    gen_dev = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randint(0, size, (1, args.seq_len), generator=gen).to(device)
    with torch.inference_mode():
        lp_all = model(x).float().log_softmax(-1)

    def decode(method: str, lp: torch.Tensor, masked: torch.Tensor) -> Any:
        if method == "dingo":
            return best_block(lp, automaton, 0, masked)
        if method == "sample":
            return sample_block(lp, automaton, 0, masked, generator=gen_dev)
        return per_token_block(lp, automaton, 0, masked)

    cases = {}
    for block in args.blocks:
        masked = torch.rand(1, block, generator=gen) < args.masked_fraction
        cases[block] = (lp_all[:, :block].contiguous(), masked.to(device))
        for m in METHODS:  # warm-up: tables on the device, allocator
            decode(m, *cases[block])
    fwd: list[float] = []
    times: dict[tuple[int, str], list[float]] = {(b, m): [] for b in args.blocks for m in METHODS}
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            fwd.append(_timed(lambda: model(x), device))
            for block, (lp, masked) in cases.items():
                for m in METHODS:
                    times[block, m].append(
                        _timed(lambda m=m, lp=lp, masked=masked: decode(m, lp, masked), device))
    f = statistics.median(fwd)
    rows = []
    for block in args.blocks:
        med = {m: statistics.median(times[block, m]) for m in METHODS}
        rows.append({"vocab": size, "block": block, "params_m": n_params / 1e6,
                     "forward_ms": 1e3 * f, "schema": args.cost_schema,
                     **{f"{m}_ms": 1e3 * v for m, v in med.items()},
                     **{f"{m}_ratio": v / f for m, v in med.items()}})
    return rows


@contextmanager
def _fresh_disk_cache() -> Iterator[None]:
    """Point the automata disk cache (``$REVERIE_CACHE_DIR``) at an empty temporary folder,
    so builds are cold and the user's cache is left alone; empty the memory cache after."""
    from reverie.discrete.constraints import clear_cache

    before = os.environ.get("REVERIE_CACHE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["REVERIE_CACHE_DIR"] = folder
        try:
            yield
        finally:
            clear_cache()
            if before is None:
                os.environ.pop("REVERIE_CACHE_DIR", None)
            else:
                os.environ["REVERIE_CACHE_DIR"] = before


def _median_time(fn: Callable[[], Any], repeats: int, before: Callable[[], Any] = lambda: None,
                 cpu: list[float] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, calling ``before`` (untimed) first;
    the median process CPU time is appended to ``cpu`` when given."""
    times, cpu_times = [], []
    for _ in range(repeats):
        before()
        c0 = time.process_time()
        with Timer() as t:
            fn()
        cpu_times.append(time.process_time() - c0)
        times.append(t.seconds)
    if cpu is not None:
        cpu.append(statistics.median(cpu_times))
    return statistics.median(times)


def _compile_row(size: int, name: str, vocab: Any, oc_vocab: Any, llt: Any,
                 args: argparse.Namespace) -> dict[str, Any]:
    """One schema's row of :func:`compile_rows`."""
    import outlines_core

    from reverie.discrete.constraints import TokenAutomaton, clear_cache
    from reverie.discrete.constraints.automaton import _dense_byte_dfa, schema_to_regex

    schema = SCHEMAS[name]
    regex = schema_to_regex(schema)

    def cold() -> None:  # empty memory and disk caches, and the byte-DFA memo
        clear_cache(disk=True)
        _dense_byte_dfa.cache_clear()

    def build() -> Any:
        return TokenAutomaton.from_schema(schema, vocab)

    def first_mask(grammar: str) -> None:
        import llguidance.numpy as llg_np

        matcher = llguidance.LLMatcher(llt, grammar)
        mask = llg_np.allocate_token_bitmask(1, llt.vocab_size)
        llg_np.fill_next_token_bitmask(matcher, mask, 0)
        if matcher.is_error():
            raise RuntimeError(f"llguidance: {matcher.get_error()}")

    reps = args.compile_repeats
    cpu: list[float] = []  # on a shared machine the CPU time is the steadier figure
    t_cold = _median_time(build, reps, cold, cpu)
    t_disk = _median_time(build, reps, clear_cache)
    t_mem = _median_time(build, reps)
    a = build()
    t_oc = float("nan") if args.no_outlines_index else _median_time(
        lambda: outlines_core.Index(regex, oc_vocab), 1)
    t_llg_json = t_llg_regex = float("nan")
    if llt is not None:
        import llguidance

        t_llg_json = _median_time(lambda: first_mask(
            llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))), reps)
        t_llg_regex = _median_time(
            lambda: first_mask(llguidance.LLMatcher.grammar_from_regex(regex)), reps)
    return {"vocab": size, "schema": name, "regex_chars": len(regex), "states": a.n_states,
            "classes": a.n_classes, "cold_s": t_cold, "cold_cpu_s": cpu[0],
            "disk_cached_ms": 1e3 * t_disk, "memory_cached_ms": 1e3 * t_mem,
            "outlines_index_s": t_oc, "llguidance_json_ms": 1e3 * t_llg_json,
            "llguidance_regex_ms": 1e3 * t_llg_regex}


def compile_rows(size: int, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict]]:
    """Compile times for one vocabulary size: the one-time per-vocabulary costs, and per
    schema reverie's cold / disk-cached / memory-cached build next to outlines-core's
    ``Index`` and llguidance's compile + first mask (NaN when llguidance is missing)."""
    import outlines_core

    from reverie.discrete.constraints import Vocabulary
    from reverie.discrete.constraints._trie import TokenTrie, token_trie

    tok = synthetic_tokenizer(size, args.seed)
    ids = {"eos_id": tok.token_to_id(SPECIALS[0]), "mask_id": tok.token_to_id(SPECIALS[1])}
    with Timer() as t_vocab:
        vocab = Vocabulary.from_tokenizer(tok, **ids)
    with Timer() as t_memo:
        Vocabulary.from_tokenizer(tok, **ids)
    t_trie = _median_time(lambda: TokenTrie(vocab), args.compile_repeats)
    token_trie(vocab)
    try:
        import llguidance
    except ImportError:  # optional: its columns stay empty
        llguidance = None
    with Timer() as t_llt:
        llt = None if llguidance is None else llguidance.LLTokenizer(
            tok.to_str(), eos_token=ids["eos_id"])
    by_text: dict[bytes, list[int]] = {}
    for i, piece in enumerate(vocab.tokens):
        if piece:
            by_text.setdefault(piece, []).append(i)
    oc_vocab = outlines_core.Vocabulary(ids["eos_id"], by_text)
    per_vocab = {"vocab": size, "vocabulary_s": t_vocab.seconds, "vocabulary_memo_s":
                 t_memo.seconds, "trie_s": t_trie,
                 "lltokenizer_s": t_llt.seconds if llt is not None else float("nan")}
    with _fresh_disk_cache():
        rows = [_compile_row(size, name, vocab, oc_vocab, llt, args) for name in args.schemas]
    return per_vocab, rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from reverie.discrete.constraints import TokenAutomaton, clear_cache

    if args.compile_only:
        args.parts = ["compile"]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    automata_rows, cost_rows = [], []
    result: dict[str, Any] = {"machine": machine(), "automata": [], "cost": []}
    sizes = args.vocab_sizes if {"automata", "cost"} & set(args.parts) else []
    progress = tqdm(total=len(sizes) * (len(args.schemas) + 1), desc="constraints")
    with _fresh_disk_cache():  # cold builds; the user's automata cache is left alone
        for size in sizes:
            vocab = synthetic_vocabulary(size, args.seed)
            built = {}
            for name in args.schemas:
                clear_cache(disk=True)
                with Timer() as t:
                    a = TokenAutomaton.from_schema(SCHEMAS[name], vocab)
                built[name] = a
                dense_mib = a.n_states * size * 4 / 2**20  # an int32 states x vocab table
                row = {
                    "vocab": size, "schema": name, "build_s": t.seconds, "states": a.n_states,
                    "classes": a.n_classes, "transitions": a.n_transitions,
                    "memory_mib": a.nbytes / 2**20, "dense_int32_mib": dense_mib,
                }
                result["automata"].append(row)
                automata_rows.append([size, name, t.seconds, a.n_states, a.n_classes,
                                      a.n_transitions, a.nbytes / 2**20, dense_mib])
                progress.update()
            automaton = built.get(args.cost_schema) or TokenAutomaton.from_schema(
                SCHEMAS[args.cost_schema], vocab)
            for row in _cost(size, automaton, args, device) if "cost" in args.parts else []:
                result["cost"].append(row)
                cost_rows.append([size, row["block"], row["params_m"], row["forward_ms"],
                                  *[row[f"{m}{k}"] for m in METHODS for k in ("_ms", "_ratio")]])
            progress.update()
    progress.close()
    if automata_rows:
        print("\nToken automata (one-time build; memory of the stored automaton vs a dense "
              "table)")
        print(format_table(["vocab", "schema", "build s", "states", "classes", "transitions",
                            "MiB", "dense int32 MiB"], automata_rows))
    if "compile" in args.parts:
        result["compile"], result["compile_vocab"] = [], []
        for size in args.vocab_sizes:
            per_vocab, rows = compile_rows(size, args)
            result["compile_vocab"].append(per_vocab)
            result["compile"] += rows
        print("\nPer vocabulary, one-time: Vocabulary from the tokenizer (then memoised), "
              "reverie's byte trie, llguidance's LLTokenizer")
        print(format_table(["vocab", "Vocabulary s", "memoised s", "trie s", "LLTokenizer s"],
                           [[r["vocab"], r["vocabulary_s"], r["vocabulary_memo_s"], r["trie_s"],
                             r["lltokenizer_s"]] for r in result["compile_vocab"]]))
        print(f"\nCompile per schema (median of {args.compile_repeats}; outlines Index: one "
              "run): reverie cold / from disk / from memory; outlines-core Index(regex, "
              "vocabulary); llguidance grammar + matcher + first mask")
        print(format_table(
            ["vocab", "schema", "regex chars", "states", "classes", "cold s", "cold CPU s",
             "disk ms", "memory ms", "outlines Index s", "llg JSON ms", "llg regex ms"],
            [[r["vocab"], r["schema"], r["regex_chars"], r["states"], r["classes"], r["cold_s"],
              r["cold_cpu_s"], r["disk_cached_ms"], r["memory_cached_ms"], r["outlines_index_s"],
              r["llguidance_json_ms"], r["llguidance_regex_ms"]] for r in result["compile"]]))
    if cost_rows:
        print(f"\nDP cost per denoising step ({args.cost_schema} schema, "
              f"{args.masked_fraction:.0%} of the block staying masked) vs one forward pass "
              f"over {args.seq_len} tokens")
        print(format_table(["vocab", "block", "params M", "forward ms", "DINGO ms", "DINGO/fwd",
                            "sample ms", "sample/fwd", "per-token ms", "per-token/fwd"],
                           cost_rows))
    if "validity" in args.parts and args.validity_model != "none":
        from reverie.discrete import load_model

        try:
            model = load_model(args.validity_model)
        except FileNotFoundError as err:  # the bundled weights are trained by a script
            print(f"\nvalidity rows skipped: {err}")
        else:
            result["validity"] = validity_rows(
                model, n=args.validity_n, sampler=args.validity_sampler,
                temperature=args.validity_temperature, seed=args.seed)
            print(f"\nValidity on {args.validity_model} ({args.validity_sampler}, one step per "
                  f"decoded position, temperature {args.validity_temperature}, "
                  f"n = {args.validity_n})")
            print(format_table(
                ["schema", "method", "parse rate", "schema valid", "seconds"],
                [[r["schema"], r["method"], r["parse_rate"], r["schema_valid"], r["seconds"]]
                 for r in result["validity"]]))
    if "suite" in args.parts:
        from reverie.discrete.constraints.schema_suite import suite_coverage

        if not Path(args.suite).is_dir():
            print(f"\nsuite part skipped: no folder {args.suite} (pass --suite)")
        else:
            table = suite_coverage(args.suite)
            cols = ["cases", "supported", "refused", "instances", "passed"]
            rows = [[name, *[r[c] for c in cols], len(r["fa"]), len(r["fr"])]
                    for name, r in table.items()]
            rows.append(["total", *[sum(r[c] for r in table.values()) for c in cols],
                         sum(len(r["fa"]) for r in table.values()),
                         sum(len(r["fr"]) for r in table.values())])
            result["suite"] = [dict(zip(["file", *cols, "false_accepts", "false_rejects"], r))
                               for r in rows]
            print("\nJSON-Schema-Test-Suite (draft 2020-12) through reverie's translator: cases "
                  "supported (a regex, or an empty language) or refused; instances of supported "
                  "cases decided right; valid instances rejected / invalid ones accepted")
            print(format_table(["file", *cols, "false accepts", "false rejects"], rows))
    if "grammar" in args.parts and args.validity_model != "none":
        from reverie.discrete import load_model

        result["grammar"] = grammar_rows(load_model(args.validity_model), args.grammar_n,
                                         args.seed)
        print(f"\nContext-free grammars on {args.validity_model} (ancestral, steps = L, "
              f"n = {args.grammar_n}): sentences of the grammar (Lark), unconstrained vs "
              "Grammar(...)")
        print(format_table(["grammar", "constrained", "valid", "s / sample"],
                           [[r["grammar"], r["constrained"], r["valid"],
                             r["seconds_per_sample"]] for r in result["grammar"]]))
    print(f"\nmachine: {result['machine']}")
    result["settings"] = {k: v for k, v in vars(args).items() if k != "func"}
    result["timestamp"] = time.time()
    return result

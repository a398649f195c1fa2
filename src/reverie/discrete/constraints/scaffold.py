"""Schema scaffolding: the fixed skeleton of a JSON schema written into the canvas, masks only
for the values.

S3, "self-adaptive schema scaffolding" (Xiong, Cai, Li, Wang 2025, arXiv:2507.04504, §3 and
``scaffolding/schema.py``): a diffusion LM fills a canvas in any order, so the structure of a
JSON object (braces, keys, colons, commas, the quotes around plain strings) can be placed in
the canvas before decoding starts, and only each value gets a slot of masked positions. The
unused end of a slot is filled with a null token that the decoder drops (S3's ``<none>``);
reverie uses the vocabulary's EOS / padding token, which the token automata already allow
after a complete value.

Here every slot is decoded under the token automaton of its own value (the sub-schema's
regular expression), with DINGO or the per-token baseline, so each value matches its
sub-schema and the text with the null tokens removed is valid under the whole schema. The
slots are independent given the skeleton, so the best (or a sampled) assignment of a block
is the best (or a sampled) assignment of each slot part inside it.

A plain constraint is the trivial scaffold: no skeleton, one slot covering the whole
generated canvas.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer
from reverie.discrete.constraints._vocabulary import Vocabulary
from reverie.discrete.constraints.automaton import TokenAutomaton, byte_dfa, schema_to_regex

__all__ = ["Scaffold", "Slot", "json_scaffold", "single_slot"]

#: Schema keywords that a skeleton object may carry (anything else makes it a value slot).
_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties", "title",
                "description", "$defs", "definitions", "$schema", "$id"}
#: Keywords of a plain string whose quotes can be fixed in the skeleton.
_STRING_KEYS = {"type", "minLength", "maxLength", "title", "description"}


@dataclass(frozen=True)
class Slot:
    """Positions ``[start, end)`` of the generated canvas decoded under ``automaton``: a
    value followed by EOS (null) tokens up to ``end``. ``path`` names the field (dotted for
    nested objects; ``""`` for the whole canvas)."""

    path: str
    start: int
    end: int
    automaton: TokenAutomaton

    @property
    def budget(self) -> int:
        """Tokens in the slot."""
        return self.end - self.start


@dataclass(frozen=True)
class Scaffold:
    """The layout of the generated canvas (the positions after the prompt).

    ``template`` -- ``LongTensor[length]``: skeleton tokens (and EOS padding) at fixed
    positions, the mask id at slot positions; ``slots`` -- the decoded value slots, in order,
    not overlapping."""

    template: Tensor
    slots: tuple[Slot, ...]
    mask_id: int

    @property
    def length(self) -> int:
        return int(self.template.shape[0])

    @property
    def n_free(self) -> int:
        """Positions to decode (slot positions)."""
        return sum(s.budget for s in self.slots)

    @property
    def fixed(self) -> Tensor:
        """``bool[length]``: positions held by the skeleton (or EOS padding)."""
        return self.template != self.mask_id


def single_slot(automaton: TokenAutomaton, length: int) -> Scaffold:
    """The trivial scaffold: no skeleton, one slot over ``length`` generated positions."""
    automaton.check_length(length)
    if automaton.mask_id is None:
        raise ValueError("constrained generation needs an automaton with a mask id")
    template = torch.full((length,), automaton.mask_id, dtype=torch.long)
    return Scaffold(template, (Slot("", 0, length, automaton),), automaton.mask_id)


# ---------------------------------------------------------------------------- JSON skeletons
@dataclass(frozen=True)
class _Value:
    path: str
    regex: str


def _is_object(schema: Any) -> bool:
    return (
        isinstance(schema, dict)
        and isinstance(schema.get("properties"), dict)
        and schema.get("type", "object") == "object"
        and set(schema) <= _OBJECT_KEYS
    )


def _is_plain_string(schema: Any) -> bool:
    return (
        isinstance(schema, dict) and schema.get("type") == "string" and set(schema) <= _STRING_KEYS
    )


def _pieces(schema: dict[str, Any], defs: dict[str, Any], path: str, whitespace: str | None,
            out: list[str | _Value]) -> None:
    """Skeleton text and value slots of an object, compact JSON (no whitespace), every
    property in the schema's order (optional ones included: S3 lays out every field)."""
    props = schema["properties"]
    missing = [k for k in schema.get("required", []) if k not in props]
    if missing:
        raise ValueError(
            f"cannot scaffold {path or 'the schema'}: required field(s) {missing} have no "
            "entry in 'properties'"
        )
    if not props:
        raise ValueError(f"cannot scaffold {path or 'the schema'}: 'properties' is empty")
    out.append("{")
    for i, (key, sub) in enumerate(props.items()):
        name = f"{path}.{key}" if path else key
        out.append(("," if i else "") + json.dumps(key) + ":")
        if _is_object(sub):
            _pieces(sub, defs, name, whitespace, out)
            continue
        regex = schema_to_regex({**sub, **defs} if isinstance(sub, dict) else sub,
                                whitespace_pattern=whitespace)
        if _is_plain_string(sub) and len(regex) >= 2 and regex[0] == regex[-1] == '"':
            out += ['"', _Value(name, regex[1:-1]), '"']  # quotes belong to the skeleton
        else:
            out.append(_Value(name, regex))
    out.append("}")


def _encode(text: str, vocab: Vocabulary, encode: Callable[[str], Sequence[int]] | None
            ) -> list[int]:
    """Token ids spelling ``text``: the model's own tokenizer when it round-trips, else the
    longest vocabulary token at each position (greedy)."""
    data = text.encode("utf-8")
    if encode is not None:
        try:
            ids = [int(i) for i in encode(text)]
        except (ValueError, KeyError, TypeError):
            ids = None
        if ids is not None and vocab.decode_bytes(ids, stop_at_eos=False) == data and all(
            vocab.tokens[i] for i in ids
        ):
            return ids
    by_bytes: dict[bytes, int] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok and tok not in by_bytes:
            by_bytes[tok] = i
    longest = max(map(len, by_bytes))
    ids, at = [], 0
    while at < len(data):
        for k in range(min(longest, len(data) - at), 0, -1):
            i = by_bytes.get(data[at : at + k])
            if i is not None:
                ids.append(i)
                at += k
                break
        else:
            raise ValueError(f"the vocabulary cannot spell the schema skeleton {text!r}")
    return ids


def json_scaffold(
    schema: dict[str, Any],
    vocabulary: Any,
    length: int,
    *,
    budget: int | Mapping[str, int] | None = None,
    whitespace_pattern: str | None = None,
    encode: Callable[[str], Sequence[int]] | None = None,
    full_regex: str | None = None,
) -> Scaffold:
    """The S3 scaffold of an object schema over ``length`` generated positions.

    The skeleton is compact JSON with every property in order; nested objects are expanded,
    every other value (numbers, arrays, enums, formats, ...) is one slot under its
    sub-schema's regular expression; the quotes of plain strings are part of the skeleton.

    ``budget`` -- tokens per value slot: ``None`` shares the free positions (the canvas minus
    the skeleton) between the slots, each at least its value's shortest length and at most
    its longest; an ``int`` gives every slot that many; a mapping from field paths
    (``"address.city"``) to ints fixes those and shares the rest. Positions left over after
    the closing brace are EOS. ``encode`` tokenizes the skeleton (the model's tokenizer);
    ``full_regex`` (the whole schema's) is checked to accept the skeleton filled with the
    shortest values, so that a skeleton and the schema cannot disagree.

    Raises ``ValueError`` when the schema is not an object with properties, when a budget is
    smaller than a value's shortest form, or when the skeleton and values cannot fit.
    """
    if not _is_object(schema):
        raise ValueError(
            "schema scaffolding needs an object schema with 'properties' (and only the "
            f"keywords {sorted(_OBJECT_KEYS)}), got {json.dumps(schema)[:120]}"
        )
    vocab = Vocabulary.coerce(vocabulary)
    defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    pieces: list[str | _Value] = []
    _pieces(schema, defs, "", whitespace_pattern, pieces)
    # Merge adjacent text, tokenize it, build each value's automaton.
    parts: list[list[int] | _Value] = []
    text = ""
    for p in [*pieces, None]:
        if isinstance(p, str):
            text += p
            continue
        if text:
            parts.append(_encode(text, vocab, encode))
            text = ""
        if p is not None:
            parts.append(p)
    values = [p for p in parts if isinstance(p, _Value)]
    automata = {v.path: TokenAutomaton.from_regex(v.regex, vocab) for v in values}
    n_skeleton = sum(len(p) for p in parts if isinstance(p, list))
    budgets = _budgets(values, automata, length - n_skeleton, budget, n_skeleton, length)
    if full_regex is not None:
        _check_skeleton(parts, automata, vocab, full_regex)
    template, slots, at = [], [], 0
    for p in parts:
        if isinstance(p, list):
            template += p
            at += len(p)
        else:
            b = budgets[p.path]
            slots.append(Slot(p.path, at, at + b, automata[p.path]))
            template += [vocab.mask_id] * b
            at += b
    template += [vocab.eos_id] * (length - at)
    return Scaffold(torch.tensor(template, dtype=torch.long), tuple(slots), vocab.mask_id)


def _budgets(values: list[_Value], automata: dict[str, TokenAutomaton], free: int,
             budget: int | Mapping[str, int] | None, n_skeleton: int,
             length: int) -> dict[str, int]:
    """Slot sizes: fixed ones from ``budget``, the rest by water-filling between each
    value's shortest and longest length."""
    paths = [v.path for v in values]
    lo = {p: automata[p].min_length() for p in paths}
    hi = {p: automata[p].max_length() for p in paths}
    fixed: dict[str, int] = {}
    if isinstance(budget, bool):
        raise TypeError("budget must be an int, a mapping of field -> int, or None")
    if isinstance(budget, int):
        fixed = dict.fromkeys(paths, budget)
    elif isinstance(budget, Mapping):
        unknown = sorted(set(budget) - set(paths))
        if unknown:
            raise ValueError(f"budget names unknown field(s) {unknown}; the value slots are "
                             f"{paths}")
        fixed = dict(budget)
    elif budget is not None:
        raise TypeError(
            "budget must be an int, a mapping of field -> int, or None, got "
            f"{type(budget).__name__}"
        )
    for p, b in fixed.items():
        integer(f"the budget of {p!r}", b, 0)
        if b < lo[p]:
            raise ValueError(f"field {p!r} needs at least {lo[p]} tokens but its budget is {b}")
    rest = [p for p in paths if p not in fixed]
    need = sum(fixed.values()) + sum(lo[p] for p in rest)
    if need > free:
        raise ValueError(
            f"the schema scaffold needs at least {n_skeleton + need} tokens ({n_skeleton} for "
            f"the skeleton, {need} for the values) but only {length} remain; increase the "
            "generation length or lower the budgets"
        )
    out = dict(fixed)
    left = free - sum(fixed.values())
    if rest:
        cap = {p: left if hi[p] is None else hi[p] for p in rest}
        # The largest common level b with sum(clip(b, lo, cap)) <= left, then one more token
        # to the first slots that can take it.
        level = 0
        while level < left and sum(min(max(level + 1, lo[p]), cap[p]) for p in rest) <= left:
            level += 1
        for p in rest:
            out[p] = min(max(level, lo[p]), max(cap[p], lo[p]))
        spare = left - sum(out[p] for p in rest)
        for p in rest:
            if spare and out[p] < cap[p]:
                out[p] += 1
                spare -= 1
    return out


def _check_skeleton(parts: list[list[int] | _Value], automata: dict[str, TokenAutomaton],
                    vocab: Vocabulary, full_regex: str) -> None:
    """The skeleton filled with each value's shortest form must match the whole schema."""
    ids: list[int] = []
    for p in parts:
        ids += p if isinstance(p, list) else automata[p.path].shortest()
    text = vocab.decode(ids, stop_at_eos=False)
    trans, q, finals = byte_dfa(full_regex)
    for b in text.encode("utf-8"):
        q = trans.get(q, {}).get(b)
        if q is None:
            break
    if q is None or q not in finals:
        raise ValueError(
            f"the schema skeleton filled with the shortest values, {text!r}, does not match the "
            "schema's regular expression; scaffolding writes compact JSON, so the whitespace "
            "pattern must allow no whitespace"
        )

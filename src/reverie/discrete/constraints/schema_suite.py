"""The official JSON-Schema-Test-Suite against reverie's schema translator: which cases the
translator supports, refuses, and gets right (``reverie bench constraints --parts suite``;
``tests/discrete/test_json_schema.py``).

A suite instance counts as accepted when its canonical serialization (compact JSON, numbers in
plain notation, keys in their own or in the schema's declared order) full-matches the regex:
the language of the regex is canonical serializations of valid instances (docs/constraints.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from reverie.discrete.constraints.schema import to_regex

__all__ = ["canonical", "key_order", "suite_coverage"]


def key_order(schema: Any) -> dict[str, int]:
    """Property names in order of first appearance in the schema (``properties``,
    ``required``, keys of ``const`` / ``enum`` objects): the declared order."""
    seen: dict[str, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                names = []
                if k == "properties" and isinstance(v, dict):
                    names = list(v)
                elif k == "required" and isinstance(v, list):
                    names = [n for n in v if isinstance(n, str)]
                elif k in ("const", "enum"):
                    for c in v if k == "enum" and isinstance(v, list) else [v]:
                        names += list(c) if isinstance(c, dict) else []
                for n in names:
                    seen.setdefault(n, len(seen))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(schema)
    return seen


def canonical(v: Any, order: dict[str, int] | None = None) -> str:
    """Compact JSON, ensure_ascii=False, numbers in plain notation (integral ones as
    integers), object keys in ``order`` (else as given)."""
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return json.dumps(v)
    if isinstance(v, (float, Decimal)):
        d = Decimal(repr(v)) if isinstance(v, float) else v
        return format(d.normalize(), "f")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(canonical(x, order) for x in v) + "]"
    items = list(v.items())
    if order is not None:
        items.sort(key=lambda kv: order.get(kv[0], len(order)))
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(x, order)
                          for k, x in items) + "}"


def suite_coverage(suite: str | Path, translate: Callable[[Any], str] = to_regex,
                   files: list[str] | None = None) -> dict[str, dict]:
    """Per suite file: cases, supported, refused, instances, passed, false accepts / rejects
    (lists of (case, test) descriptions). An instance counts as accepted when its compact
    serialization in its own or in the declared key order matches."""
    suite = Path(suite)
    table: dict[str, dict] = {}
    paths = sorted(suite.glob("*.json")) + sorted(suite.glob("optional/format/*.json"))
    for path in paths:
        name = str(path.relative_to(suite))[:-5]
        if files is not None and name not in files:
            continue
        row = dict(cases=0, supported=0, refused=0, instances=0, passed=0, fa=[], fr=[])
        for case in json.loads(path.read_text()):
            row["cases"] += 1
            try:
                regex = translate(case["schema"])
            except ValueError as err:
                if "accepts no value" not in str(err):
                    row["refused"] += 1
                    continue
                regex = None  # a schema nothing satisfies: every instance is rejected
            row["supported"] += 1
            order = key_order(case["schema"])
            for t in case["tests"]:
                forms = {canonical(t["data"]), canonical(t["data"], order)}
                got = regex is not None and any(re.fullmatch(regex, f) for f in forms)
                row["instances"] += 1
                row["passed"] += got == t["valid"]
                if got != t["valid"]:
                    row["fa" if got else "fr"].append((case["description"], t["description"]))
        table[name] = row
    return table

"""``--option KEY=VALUE``: the one parser of option values for every command."""

from __future__ import annotations

import ast
import json
import math
from typing import Any

from reverie._checks import UserError

__all__ = ["parse_value", "parse_options", "add_option_argument", "split_options"]

_WORDS = {"true": True, "false": False, "none": None, "null": None, "inf": math.inf,
          "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf,
          "nan": math.nan}


def parse_value(text: str) -> Any:
    """A command-line value as the Python value it spells: ``true`` / ``false`` / ``none`` /
    ``inf`` (any case), numbers (``3``, ``0.5``, ``1e-3``), quoted strings, lists, tuples and
    dicts (Python or JSON syntax); any other text is the string itself (``potential=max``)."""
    s = text.strip()
    if s.lower() in _WORDS:
        return _WORDS[s.lower()]
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(s)
    except ValueError:
        return s


def parse_options(items: list[str], flag: str = "--option") -> dict[str, Any]:
    """``["eta=0.5", "legacy=false"]`` -> ``{"eta": 0.5, "legacy": False}``; a malformed item or
    a key given twice is a :class:`~reverie.UserError` (one line on the command line)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not all(part.isidentifier() for part in key.split(".", 1)):
            raise UserError(f"{flag} expects KEY=VALUE with KEY a name (e.g. eta=0.5), "
                            f"got {item!r}")
        if key in out:
            raise UserError(f"{flag} {key} is given twice")
        out[key] = parse_value(value)
    return out


def add_option_argument(parser: Any, help: str) -> None:
    """The repeatable ``--option KEY=VALUE`` argument."""
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help=help + "; values are Python literals: 0.5, 10, true, none, "
                        "inf, 'text', [1, 2] (repeatable)")


def split_options(options: dict[str, Any], owners: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route ``--option`` keys to their owners (e.g. ``{"sampler": {"eta": 0.0}, "guidance":
    {"eta": 0.0, "momentum": -0.75}}``: owner -> its known options). ``owner.key`` names the
    owner; a bare key goes to the one owner that has it. A key no owner has, or that two
    owners have without a prefix, is a :class:`~reverie.UserError`."""
    out: dict[str, dict[str, Any]] = {name: {} for name in owners}
    for key, value in options.items():
        prefix, dot, name = key.partition(".")
        if dot:
            if prefix not in owners:
                raise UserError(f"--option {key}: {prefix!r} is not one of {', '.join(owners)}")
            out[prefix][name] = value  # the owner checks the name itself
            continue
        having = [o for o, known in owners.items() if key in known]
        if len(having) > 1:
            raise UserError(f"--option {key} is an option of both the {' and the '.join(having)};"
                            f" write {having[0]}.{key}=... or {having[1]}.{key}=...")
        out[having[0] if having else next(iter(owners))][key] = value
    return out

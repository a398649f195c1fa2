"""Argument checks shared by every entry point, with one wording for each kind of mistake:
a wrong type raises ``TypeError``, a value out of range ``ValueError``, and the message says
what was expected and what was given."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["UserError", "check_options", "integer", "positive_int", "positive", "in_range"]


class UserError(ValueError):
    """Bad input from the user (an argument, a file, a command-line value): the command line
    reports it in one line and exits with status 2. Library argument checks raise
    ``ValueError`` / ``TypeError``, which the command line treats the same way; any other
    exception (e.g. :class:`reverie.NonFiniteError`) is a failure and shows its traceback."""


def integer(name: str, value: Any, low: int | None = None) -> int:
    """``value`` if it is an ``int`` (not a bool) ``>= low``."""
    want = "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer ``>= 1``."""
    return integer(name, value, 1)


def positive(name: str, value: Any) -> float:
    """``float(value)`` if it is a finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def in_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
             hi_open: bool = False, none_ok: bool = False) -> Any:
    """``value`` if it lies in the interval from ``lo`` to ``hi`` (closed unless ``lo_open`` /
    ``hi_open``; ``None`` passes when ``none_ok``)."""
    if value is None and none_ok:
        return value
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    if not (above and below):
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(
            f"{name} must lie in {span}{' or be None' if none_ok else ''}, got {value}"
        )
    return value


def check_options(kind: str, name: str, given: Iterable[str] | Mapping[str, Any],
                  known: Iterable[str] | Mapping[str, Any]) -> None:
    """Refuse options that the ``kind`` ``name`` (e.g. sampler 'ddim') does not have, listing
    the ones it has."""
    known = list(known)
    unknown = set(given) - set(known)
    if unknown:
        raise ValueError(
            f"{kind} {name!r} has no option(s) {sorted(unknown)}; "
            f"its options are {sorted(known) or 'none'}"
        )

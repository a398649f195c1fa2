"""Argument checks shared by every entry point, with one wording for each kind of mistake."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_options"]


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

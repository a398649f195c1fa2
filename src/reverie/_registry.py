"""A name -> entry mapping whose unknown names raise a ``ValueError`` listing the valid ones.

Every kind of algorithm (samplers, token samplers, search methods, inverse methods, MCMC
correctors) has one :class:`Registry`, filled by a ``register`` decorator placed on the
function (or class) it registers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Mapping[str, T], Generic[T]):
    """Registered entries by name, in registration order. ``kind`` names the entries in error
    messages ("sampler", "search method", ...); ``label`` is the registry's name in its repr.
    ``fold`` (optional) maps a name to the form in which names are compared (e.g. case- and
    punctuation-insensitive lookup); a name that is not a string is then a ``TypeError``."""

    def __init__(self, kind: str, label: str, fold: Callable[[str], str] | None = None) -> None:
        self._kind, self._label, self._fold = kind, label, fold
        self._items: dict[str, T] = {}

    def _find(self, name: object) -> str | None:
        if self._fold is None:
            try:
                return name if name in self._items else None  # type: ignore[return-value]
            except TypeError:
                return None
        if not isinstance(name, str):
            raise TypeError(f"{self._kind} must be a name (str), got {type(name).__name__}")
        key = self._fold(name)
        return next((k for k in self._items if self._fold(k) == key), None)

    def __getitem__(self, name: str) -> T:
        key = self._find(name)
        if key is None:
            raise ValueError(
                f"unknown {self._kind} {name!r}; expected one of {', '.join(self._items)}"
            )
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        try:
            return self._find(name) is not None
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"{self._label}({', '.join(self._items)})"

    def add(self, entry: T, name: str | None = None) -> T:
        """Register ``entry`` under ``name`` (default: its ``.name``)."""
        self._items[name if name is not None else entry.name] = entry  # type: ignore[attr-defined]
        return entry

    def reorder(self, names: Sequence[str]) -> None:
        """List these names first, the rest after them."""
        first = {k: self._items[k] for k in names if k in self._items}
        self._items = {**first, **{k: v for k, v in self._items.items() if k not in first}}

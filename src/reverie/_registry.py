"""A name -> entry mapping whose unknown names raise a ``ValueError`` listing the valid ones."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Mapping[str, T], Generic[T]):
    """Registered entries by name, in registration order. ``kind`` names the entries in error
    messages ("sampler", "search method", ...); ``label`` is the registry's name in its repr."""

    def __init__(self, kind: str, label: str) -> None:
        self._kind, self._label = kind, label
        self._items: dict[str, T] = {}

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self._kind} {name!r}; expected one of {', '.join(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

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

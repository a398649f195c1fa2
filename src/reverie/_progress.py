"""The one progress bar: a tqdm bar when enabled, a no-op otherwise (tqdm imported lazily)."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["progress_bar", "progress_iter"]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "step", initial: int = 0) -> Any:
    """A bar of ``total`` units (``initial`` already done) labelled ``desc``; a no-op object
    with the same ``update`` / ``set_postfix`` / ``close`` methods when not ``enabled``."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial)


def progress_iter(items: Sized, enabled: bool, desc: str, unit: str = "it") -> Iterator[Any]:
    """The items of ``items``, advancing a :func:`progress_bar` after each one."""
    bar = progress_bar(len(items), enabled, desc, unit=unit)
    try:
        for item in items:  # type: ignore[attr-defined]
            yield item
            bar.update(1)
    finally:
        bar.close()

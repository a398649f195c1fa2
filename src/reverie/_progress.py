"""The one progress bar: a tqdm bar when enabled, a no-op otherwise (tqdm imported lazily)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


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

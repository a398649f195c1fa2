"""Benchmarks behind ``reverie bench NAME``.

Each module in this package that defines ``add_arguments(parser)`` and ``run(args) -> dict``
is a benchmark named after the module (underscores become dashes). ``run`` prints its table
and returns the JSON-serialisable result that :func:`reverie.bench.common.save_result` writes
under ``benchmarks/results/``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available() -> dict[str, ModuleType]:
    """Name -> module for every benchmark in this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[info.name.replace("_", "-")] = module
    return found

"""Shared helpers for benchmarks: machine description, result files, tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def machine() -> str:
    """One line naming the machine a benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    dev = "cpu"
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    cores = f"{os.cpu_count()} cores ({threads} torch threads)"
    return f"{cpu}, {cores}, device {dev}, torch {torch.__version__}"


def results_dir() -> Path:
    path = Path(os.environ.get("REVERIE_BENCH_DIR", "benchmarks/results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_result(name: str, result: dict[str, Any], out: str | None = None) -> Path:
    """Write ``result`` (plus machine and date) as JSON; written atomically."""
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **result,
    }
    path = Path(out) if out else results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; floats shown with 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start

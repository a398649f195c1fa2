"""Writing files so that an error never leaves a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "save_array", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside ``path`` (same suffix); when the block succeeds it is
    renamed onto ``path`` in one step, otherwise it is removed. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_array(x: Any, path: str | os.PathLike) -> Path:
    """Save a tensor atomically: ``.npy`` with NumPy, anything else with ``torch.save``."""
    import torch

    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".npy":
            import numpy as np

            np.save(tmp, x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
        else:
            torch.save(x.detach().cpu() if isinstance(x, torch.Tensor) else x, tmp)
    return Path(path)

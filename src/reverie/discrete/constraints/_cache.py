"""On-disk cache of token automata: one uncompressed ``.npz`` per (vocabulary, pattern).

The folder is ``$REVERIE_CACHE_DIR`` (default ``~/.cache/reverie/automata``; ``off`` or an
empty value disables the disk cache). A file is named by a SHA-256 of the format version,
outlines-core's version (it builds the byte DFA), the build method, the vocabulary's
fingerprint (every token's bytes, EOS and mask ids) and the pattern; the key is also stored
inside and checked on load. Writes go to a temporary file in the same folder, then
``os.replace`` (``reverie._io.atomic_path``): a reader sees the old file or the new one,
never a partial one, and two processes writing the same key write equal bytes, the last
rename winning, so no lock is needed. A file that cannot be read back as a consistent
automaton (truncated, corrupt, another format) is a miss: the automaton is rebuilt and the
file replaced. Only vocabularies of at least :data:`DISK_MIN_VOCAB` tokens go to disk (a
smaller automaton builds in milliseconds); the folder keeps the :data:`MAX_FILES` most
recently used files.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from reverie._io import atomic_path
from reverie.discrete.constraints._vocabulary import Vocabulary

__all__ = ["cache_dir", "cache_path", "clear_disk", "load", "save"]

FORMAT = 1  # bump when the stored arrays or the build's output change
DISK_MIN_VOCAB = 4096
MAX_FILES = 256


def cache_dir() -> Path | None:
    """The automata folder, or ``None`` when the disk cache is off."""
    env = os.environ.get("REVERIE_CACHE_DIR")
    if env is None:
        return Path.home() / ".cache" / "reverie" / "automata"
    if env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(env).expanduser()


@lru_cache(maxsize=1)
def _outlines_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outlines_core")
    except PackageNotFoundError:  # pragma: no cover - depends on the environment
        return "none"


def cache_key(pattern: str, vocab: Vocabulary, method: str) -> str:
    text = f"{FORMAT}\0{_outlines_version()}\0{method}\0{vocab.fingerprint}\0{pattern}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def cache_path(pattern: str, vocab: Vocabulary, method: str = "trie") -> Path | None:
    """Where the automaton of ``pattern`` over ``vocab`` is (or would be) stored."""
    folder = cache_dir()
    if folder is None or len(vocab) < DISK_MIN_VOCAB:
        return None
    return folder / f"{cache_key(pattern, vocab, method)}.npz"


def load(pattern: str, vocab: Vocabulary, method: str, decode: Callable[[Any], Any]) -> Any:
    """The cached automaton, ``decode``-d from the file's arrays
    (``TokenAutomaton.from_arrays``), or ``None`` (absent, unreadable or inconsistent)."""
    path = cache_path(pattern, vocab, method)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickle: it would run code
            key = bytes(data["key"]).decode()
            if key != cache_key(pattern, vocab, method):
                return None
            automaton = decode(data)
        if (automaton.vocab_size, automaton.eos_id, automaton.mask_id) != (
            len(vocab), vocab.eos_id, vocab.mask_id
        ):
            return None
    except Exception:  # noqa: BLE001 - any failure to read the file is a miss, rebuilt
        return None
    try:
        os.utime(path)  # recently used: kept by the pruning in save()
    except OSError:  # a read-only cache folder still serves its files
        pass
    return automaton


def save(arrays: dict[str, np.ndarray], pattern: str, vocab: Vocabulary, method: str) -> None:
    """Store an automaton's ``arrays`` (``TokenAutomaton.to_arrays``) atomically; a folder
    that cannot be written only warns."""
    path = cache_path(pattern, vocab, method)
    if path is None:
        return
    key = np.frombuffer(cache_key(pattern, vocab, method).encode(), dtype=np.uint8)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, key=key, **arrays)
        _prune(path.parent)
    except OSError as err:
        warnings.warn(f"could not write the automaton cache {path}: {err}", stacklevel=3)


def _prune(folder: Path) -> None:
    """Delete the least recently used files beyond :data:`MAX_FILES`."""
    files = list(folder.glob("*.npz"))
    if len(files) <= MAX_FILES:
        return
    times = []
    for f in files:
        try:
            times.append((f.stat().st_mtime, f))
        except OSError:  # removed by another process meanwhile
            continue
    for _, f in sorted(times)[: len(times) - MAX_FILES]:
        f.unlink(missing_ok=True)


def clear_disk() -> None:
    """Delete every cached automaton file."""
    folder = cache_dir()
    if folder is not None and folder.is_dir():
        for f in folder.glob("*.npz"):
            f.unlink(missing_ok=True)

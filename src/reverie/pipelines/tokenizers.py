"""CLIP tokenizers written from a vocabulary, for pipelines built offline (the bundled
``shapes`` model, tests, benchmarks): no download."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_clip_tokenizer"]


def write_clip_tokenizer(
    folder: str | Path, chars: Sequence[str], merges: Sequence[str] = (), max_length: int = 77
) -> Any:
    """A ``transformers.CLIPTokenizer`` over ``chars`` (each a token, and its end-of-word form
    ``c</w>``), the BPE ``merges`` (``"a b"`` -> token ``ab``) and CLIP's start and end tokens
    last; ``vocab.json`` and ``merges.txt`` are written to ``folder``."""
    import transformers

    folder = Path(folder)
    vocab = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("".join(f"{m}\n" for m in ["#version: 0.2", *merges]))
    return transformers.CLIPTokenizer(vocab=str(folder / "vocab.json"),
                                      merges=str(folder / "merges.txt"),
                                      model_max_length=max_length)

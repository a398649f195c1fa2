"""A character-level tokenizer for small bundled models (no dependencies, JSON-serialisable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CharTokenizer"]


class CharTokenizer:
    """Characters -> ids. Id 0 is the padding token ``pad`` (it fills the canvas after the
    text), ids ``1..K`` are ``chars`` and id ``K + 1`` is the mask token.

    ``decode`` drops padding and masks; ``encode`` refuses characters outside the alphabet.
    """

    def __init__(self, chars: str):
        if not isinstance(chars, str) or not chars:
            raise ValueError("chars must be a non-empty string")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat")
        self.chars = chars
        self.pad_token_id = 0
        self.mask_token_id = len(chars) + 1
        self._to_id = {c: i + 1 for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding and mask included."""
        return len(self.chars) + 2

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self._to_id})
        if bad:
            raise ValueError(f"characters {bad!r} are not in this model's alphabet {self.chars!r}")
        return [self._to_id[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        k = len(self.chars)
        return "".join(self.chars[i - 1] for i in ids if 1 <= i <= k)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        if data.get("type") != "char" or "chars" not in data:
            raise ValueError(f"not a character tokenizer description: {data!r}")
        return cls(data["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.chars)} chars)"

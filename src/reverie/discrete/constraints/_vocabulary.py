"""Token vocabularies for constrained decoding: the decoded bytes of every token id, plus the
ids of the end-of-sequence and mask tokens."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Vocabulary"]

# Vocabulary.from_tokenizer, memoised per tokenizer object (decoding 128k tokens and hashing
# them takes ~0.5 s): tokenizer -> {(arguments, number of tokens): Vocabulary}. Weak keys, so
# a tokenizer's entry goes with it; the token count catches tokens added later.
_FROM_TOKENIZER: weakref.WeakKeyDictionary[Any, dict[tuple, Vocabulary]] = (
    weakref.WeakKeyDictionary()
)


def _n_tokens(tokenizer: Any) -> int | None:
    if isinstance(getattr(tokenizer, "chars", None), str):
        return len(tokenizer.chars)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return len(tokenizer)
    if hasattr(tokenizer, "get_vocab_size"):
        return tokenizer.get_vocab_size(with_added_tokens=True)
    return None


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_LEVEL = _bytes_to_unicode()
# str.translate table: stand-in character -> the character of its byte (then latin-1 encodes
# it as that byte); characters below 256 that are not stand-ins map past 255 so that the
# encoding fails, as for any other foreign character.
_BYTE_LEVEL_TABLE = {c: 0x100 for c in range(256)}
_BYTE_LEVEL_TABLE.update({ord(ch): b for ch, b in _BYTE_LEVEL.items()})


def _decode_byte_level(token: str) -> bytes | None:
    try:
        return token.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
    except UnicodeEncodeError:  # a character outside the byte-level alphabet
        return None


def _decode_sentencepiece(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("\u2581", " ").encode("utf-8")


class Vocabulary:
    """What a constraint needs to know about a tokenizer.

    ``tokens[i]`` is the text (``str``, encoded as UTF-8) or raw ``bytes`` that token ``i``
    stands for, or ``None`` for a special token that a constrained output may never contain
    (padding, BOS, chat markers, the mask itself). ``eos_id`` is the end-of-sequence token: a
    diffusion LM fills a fixed-length canvas, so a string shorter than the canvas is followed
    by EOS tokens up to the end. ``mask_id`` is the absorbing mask token of the diffusion
    process. Both are required: without them a constraint cannot say where a string ends nor
    which positions are still undecided.
    """

    def __init__(
        self, tokens: Sequence[str | bytes | None], eos_id: int | None, mask_id: int | None
    ) -> None:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
            raise TypeError(
                f"tokens must be a sequence of str | bytes | None, got {type(tokens).__name__}"
            )
        out: list[bytes | None] = []
        for i, tok in enumerate(tokens):
            if tok is None or isinstance(tok, bytes):
                out.append(tok)
            elif isinstance(tok, str):
                out.append(tok.encode("utf-8"))
            else:
                raise TypeError(f"token {i} must be str, bytes or None, got {type(tok).__name__}")
        size = len(out)
        for name, value in (("eos_id", eos_id), ("mask_id", mask_id)):
            if value is None:
                raise ValueError(
                    f"the vocabulary has no {name[:-3]} token: constrained decoding of a "
                    f"diffusion LM needs both an EOS id (strings shorter than the canvas are "
                    f"padded with EOS) and a mask id; pass {name}=..."
                )
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            # the mask may sit just past the logits (MD4 appends it as id V)
            top = size + 1 if name == "mask_id" else size
            if not 0 <= value < top:
                raise ValueError(f"{name}={value} is outside the vocabulary of {size} tokens")
        if eos_id == mask_id:
            raise ValueError(f"eos_id and mask_id must differ, both are {eos_id}")
        out[eos_id] = None
        if mask_id < size:
            out[mask_id] = None
        self.tokens: tuple[bytes | None, ...] = tuple(out)
        self.eos_id = int(eos_id)
        self.mask_id = int(mask_id)
        h = hashlib.sha256()
        h.update(f"{self.eos_id},{self.mask_id},{size};".encode())
        h.update(b"".join(b"\x00N" if tok is None else len(tok).to_bytes(4, "little") + tok
                          for tok in self.tokens))
        self.fingerprint = h.hexdigest()

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (
            f"Vocabulary(size={len(self)}, eos_id={self.eos_id}, mask_id={self.mask_id}, "
            f"fingerprint={self.fingerprint[:12]})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def decode_bytes(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> bytes:
        """The bytes of ``ids``; stops at the first EOS; mask and special tokens are skipped."""
        parts = []
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            tok = self.tokens[i] if 0 <= i < len(self.tokens) else None
            if tok is not None:
                parts.append(tok)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """The text of ``ids`` (UTF-8, invalid bytes replaced); stops at the first EOS."""
        return self.decode_bytes(ids, stop_at_eos=stop_at_eos).decode("utf-8", errors="replace")

    @classmethod
    def coerce(cls, vocabulary: Any) -> Vocabulary:
        """A :class:`Vocabulary` from itself, a token denoiser with a ``tokenizer`` (its
        ``mask_id``, ``vocab_size`` and ``pad_id`` as EOS), a ``transformers`` / ``tokenizers``
        tokenizer or a character tokenizer (see :meth:`from_tokenizer`), or any object with a
        ``vocabulary`` attribute holding a :class:`Vocabulary`."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        inner = getattr(vocabulary, "vocabulary", None)
        if isinstance(inner, Vocabulary):
            return inner
        tok = getattr(vocabulary, "tokenizer", None)
        if tok is not None and hasattr(vocabulary, "mask_id"):
            # a token denoiser (reverie.discrete.TokenDenoiser): its tokenizer, its mask id, the
            # width of its logits, and its padding token as EOS when it has one
            eos = getattr(vocabulary, "pad_id", None)
            if eos is None:
                eos = getattr(tok, "eos_token_id", None)
            return cls.from_tokenizer(tok, eos_id=eos, mask_id=vocabulary.mask_id,
                                      size=getattr(vocabulary, "vocab_size", None))
        if (
            hasattr(vocabulary, "convert_ids_to_tokens")
            or hasattr(vocabulary, "id_to_token")
            or hasattr(vocabulary, "chars")
        ):
            return cls.from_tokenizer(vocabulary)
        raise TypeError(
            "expected a reverie Vocabulary, a token denoiser with a tokenizer, a transformers "
            f"tokenizer, a tokenizers.Tokenizer or a character tokenizer, got "
            f"{type(vocabulary).__name__}"
        )

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        eos_id: int | None = None,
        mask_id: int | None = None,
        size: int | None = None,
        decoding: str | None = None,
    ) -> Vocabulary:
        """Decode every token of a ``transformers``, ``tokenizers`` or character tokenizer
        (``chars``, ``pad_token_id``, ``mask_token_id``: id 0 pads, ids ``1..K`` are the
        characters) to bytes.

        ``decoding`` is ``"byte_level"`` (GPT-2 / Llama-3 / Qwen style: each character stands
        for one byte), ``"sentencepiece"`` (``▁`` is a space, ``<0xNN>`` byte fallback) or
        ``"plain"`` (the token text as is); by default it is read from the tokenizer's decoder,
        as outlines-core's vocabulary processor does. Special tokens become ``None``. ``size``
        pads the vocabulary with ``None`` up to the model's (often larger) logits width.
        The result is memoised per tokenizer object and arguments (while the tokenizer lives
        and its number of tokens is unchanged).
        """
        key = (eos_id, mask_id, size, decoding, _n_tokens(tokenizer))
        try:
            memo = _FROM_TOKENIZER.setdefault(tokenizer, {})
        except TypeError:  # not weakly referenceable or not hashable: no memo
            memo = {}
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = cls._from_tokenizer(tokenizer, eos_id=eos_id, mask_id=mask_id,
                                                  size=size, decoding=decoding)
        return hit

    @classmethod
    def _from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        eos_id: int | None,
        mask_id: int | None,
        size: int | None,
        decoding: str | None,
    ) -> Vocabulary:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if isinstance(getattr(tokenizer, "chars", None), str):
            # reverie's CharTokenizer: id 0 pads the canvas (our EOS), ids 1..K the characters
            chars = tokenizer.chars
            pieces = [None, *chars, None]
            special = {0, len(chars) + 1}
            decoding = decoding or "plain"
            if eos_id is None:
                eos_id = getattr(tokenizer, "pad_token_id", None)
            if mask_id is None:
                mask_id = getattr(tokenizer, "mask_token_id", None)
        elif hasattr(tokenizer, "convert_ids_to_tokens"):
            n = len(tokenizer)
            pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            if eos_id is None:
                eos_id = getattr(tokenizer, "eos_token_id", None)
            if mask_id is None:
                mask_id = getattr(tokenizer, "mask_token_id", None)
        elif hasattr(tokenizer, "id_to_token"):
            n = tokenizer.get_vocab_size(with_added_tokens=True)
            pieces = [tokenizer.id_to_token(i) for i in range(n)]
            special = {
                i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special
            }
        else:
            raise TypeError(
                f"expected a transformers or tokenizers tokenizer, got {type(tokenizer).__name__}"
            )
        if decoding is None:
            decoder = repr(getattr(backend, "decoder", None))
            if "ByteLevel" in decoder:
                decoding = "byte_level"
            elif "ByteFallback" in decoder or "Metaspace" in decoder or "\u2581" in decoder:
                decoding = "sentencepiece"
            else:
                decoding = "plain"
        if decoding not in ("byte_level", "sentencepiece", "plain"):
            raise ValueError(
                f"decoding must be one of 'byte_level', 'sentencepiece', 'plain', got {decoding!r}"
            )
        tokens: list[str | bytes | None] = []
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                tokens.append(None)
            elif decoding == "byte_level":
                tokens.append(_decode_byte_level(piece))
            elif decoding == "sentencepiece":
                tokens.append(_decode_sentencepiece(piece))
            else:
                tokens.append(piece)
        if size is not None:
            if size < len(tokens):
                raise ValueError(f"size={size} is smaller than the tokenizer's {len(tokens)}")
            tokens += [None] * (size - len(tokens))
        return cls(tokens, eos_id=eos_id, mask_id=mask_id)

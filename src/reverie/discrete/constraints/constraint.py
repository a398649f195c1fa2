"""Constraint objects (``Regex``, ``JsonSchema``) and the semi-autoregressive block decoder
that carries the automaton state from one block of the canvas to the next."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._checks import positive_int
from reverie.discrete.constraints.automaton import (
    TokenAutomaton,
    byte_dfa,
    schema_to_regex,
)
from reverie.discrete.constraints.decode import (
    Generators,
    best_block,
    per_token_block,
    sample_block,
)
from reverie.discrete.constraints.scaffold import Scaffold, _is_object, json_scaffold, single_slot

__all__ = ["DECODERS", "BlockDecoder", "Constraint", "JsonSchema", "Regex"]

#: Names of the block decoders :class:`BlockDecoder` knows.
DECODERS = ("dingo", "per_token")


class Constraint:
    """Base of the constraints that ``generate(constraint=...)`` accepts: a regular
    language over text, compiled per vocabulary into a :class:`TokenAutomaton`."""

    regex: str

    def __init__(self, regex: str) -> None:
        if not isinstance(regex, str):
            raise TypeError(f"the pattern must be a str, got {type(regex).__name__}")
        self.regex = regex
        self._bytes_dfa = byte_dfa(regex)  # validates the pattern now, before any model call

    def automaton(self, vocabulary: Any) -> TokenAutomaton:
        """The token automaton over ``vocabulary`` (built once, cached)."""
        return TokenAutomaton.from_regex(self.regex, vocabulary)

    def matches(self, text: str | bytes) -> bool:
        """Whether ``text`` (as UTF-8 bytes) fully matches the pattern, with the same regex
        engine (outlines-core / Rust ``regex-automata``) that builds the automaton."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        trans, start, finals = self._bytes_dfa
        q = start
        for b in data:
            q = trans.get(q, {}).get(b)
            if q is None:
                return False
        return q in finals

    def layout(self, vocabulary: Any, length: int, *,
               encode: Callable[[str], Sequence[int]] | None = None) -> Scaffold:
        """How the constraint occupies ``length`` generated positions: here one slot over all
        of them (no skeleton); :class:`JsonSchema` with ``scaffold=True`` overrides it.
        Builds the automaton and checks that the language fits, before any model call."""
        return single_slot(self.automaton(vocabulary), length)

    def decoder(
        self,
        vocabulary: Any,
        length: int,
        n: int = 1,
        *,
        method: str = "dingo",
        device: torch.device | str = "cpu",
    ) -> BlockDecoder:
        """A :class:`BlockDecoder` for ``n`` canvases of ``length`` generated tokens. Builds
        the automaton and checks that the language fits ``length`` tokens, so errors come
        before any model call."""
        return BlockDecoder(self.automaton(vocabulary), length, n, method=method, device=device)


class Regex(Constraint):
    """Outputs must fully match a regular expression (Rust ``regex`` syntax, as in outlines)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class JsonSchema(Constraint):
    """Outputs must be JSON text valid under a JSON schema (a ``dict`` or JSON text), through
    reverie's exact schema-to-regex translation (:mod:`reverie.discrete.constraints.schema`;
    a keyword it cannot express is refused with its path, never loosened). ``whitespace_pattern``
    is the regex allowed between JSON tokens (default: none, compact JSON).

    ``scaffold=True`` (S3, Xiong et al. 2025, arXiv:2507.04504) writes the schema's skeleton
    (braces, keys, colons, commas, the quotes of plain strings) into the canvas before
    decoding and decodes only the value slots, each under its sub-schema; unused slot
    positions hold the EOS / padding token, which the model's ``decode`` drops. The schema
    must then be an object with ``properties``. ``budget`` sets the tokens per value slot
    (see :func:`~reverie.discrete.constraints.scaffold.json_scaffold`; default: share the
    canvas).
    """

    def __init__(
        self,
        schema: str | dict[str, Any],
        *,
        whitespace_pattern: str | None = None,
        scaffold: bool = False,
        budget: int | Mapping[str, int] | None = None,
    ) -> None:
        import json

        regex = schema_to_regex(schema, whitespace_pattern=whitespace_pattern)
        self.schema = json.loads(schema) if isinstance(schema, str) else schema
        self.whitespace_pattern = whitespace_pattern
        if not isinstance(scaffold, bool):
            raise TypeError(f"scaffold must be True or False, got {scaffold!r}")
        if scaffold and not _is_object(self.schema):
            raise ValueError(
                "scaffold=True needs an object schema with 'properties' (plain keywords only: "
                "type, properties, required, additionalProperties, $defs, title, description)"
            )
        if budget is not None and not scaffold:
            raise ValueError("budget= only applies with scaffold=True")
        self.scaffold = scaffold
        self.budget = budget
        super().__init__(regex)

    def layout(self, vocabulary: Any, length: int, *,
               encode: Callable[[str], Sequence[int]] | None = None) -> Scaffold:
        """With ``scaffold=True``, the schema's skeleton and value slots over ``length``
        positions (:func:`~reverie.discrete.constraints.scaffold.json_scaffold`); otherwise
        one slot over the whole canvas."""
        if not self.scaffold:
            return super().layout(vocabulary, length, encode=encode)
        return json_scaffold(self.schema, vocabulary, length, budget=self.budget,
                             whitespace_pattern=self.whitespace_pattern, encode=encode,
                             full_regex=self.regex)

    def __repr__(self) -> str:
        extra = f", scaffold=True, budget={self.budget!r}" if self.scaffold else ""
        return f"JsonSchema({self.schema!r}{extra})"


class BlockDecoder:
    """Semi-autoregressive constrained decoding (DINGO App. D, Alg. 5): the canvas of
    ``length`` generated tokens is decoded block after block, and the automaton state reached
    at the end of a block is the start state of the next one.

    Each denoising step of the current block calls :meth:`decode` with the model's
    log-probabilities for the block and the positions that stay masked after the step; when
    the block is fully decoded, :meth:`commit` moves the carried state past it. Every block
    must end in a state from which the rest of the canvas can still be completed (the
    remaining length is passed to the block decoders), so the last block ends in a final
    state and every finished row is accepted by the automaton.

    ``method`` is ``"dingo"`` (:func:`best_block` at temperature 0, :func:`sample_block`
    otherwise) or ``"per_token"`` (the :func:`per_token_block` baseline). Rows that the
    baseline drove into a dead end continue unconstrained (state -1).
    """

    def __init__(
        self,
        automaton: TokenAutomaton,
        length: int,
        n: int = 1,
        *,
        method: str = "dingo",
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(automaton, TokenAutomaton):
            raise TypeError(f"automaton must be a TokenAutomaton, got {type(automaton).__name__}")
        if method not in DECODERS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(DECODERS)}")
        positive_int("length", length)
        positive_int("n", n)
        automaton.check_length(length)
        self.automaton = automaton
        self.length = length
        self.method = method
        self.position = 0
        self.state = torch.full((n,), automaton.start, dtype=torch.long, device=device)

    @property
    def remaining(self) -> int:
        """Generated tokens not yet committed."""
        return self.length - self.position

    def decode(
        self,
        logprobs: Tensor,
        masked: Tensor | None = None,
        *,
        current: Tensor | None = None,
        temperature: float = 0.0,
        generator: Generators = None,
    ) -> Tensor:
        """Tokens ``[n, Lb]`` for the current block (starting at :attr:`position`).

        Args:
            logprobs: ``[n, Lb, V]`` model log-probabilities (or logits) for the block.
            masked: ``bool[n, Lb]`` positions that stay masked after this step (returned as
                the mask token).
            current: the block's tokens so far, ``[n, Lb]``; positions that are not the mask
                token are kept as they are (their scores are made one-hot).
            temperature: 0 for the most probable valid block, > 0 to sample from
                ``softmax(logprobs / temperature)`` restricted to valid strings.
            generator: one generator or one per row.
        """
        if logprobs.dim() != 3 or logprobs.shape[0] != self.state.shape[0]:
            raise ValueError(
                f"logprobs must be [n={self.state.shape[0]}, block, V], got {tuple(logprobs.shape)}"
            )
        width = logprobs.shape[1]
        after = self.remaining - width
        if after < 0:
            raise ValueError(
                f"a block of {width} tokens overruns the canvas ({self.remaining} left)"
            )
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        lp = logprobs.double() if temperature == 0 else logprobs.double() / temperature
        if current is not None:
            lp = _force(lp, current, self.automaton.mask_id)
        state = self.state.to(logprobs.device)
        alive = state >= 0
        out = torch.empty(lp.shape[:2], dtype=torch.long, device=lp.device)
        if (~alive).any():  # baseline rows past a dead end: unconstrained choice
            free = lp[~alive]
            if temperature > 0:
                from reverie.discrete.constraints.decode import _gumbel

                free = free + _gumbel(free.shape, _rows(generator, ~alive), lp.device)
            out[~alive] = free.argmax(-1)
            if masked is not None and self.automaton.mask_id is not None:
                out[~alive] = torch.where(masked[~alive], self.automaton.mask_id, out[~alive])
        if alive.any():
            rows = alive.nonzero().flatten()
            args = (lp[rows], self.automaton, state[rows], None if masked is None else masked[rows])
            gen = _rows(generator, alive)
            if self.method == "dingo":
                if temperature == 0:
                    tokens, _, _ = best_block(*args, remaining=after)
                else:
                    tokens, _, _ = sample_block(*args, remaining=after, generator=gen)
            else:
                tokens, _, _ = per_token_block(*args, sample=temperature > 0, generator=gen)
            out[rows] = tokens
        return out

    def commit(self, tokens: Tensor) -> Tensor:
        """Advance the carried state over a fully decoded block ``tokens[n, Lb]``; returns
        the new states (-1 for rows the automaton rejects)."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[0] != self.state.shape[0]:
            raise ValueError(
                f"tokens must be [n={self.state.shape[0]}, block], got {tuple(tokens.shape)}"
            )
        if tokens.shape[1] > self.remaining:
            raise ValueError(
                f"a block of {tokens.shape[1]} tokens overruns the canvas "
                f"({self.remaining} left)"
            )
        mask_id = self.automaton.mask_id
        if mask_id is not None and bool((tokens == mask_id).any()):
            raise ValueError("commit() needs a fully decoded block; it still holds mask tokens")
        self.state = self.automaton.advance(self.state, tokens.to(self.state.device))
        self.position += tokens.shape[1]
        return self.state

    def accepted(self) -> Tensor:
        """``bool[n]``: rows whose committed tokens end in a final state."""
        finals = torch.tensor(
            sorted(self.automaton.finals), dtype=torch.long, device=self.state.device
        )
        return (self.state[:, None] == finals[None]).any(-1)


def _force(lp: Tensor, current: Tensor, mask_id: int | None) -> Tensor:
    """Scores one-hot at already decoded positions (0 at the token, -inf elsewhere)."""
    if mask_id is None:
        raise ValueError("current= needs an automaton with a mask id (build it from a vocabulary)")
    current = current.to(lp.device)
    if current.shape != lp.shape[:2]:
        raise ValueError(f"current must be {tuple(lp.shape[:2])}, got {tuple(current.shape)}")
    fixed = current != mask_id
    at = torch.where(fixed, current, 0).clamp(0, lp.shape[-1] - 1)
    onehot = torch.full_like(lp, float("-inf")).scatter_(2, at[..., None], 0.0)
    return torch.where(fixed[..., None], onehot, lp)


def _rows(generator: Generators, keep: Tensor) -> Generators:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    return [gens[i] for i in keep.nonzero().flatten().tolist()]

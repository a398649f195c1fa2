"""Constrained decoding for masked-diffusion language models.

Outputs that provably match a regular expression or a JSON schema, with the most probable
valid block under the model: DINGO (Suresh, Banerjee, Ugare, Misailovic, Singh 2025,
arXiv:2505.23061), its sampling counterpart, and the per-token masking baseline.

* :class:`Vocabulary`: token ids -> bytes, plus the EOS and mask ids.
* :class:`TokenAutomaton`: the token-level DFA of a pattern over a vocabulary
  (``from_regex`` / ``from_schema``: a trie walk of the vocabulary over the pattern's byte DFA
  from outlines-core's regex engine; cached in memory and on disk).
* :func:`best_block` (DINGO dynamic program), :func:`sample_block` (forward filtering,
  backward sampling), :func:`per_token_block` (baseline): decode one block.
* :class:`Regex`, :class:`JsonSchema`: constraint objects; ``.decoder(...)`` gives a
  :class:`BlockDecoder` that carries the automaton state across semi-autoregressive blocks.
  ``JsonSchema(..., scaffold=True)`` lays the schema's skeleton into the canvas and decodes
  only the values (S3, Xiong et al. 2025): :func:`json_scaffold`, :class:`Scaffold`.
* :func:`prepare_constraint`, :func:`constrain_sampler`: how ``generate(constraint=...)``
  restricts any masked-diffusion sampler.
* :class:`Grammar`: a context-free grammar (Lark EBNF); its :class:`GrammarChart` (boolean
  inside-outside over the canvas) gives, for every masked position, the tokens that keep the
  canvas completable: sound decoding beyond regular languages (not DINGO-optimal).
"""

from reverie.discrete.constraints._vocabulary import Vocabulary
from reverie.discrete.constraints.automaton import TokenAutomaton, clear_cache, schema_to_regex
from reverie.discrete.constraints.constraint import (
    DECODERS,
    BlockDecoder,
    Constraint,
    JsonSchema,
    Regex,
)
from reverie.discrete.constraints.decode import (
    InfeasibleConstraint,
    best_block,
    per_token_block,
    sample_block,
)
from reverie.discrete.constraints.grammar import Grammar, GrammarChart
from reverie.discrete.constraints.sampler import constrain_sampler, prepare_constraint
from reverie.discrete.constraints.scaffold import Scaffold, Slot, json_scaffold
from reverie.discrete.constraints.schema import UnsupportedSchema

__all__ = [
    "DECODERS",
    "BlockDecoder",
    "Grammar",
    "GrammarChart",
    "Constraint",
    "InfeasibleConstraint",
    "JsonSchema",
    "Regex",
    "Scaffold",
    "Slot",
    "TokenAutomaton",
    "UnsupportedSchema",
    "Vocabulary",
    "best_block",
    "clear_cache",
    "constrain_sampler",
    "json_scaffold",
    "per_token_block",
    "prepare_constraint",
    "sample_block",
    "schema_to_regex",
]

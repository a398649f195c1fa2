"""Context-free grammar constraints for masked-diffusion decoding.

A diffusion LM fills its canvas in any order, so a left-to-right parser cannot tell whether a
partly filled canvas can still be completed. The question is the *infilling* problem: given the
fixed tokens and the masked holes of the generated part (``n`` positions, each hole exactly one
token, the text followed by end tokens up to the canvas end), is there a completion in the
language? For a context-free grammar it is decidable by the CYK recognizer run over the canvas
with every hole standing for any token, and the boolean **inside-outside** pass answers more:
for every hole at once, exactly which tokens keep the canvas completable (Bar-Hillel's
intersection of the grammar with the canvas's language, evaluated on the chart). This module
builds that chart in O(n^3 |rules|) tensor operations per pass.

What is exact and what is not:

* **Sound and complete for the canvas**: a token is allowed iff some completion of the whole
  canvas *of exactly its length* uses it (brute force equality on small grammars in the tests),
  so decoding never produces an invalid output and never paints itself into a corner. Unlike
  the unbounded-hole abstraction of Mündler et al. (arXiv 2508.10111), holes have their true
  length, so a canvas that cannot finish in the positions left is refused too.
* **Not optimal**: tokens are committed one at a time (in the sampler's confidence order), each
  drawn from the model restricted to the allowed set -- DINGO's most probable valid block
  (:mod:`reverie.discrete.constraints.decode`) is exact for *regular* languages only.
* **Character-level tokens**: the grammar is over bytes; a token stands for one byte (or is
  the end token). Multi-byte tokens are never allowed (sound, but a BPE model would be
  restricted to its one-byte tokens); :class:`Grammar` says how many tokens that excludes.

Grammars are written in Lark's EBNF (``rule: a b | c``, ``x*``, ``x+``, ``[x]``, string and
regex terminals); Lark checks them (undefined rules and terminals are an error) and compiles the
EBNF operators to plain rules, which are converted here to Chomsky normal form. Left recursion
is fine (CYK is bottom up). ``%ignore`` is refused: write optional whitespace into the rules.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Grammar", "GrammarChart", "grammar_plan", "grammar_sampler"]

#: Terminal ids: bytes 0..255, then the end token.
END = 256

Symbol = str | int  # a nonterminal name or a terminal id


@dataclasses.dataclass(frozen=True)
class CNF:
    """A grammar in Chomsky normal form: ``binary`` rules ``A -> B C`` and ``leaves``
    ``A -> t`` (terminal ids), nonterminals numbered ``0..len(names)-1``, ``top`` the start."""

    names: tuple[str, ...]
    binary: tuple[tuple[int, int, int], ...]
    leaves: tuple[tuple[int, int], ...]
    top: int


def to_cnf(rules: list[tuple[str, list[Symbol]]], top: str) -> CNF:
    """Chomsky normal form of ``rules`` (``(head, body)``; body symbols are nonterminal names
    or terminal ids): terminals inside longer bodies get their own nonterminal, long bodies
    are binarised, empty and unit rules are eliminated, and symbols that derive nothing or are
    unreachable from ``top`` are dropped. The language is unchanged except the empty string."""
    fresh = iter(range(10**9))
    work: list[tuple[str, tuple[Symbol, ...]]] = []
    for head, body in rules:
        body = tuple(body)
        if len(body) >= 2:  # TERM: a terminal inside a longer body gets a nonterminal
            work += [(f"$byte{s}", (s,)) for s in body if isinstance(s, int)]
            body = tuple(f"$byte{s}" if isinstance(s, int) else s for s in body)
        while len(body) > 2:  # BIN: A -> X Y Z...  =>  A -> X A'; A' -> Y Z...
            rest = f"$b{next(fresh)}"
            work.append((head, (body[0], rest)))
            head, body = rest, body[1:]
        work.append((head, body))
    work = list(dict.fromkeys(work))
    # DEL: drop empty bodies, adding the variants without nullable symbols
    nullable = _heads_where(work, lambda s, known: isinstance(s, str) and s in known)
    out = set()
    for head, body in work:
        if len(body) == 2:
            b, c = body
            out.add((head, body))
            if isinstance(c, str) and c in nullable:
                out.add((head, (b,)))
            if isinstance(b, str) and b in nullable:
                out.add((head, (c,)))
        elif len(body) == 1:
            out.add((head, body))
    # UNIT: A -> B (B a nonterminal) replaced by B's other rules, through chains of them
    units: dict[str, set[str]] = defaultdict(set)
    for head, body in out:
        if len(body) == 1 and isinstance(body[0], str):
            units[head].add(body[0])
    heads = {h for h, _ in out} | {top}
    closure = {}
    for a in heads:
        seen, todo = {a}, [a]
        while todo:
            for b in units.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        closure[a] = seen
    proper = [(h, b) for h, b in out if not (len(b) == 1 and isinstance(b[0], str))]
    by_head: dict[str, list[tuple[Symbol, ...]]] = defaultdict(list)
    for h, b in proper:
        by_head[h].append(b)
    final = {(a, body) for a in heads for b in closure[a] for body in by_head.get(b, ())}
    # keep generating symbols reachable from the top
    gen = _heads_where(final, lambda s, known: isinstance(s, int) or s in known)
    final = {(h, b) for h, b in final
             if h in gen and all(isinstance(s, int) or s in gen for s in b)}
    reach, todo = {top}, [top]
    while todo:
        h = todo.pop()
        for hh, b in final:
            if hh == h:
                for s in b:
                    if isinstance(s, str) and s not in reach:
                        reach.add(s)
                        todo.append(s)
    final = {(h, b) for h, b in final if h in reach}
    names = sorted({h for h, _ in final} | {top})
    idx = {name: i for i, name in enumerate(names)}
    binary = tuple(sorted((idx[h], idx[b[0]], idx[b[1]]) for h, b in final if len(b) == 2))
    leaves = tuple(sorted((idx[h], b[0]) for h, b in final if len(b) == 1))
    return CNF(tuple(names), binary, leaves, idx[top])


def _heads_where(rules: Any, holds: Callable[[Symbol, set[str]], bool]) -> set[str]:
    """The smallest set of heads that have a body whose every symbol ``holds`` (given the set
    found so far): the nullable symbols, or the generating ones."""
    known: set[str] = set()
    changed = True
    while changed:
        changed = False
        for head, body in rules:
            if head not in known and all(holds(s, known) for s in body):
                known.add(head)
                changed = True
    return known


def _terminal_rules(name: str, pattern: Any) -> list[tuple[str, list[Symbol]]]:
    """Rules deriving the bytes of one Lark terminal: a string, or a regex's byte DFA as a
    right-linear grammar (one nonterminal per state, one per (state, next state) pair for the
    byte class between them)."""
    from reverie.discrete.constraints.automaton import byte_dfa

    kind = type(pattern).__name__
    flags = set(pattern.flags)
    if flags - {"i"}:
        raise ValueError(f"terminal {name}: regex flags {sorted(flags)} are not supported")
    if kind == "PatternStr" and not flags:
        return [(name, list(pattern.value.encode("utf-8")))]
    regex = pattern.to_regexp()
    trans, start, finals = byte_dfa(("(?i)" if "i" in flags else "") + regex)
    out: list[tuple[str, list[Symbol]]] = [(name, [f"{name}:{start}"])]
    for q, edges in trans.items():
        targets: dict[int, list[int]] = defaultdict(list)
        for byte, q2 in edges.items():
            targets[q2].append(byte)
        for q2, byts in targets.items():
            cls = f"{name}:{q}>{q2}"
            out += [(cls, [b]) for b in byts]
            out.append((f"{name}:{q}", [cls, f"{name}:{q2}"]))
    out += [(f"{name}:{q}", []) for q in finals]
    return out


class Grammar:
    """A context-free grammar constraint for :func:`reverie.discrete.generate`
    (``constraint=Grammar(text)``): the generated text must be a sentence of the grammar
    (``start`` rule), followed by end tokens up to the canvas end.

    ``text`` -- Lark EBNF (see the module notes). Errors in the grammar (syntax, an undefined
    rule or terminal, ``%ignore``, unsupported regex flags) are a ``ValueError`` here."""

    def __init__(self, text: str, start: str = "start") -> None:
        try:
            from lark import Lark
            from lark.exceptions import LarkError
        except ImportError as err:  # pragma: no cover - lark ships with the [all] extra
            raise ImportError("grammar constraints need lark: pip install lark") from err
        if not isinstance(text, str):
            raise TypeError(f"the grammar must be a str, got {type(text).__name__}")
        try:
            self._lark = Lark(text, start=start, parser="earley", lexer="dynamic_complete",
                              keep_all_tokens=True)
        except LarkError as err:
            raise ValueError(f"invalid grammar: {str(err).strip()}") from None
        if self._lark.lexer_conf.ignore:
            raise ValueError(
                f"%ignore {', '.join(self._lark.lexer_conf.ignore)} is not supported: write "
                "optional whitespace into the rules instead"
            )
        self.text, self.start = text, start
        rules: list[tuple[str, list[Symbol]]] = [
            (r.origin.name, [s.name for s in r.expansion]) for r in self._lark.rules
        ]
        for t in self._lark.terminals:
            rules += _terminal_rules(t.name, t.pattern)
        # the top: the sentence, then end tokens up to the canvas end
        rules += [("$top", [start]), ("$top", [start, "$end"]), ("$end", [END]),
                  ("$end", [END, "$end"])]
        self.cnf = to_cnf(rules, "$top")
        self._charts: dict[Any, GrammarChart] = {}

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a sentence of the grammar (Lark's Earley parser: an independent
        check of what the chart decides)."""
        from lark.exceptions import LarkError

        try:
            self._lark.parse(text)
            return True
        except LarkError:
            return False

    def chart(self, vocabulary: Any) -> GrammarChart:
        """The grammar's chart over a vocabulary (a :class:`Vocabulary`, a tokenizer or a
        model with one), built once per vocabulary."""
        from reverie.discrete.constraints._vocabulary import Vocabulary

        vocab = Vocabulary.coerce(vocabulary)
        if vocab not in self._charts:
            self._charts[vocab] = GrammarChart(self.cnf, vocab)
        return self._charts[vocab]

    def check_length(self, vocabulary: Any, length: int) -> GrammarChart:
        """The chart over ``vocabulary``, after checking that some sentence (then end tokens)
        fills ``length`` generated positions; ``ValueError`` otherwise."""
        chart = self.chart(vocabulary)
        if not bool(chart.completable(torch.full((1, length), chart.mask_id))[0]):
            raise ValueError(f"the grammar has no sentence that fits {length} tokens")
        return chart

    def __repr__(self) -> str:
        return (f"Grammar(start={self.start!r}, {len(self.cnf.names)} nonterminals, "
                f"{len(self.cnf.binary)} binary rules)")


class GrammarChart:
    """The boolean inside-outside chart of a :class:`CNF` grammar over a vocabulary: which
    tokens keep a partly masked canvas completable (module notes). Tensors are float 0/1."""

    def __init__(self, cnf: CNF, vocabulary: Any) -> None:
        self.vocabulary = vocabulary
        self.mask_id = vocabulary.mask_id
        v, n_nt = len(vocabulary), len(cnf.names)
        # the terminal each token stands for: its byte, END, or none (never allowed)
        term = torch.full((v,), -1, dtype=torch.long)
        for i, tok in enumerate(vocabulary.tokens):
            if i == vocabulary.eos_id:
                term[i] = END
            elif tok is not None and len(tok) == 1 and i != self.mask_id:
                term[i] = tok[0]
        self.multibyte = sum(1 for t in vocabulary.tokens if t is not None and len(t) > 1)
        leaf = torch.zeros(n_nt, END + 1)
        for a, t in cnf.leaves:
            leaf[a, t] = 1.0
        usable = term >= 0
        #: ``emit[A, v]``: nonterminal A derives token v
        self.emit = torch.where(usable[None, :], leaf[:, term.clamp_min(0)], 0.0)
        self.usable = usable.float()  # what a hole may hold
        rules = torch.tensor(cnf.binary, dtype=torch.long).reshape(-1, 3)
        self.head, self.left, self.right = rules.unbind(1)
        one_hot = torch.eye(n_nt)
        self.head_of, self.left_of, self.right_of = (one_hot[self.head], one_hot[self.left],
                                                     one_hot[self.right])
        self.top = cnf.top

    def _leaves(self, x: Tensor) -> Tensor:
        """``[B, n, V]``: the tokens each position may hold (its own, or any at a hole)."""
        fixed = torch.nn.functional.one_hot(x.clamp(0, len(self.usable) - 1),
                                            len(self.usable)).float()
        return torch.where((x == self.mask_id)[..., None], self.usable, fixed * self.usable)

    def inside(self, x: Tensor) -> list[Tensor]:
        """``I[d][b, i, A]`` = 1 iff A derives some filling of span ``[i, i + d)`` of row b
        (``I[0]`` unused); see :meth:`_inside`."""
        return self._inside(x)[0]

    def _inside(self, x: Tensor) -> tuple[list[Tensor], list[Any], list[Any]]:
        """``I[d][b, i, A]`` = 1 iff A derives some filling of span ``[i, i + d)`` of row b
        (``I[0]`` unused). Spans are stored by length, so the children of every span of one
        length are slices: ``[i, i + k)`` is ``I[k][:, i]``, ``[i + k, i + d)`` is
        ``I[d - k][:, i + k]``."""
        bsz, n = x.shape
        chart = [torch.zeros(0), (self._leaves(x) @ self.emit.T).clamp(max=1.0)]
        lhs, rhs = [None, chart[1][..., self.left]], [None, chart[1][..., self.right]]
        for d in range(2, n + 1):
            s = n - d + 1
            acc = torch.zeros(bsz, s, len(self.head))
            for k in range(1, d):  # A -> B C over [i, i + k) and [i + k, i + d)
                acc.addcmul_(lhs[k][:, :s], rhs[d - k][:, k : k + s])
            chart.append((acc @ self.head_of).clamp(max=1.0))
            lhs.append(chart[d][..., self.left])
            rhs.append(chart[d][..., self.right])
        return chart, lhs, rhs  # and each length's values at the rules' left / right children

    def allowed(self, x: Tensor) -> Tensor:
        """``[B, n, V]`` bool: token v may stand at position i of row b (a hole, or the token
        already there) in some completion of the whole row in the language. All false for a
        row that cannot be completed."""
        x = torch.as_tensor(x).long()
        bsz, n = x.shape
        _, lhs, rhs = self._inside(x)
        r = len(self.head)
        # outside, accumulated per rule: as the left child (B) and as the right child (C)
        as_left = [torch.zeros(bsz, n - d + 1, r) for d in range(n + 1)]
        as_right = [torch.zeros(bsz, n - d + 1, r) for d in range(n + 1)]
        for d in range(n, 0, -1):  # parents before children: a span's value is final here
            out = as_left[d] @ self.left_of + as_right[d] @ self.right_of
            if d == n:
                out[:, 0, self.top] = 1.0
            out.clamp_(max=1.0)
            if d == 1:
                break
            s = n - d + 1
            parent = out[..., self.head]  # [B, S, R]
            for k in range(1, d):
                as_left[k][:, :s].addcmul_(parent, rhs[d - k][:, k : k + s])
                as_right[d - k][:, k : k + s].addcmul_(parent, lhs[k][:, :s])
        return ((out @ self.emit) * self._leaves(x)) > 0

    def completable(self, x: Tensor) -> Tensor:
        """``[B]`` bool: the row can be completed into the language."""
        x = torch.as_tensor(x).long()
        return self.inside(x)[x.shape[1]][:, 0, self.top] > 0


def grammar_plan(chart: GrammarChart, n_generated: int) -> Any:
    """The :class:`~reverie.discrete.constraints.sampler.Plan` of a grammar over the last
    ``n_generated`` positions of the canvas: the positions the wrapped sampler picks are
    filled one at a time, most confident first, each from the model restricted to the tokens
    the chart allows given everything committed so far (module notes).

    Each token is first drawn from the unrestricted model and kept if the canvas stays
    completable (one inside pass); only otherwise are the allowed tokens computed (inside and
    outside) and a second, restricted draw made. The result is an exact draw from the
    restricted law: ``p(v) + (1 - Z) p(v) / Z = p(v) / Z`` for an allowed ``v`` (``Z`` the
    allowed mass); at temperature 0 the argmax, restricted."""
    from reverie.discrete.constraints.sampler import Plan

    def draw(lp: Tensor, u: Tensor, temperature: float) -> Tensor:
        if temperature == 0:
            return lp.argmax(-1)
        w = (lp / temperature).softmax(-1)
        w = torch.where(torch.isfinite(lp), w, 0.0)
        cdf = w.cumsum(-1)
        return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(
            max=lp.shape[-1] - 1)

    def tokens(ctx: Any, todo: Tensor, proposed: Tensor, state: Any) -> tuple[Tensor, Any]:
        lo = ctx.x.shape[1] - n_generated
        if bool(todo[:, :lo].any()):
            raise RuntimeError("the grammar covers the generated positions only")
        x = ctx.x.clone()
        temperature = float(ctx.temperature)
        u = ctx.uniform(2).double()  # two draws per position, from each row's generator
        # most confident positions first (the model's top probability)
        conf = torch.where(todo, ctx.logp.amax(-1), torch.tensor(float("-inf")))
        order = conf.argsort(-1, descending=True)
        for j in range(int(todo.sum(-1).max()) if todo.any() else 0):
            rows = (todo.sum(-1) > j).nonzero().flatten()
            pos = order[rows, j]
            lp = ctx.logp[rows, pos].double()
            x[rows, pos] = draw(lp, u[rows, pos, 0], temperature)  # unrestricted first
            bad = ~chart.completable(x[rows, lo:])
            if bool(bad.any()):  # those rows: the allowed tokens, and a restricted draw
                rows, pos, lp = rows[bad], pos[bad], lp[bad]
                x[rows, pos] = chart.mask_id
                ok = chart.allowed(x[rows, lo:])[torch.arange(len(rows)), pos - lo]
                if not bool(ok.any(-1).all()):
                    raise RuntimeError("no token keeps the canvas in the grammar's language")
                lp = torch.where(ok, lp, float("-inf"))
                lp = torch.where(torch.isfinite(lp).any(-1, keepdim=True), lp,
                                 torch.where(ok, 0.0, float("-inf")))  # no mass: uniform
                x[rows, pos] = draw(lp, u[rows, pos, 1], temperature)
        return x, None

    return Plan(tokens)


def grammar_sampler(sampler: Any, chart: GrammarChart, n_generated: int) -> Any:
    """``sampler`` with its tokens restricted by ``chart`` over the last ``n_generated``
    positions of the canvas (:func:`grammar_plan`)."""
    from reverie.discrete.constraints.sampler import constrain_rows

    return constrain_rows(sampler, grammar_plan(chart, n_generated))

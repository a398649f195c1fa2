"""Context-free grammar constraints: the inside-outside chart against brute force on small
grammars, and decoding whose outputs parse with Lark (an independent Earley parser)."""

import itertools

import pytest
import torch

from reverie.discrete import SAMPLERS, TokenDenoiser, generate, load_model
from reverie.discrete.constraints import Grammar, Vocabulary
from reverie.discrete.constraints.grammar import GrammarChart, grammar_sampler, to_cnf

pytest.importorskip("lark")

# Balanced parentheses with letters: not a regular language.
DYCK = r"""
start: "(" start ")" start | "a" start |
"""
# Arithmetic with left recursion and a regex terminal; tiny-json's "expr" records.
EXPR_RECORD = r"""
start: "{\"expr\":\"" sum "\",\"value\":" int "}"
?sum: term | sum ("+" | "-") term
?term: atom | term "*" atom
?atom: int | "(" sum ")"
int: /-?(0|[1-9][0-9]*)/
"""
TOKENS = ["(", ")", "a", None, None]  # id 3: end, id 4: mask
VOCAB = Vocabulary(TOKENS, eos_id=3, mask_id=4)


def _in_language(grammar: Grammar, ids: list[int]) -> bool:
    """A canvas (ids over TOKENS) is its text, then end tokens only."""
    text, ended = "", False
    for t in ids:
        if t == 3:
            ended = True
        elif ended:
            return False
        else:
            text += TOKENS[t]
    return grammar.matches(text)


def _brute_force(grammar: Grammar, x: torch.Tensor) -> torch.Tensor:
    """``[n, V]``: the tokens some completion of ``x`` in the language puts at each position."""
    holes = (x == 4).nonzero().flatten().tolist()
    ref = torch.zeros(len(x), len(TOKENS), dtype=torch.bool)
    for fill in itertools.product(range(4), repeat=len(holes)):
        y = x.clone()
        if holes:
            y[holes] = torch.tensor(fill)
        if _in_language(grammar, y.tolist()):
            ref[torch.arange(len(x)), y] = True
    return ref


def _random_canvases(n: int, count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (count, n), generator=g)
    return torch.where(torch.rand(count, n, generator=g) < 0.5, torch.full_like(x, 4), x)


def test_allowed_tokens_equal_brute_force():
    grammar = Grammar(DYCK)
    chart = grammar.chart(VOCAB)
    xs = _random_canvases(6, 40)
    got = chart.allowed(xs)  # the whole batch in one pass
    for x, allowed in zip(xs, got):
        ref = _brute_force(grammar, x)
        assert torch.equal(allowed, ref), x
        assert bool(chart.completable(x[None])[0]) == bool(ref.any())
    assert got.any() and not got.all()  # the check has both answers to give


class _InsideOnly(GrammarChart):
    """The wrong variant: a token is allowed where some nonterminal derives it (inside only,
    no outside pass), ignoring whether the rest of the canvas can still be completed."""

    def allowed(self, x):
        leaves = self._leaves(torch.as_tensor(x))
        return (((leaves @ self.emit.T).clamp(max=1) @ self.emit) * leaves) > 0


def test_brute_force_rejects_an_inside_only_chart():
    grammar = Grammar(DYCK)
    wrong = _InsideOnly(grammar.cnf, VOCAB)
    xs = _random_canvases(6, 40)
    assert any(not torch.equal(a, _brute_force(grammar, x)) for x, a in zip(xs, wrong.allowed(xs)))


def test_cnf_keeps_the_language():
    """Every string over the alphabet up to length 6: CYK on the CNF == Lark's Earley parse."""
    grammar = Grammar(DYCK)
    chart = grammar.chart(VOCAB)
    for n in range(1, 7):
        rows = torch.tensor(list(itertools.product(range(3), repeat=n)))
        got = chart.completable(rows).tolist()  # no holes: membership (no end tokens)
        assert got == [grammar.matches("".join(TOKENS[t] for t in r)) for r in rows.tolist()]
    # the empty sentence: a canvas of end tokens only
    assert bool(chart.completable(torch.tensor([[3, 3]]))[0])
    assert to_cnf([("s", [97])], "s").leaves == ((0, 97),)


def _uniform_model(vocab_size: int, mask_id: int) -> TokenDenoiser:
    """A denoiser with random logits (no structure at all): every valid output is the
    constraint's doing."""
    def net(x, t):
        g = torch.Generator().manual_seed(int(x.sum()))
        return torch.randn(*x.shape, vocab_size, generator=g)

    return TokenDenoiser(net, mask_id=mask_id, vocab_size=vocab_size)


@pytest.mark.parametrize("sampler", ["ancestral", "low_confidence", "random"])
def test_every_output_of_a_random_model_is_in_the_language(sampler):
    grammar = Grammar(DYCK)
    model = _uniform_model(5, 4)
    info = grammar_sampler(SAMPLERS[sampler], grammar.chart(VOCAB), 10)  # no tokenizer here
    out = generate(model, length=10, steps=10, sampler=info, n=16,
                   generator=[torch.Generator().manual_seed(i) for i in range(16)])
    assert all(_in_language(grammar, r) for r in out.tolist())
    # the sibling: the same model and seeds without the constraint leave the language
    free = generate(model, length=10, steps=10, sampler=sampler, n=16,
                    generator=[torch.Generator().manual_seed(i) for i in range(16)])
    assert not all(_in_language(grammar, r) for r in free.tolist())


@pytest.fixture(scope="module")
def tiny_json():
    return load_model("tiny-json")


def test_tiny_json_expressions_parse_with_lark(tiny_json):
    grammar, tail = Grammar(EXPR_RECORD), Grammar(EXPR_RECORD.replace(r'"{\"expr\":\"" ', ""))
    out = generate(tiny_json, prompt='{"expr":"', length=48, steps=39, sampler="ancestral",
                   n=6, generator=[torch.Generator().manual_seed(i) for i in range(6)],
                   constraint=tail)  # the generated part: the expression and the value
    texts = [tiny_json.decode(r) for r in out]
    assert all(grammar.matches(t) for t in texts), texts
    # unconstrained, the same prompt leaves the grammar (unbalanced brackets, stray text)
    free = generate(tiny_json, prompt='{"expr":"', length=48, steps=39, sampler="ancestral",
                    n=6, generator=[torch.Generator().manual_seed(i) for i in range(6)])
    assert not all(grammar.matches(tiny_json.decode(r)) for r in free)


def test_bad_grammars_and_canvases():
    with pytest.raises(ValueError, match="invalid grammar"):
        Grammar("start: missing_rule")
    with pytest.raises(ValueError, match="invalid grammar"):
        Grammar("start: (")
    with pytest.raises(ValueError, match="%ignore"):
        Grammar('start: "a"\n%import common.WS\n%ignore WS')
    with pytest.raises(TypeError):
        Grammar(3)
    model = load_model("tiny-json")
    with pytest.raises(ValueError, match="no sentence that fits"):  # needs 4 tokens, gets 3
        generate(model, length=3, steps=3, constraint=Grammar('start: "abcd"'))


def test_rows_with_different_constraints_in_one_call_equal_each_row_alone(tiny_json):
    """``constraint=[...]``: one per row (a regex, a grammar, a schema, none); each row is what
    it is alone with the same generator, and meets its own constraint."""
    from reverie.discrete.constraints import JsonSchema, Regex

    regex = Regex(r'\{"id":[0-9]{1,3}\}')
    grammar = Grammar(DYCK.replace('"a"', '"x"'))
    schema = JsonSchema({"type": "object", "properties": {"x": {"type": "integer"}},
                         "required": ["x"], "additionalProperties": False})
    rows = [regex, grammar, None, schema, regex]
    kw = dict(length=24, steps=24, sampler="ancestral")
    mixed = generate(tiny_json, n=5, constraint=rows, **kw,
                     generator=[torch.Generator().manual_seed(i) for i in range(5)])
    for i, c in enumerate(rows):
        alone = generate(tiny_json, n=1, constraint=c, **kw,
                         generator=[torch.Generator().manual_seed(i)])
        assert torch.equal(mixed[i], alone[0]), i
    texts = [tiny_json.decode(r) for r in mixed]
    assert regex.matches(texts[0]) and regex.matches(texts[4]) and grammar.matches(texts[1])
    assert schema.matches(texts[3])
    # the sibling: other seeds give other rows, so the equality above can fail
    other = generate(tiny_json, n=5, constraint=rows, **kw,
                     generator=[torch.Generator().manual_seed(i + 10) for i in range(5)])
    assert not torch.equal(other, mixed)
    with pytest.raises(ValueError, match="one per row"):
        generate(tiny_json, n=2, constraint=[regex], **kw)

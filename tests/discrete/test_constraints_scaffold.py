"""Schema scaffolding (S3) inside ``generate``: the skeleton stays at its positions, every
output is valid under the whole schema, one step over one block is DINGO on every slot; the
automaton helpers it relies on (longest / shortest strings, patterns accepting "")."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch
from test_constraints_generate import TOK, make_model, save_random_model

from reverie._random import seeded_generators
from reverie.discrete import generate
from reverie.discrete.constraints import (
    JsonSchema,
    Regex,
    TokenAutomaton,
    Vocabulary,
    best_block,
)
from reverie.discrete.constraints.scaffold import json_scaffold

PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "ok": {"type": "boolean"}},
          "required": ["name", "age", "ok"]}
NESTED = {"type": "object",
          "properties": {"id": {"type": "integer"},
                         "pos": {"type": "object",
                                 "properties": {"x": {"type": "integer"},
                                                "tag": {"$ref": "#/$defs/tag"}},
                                 "required": ["x", "tag"]},
                         "xs": {"type": "array", "items": {"type": "integer"}},
                         "s": {"type": "string", "maxLength": 3}},
          "required": ["id", "pos"],
          "$defs": {"tag": {"enum": ["a", "b"]}}}


def canvas_text(template: torch.Tensor) -> str:
    return "".join("_" if t == TOK.mask_token_id else TOK.decode([t]) or "~"
                   for t in template.tolist())


# ----------------------------------------------------------------------------- automaton helpers


def test_max_length_and_shortest_against_brute_force():
    """Longest accepted length (None when unbounded) and a shortest accepted string, against
    enumeration on random DFAs: a language with a string longer than Q - 1 is unbounded."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        q, v = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        table = rng.integers(0, q, size=(q, v))
        table[rng.random((q, v)) < 0.5] = -1
        finals = {int(f) for f in np.flatnonzero(rng.random(q) < 0.4)} or {q - 1}
        a = TokenAutomaton(torch.from_numpy(table), 0, finals)
        lengths = []
        for n in range(q + 2):
            for seq in itertools.product(range(v), repeat=n):
                if a.accepts(seq):
                    lengths.append(n)
        if not lengths:
            assert not a.is_live(0)
            continue
        want = None if max(lengths) >= q else max(lengths)
        assert a.max_length() == want
        short = a.shortest()
        assert a.accepts(short) and len(short) == min(lengths) == a.min_length()


def test_regex_lengths_and_marker_byte_in_vocabulary():
    voc = Vocabulary([*"0123456789truefals", "\x01", "ab", None, None], eos_id=20, mask_id=21)
    assert TokenAutomaton.from_regex("(true|false)", voc).max_length() == 5
    assert TokenAutomaton.from_regex("[0-9]{2,4}", voc).max_length() == 4
    assert TokenAutomaton.from_regex("[0-9]*", voc).max_length() is None
    assert TokenAutomaton.from_regex("[0-9]*", voc).shortest() == []
    # the start marker is a private token: a real "\x01" token keeps its meaning
    a = TokenAutomaton.from_regex("[^0-9]*", voc)
    assert a.accepts([18, 18, 19]) and not a.accepts([18, 0])
    assert TokenAutomaton.from_regex("a", voc).step(0, 18) == -1
    assert Regex("[0-9]*").matches("") and not Regex("[0-9]*").matches("\x01")


# ----------------------------------------------------------------------------- layout


def test_layout_skeleton_budgets_and_errors():
    model, _ = make_model(0, length=40)
    lay = JsonSchema(PERSON, scaffold=True).layout(model, 40, encode=model.encode)
    # 24 skeleton tokens, 16 to share; a boolean is 4 or 5 tokens long
    assert canvas_text(lay.template) == '{"name":"' + "_" * 6 + '","age":' + "_" * 5 \
        + ',"ok":' + "_" * 5 + "}"
    assert [(s.path, s.budget) for s in lay.slots] == [("name", 6), ("age", 5), ("ok", 5)]
    assert lay.n_free == 16 and int(lay.fixed.sum()) == 24
    lay = JsonSchema(PERSON, scaffold=True, budget=4).layout(model, 40, encode=model.encode)
    assert canvas_text(lay.template).endswith(',"ok":____}~~~~')  # EOS after the brace
    lay = JsonSchema(PERSON, scaffold=True, budget={"age": 2}).layout(model, 40)
    assert [s.budget for s in lay.slots] == [9, 2, 5]
    lay = JsonSchema(NESTED, scaffold=True).layout(model, 64)
    assert [s.path for s in lay.slots] == ["id", "pos.x", "pos.tag", "xs", "s"]
    assert canvas_text(lay.template).startswith('{"id":_')
    assert lay.slots[2].budget == 3 and lay.slots[4].budget == 3  # capped: longest value

    with pytest.raises(ValueError, match="'ok' needs at least 4 tokens but its budget is 3"):
        JsonSchema(PERSON, scaffold=True, budget=3).layout(model, 40)
    with pytest.raises(ValueError, match="unknown field"):
        JsonSchema(PERSON, scaffold=True, budget={"nom": 3}).layout(model, 40)
    with pytest.raises(ValueError, match="scaffold needs at least 29 tokens"):
        JsonSchema(PERSON, scaffold=True).layout(model, 28)
    with pytest.raises(ValueError, match="object schema with 'properties'"):
        JsonSchema({"type": "array", "items": {"type": "integer"}}, scaffold=True)
    with pytest.raises(ValueError, match="only applies with scaffold=True"):
        JsonSchema(PERSON, budget=4)
    with pytest.raises(ValueError, match="whitespace pattern must allow no whitespace"):
        json_scaffold(PERSON, model, 40, whitespace_pattern="[ ]",
                      full_regex=JsonSchema(PERSON, whitespace_pattern="[ ]").regex)


# ----------------------------------------------------------------------------- generate


def check_rows(x, constraint, lay, plen=0):
    fixed = lay.fixed
    for row in x:
        gen = row[plen:]
        assert torch.equal(gen[fixed], lay.template[fixed])  # the skeleton is untouched
        text = TOK.decode(gen.tolist())  # drops the EOS (null) tokens
        assert constraint.matches(text), text
        json.loads(text)
        for slot in lay.slots:  # each slot: a value, then only EOS
            assert slot.automaton.accepts(gen[slot.start:slot.end].tolist())


@pytest.mark.parametrize("sampler,temperature,block_length",
                         [("low_confidence", 0.0, None), ("low_confidence", 1.0, 8),
                          ("ancestral", 1.0, 16), ("first_hitting", 1.0, None),
                          ("threshold", 0.0, 8), ("entropy", 1.0, 32)])
def test_scaffolded_outputs_are_valid(sampler, temperature, block_length):
    model, _ = make_model(1, length=64)
    for schema in (PERSON, NESTED):
        c = JsonSchema(schema, scaffold=True)
        x = generate(model, length=64, sampler=sampler, block_length=block_length,
                     temperature=temperature, n=3, generator=seeded_generators(2, 3),
                     constraint=c)
        check_rows(x, c, c.layout(model, 64))


def test_scaffold_with_prompt_per_token_and_steps():
    model, fn = make_model(2, length=48)
    c = JsonSchema(PERSON, scaffold=True, budget=6)
    out = generate(model, prompt="ab", length=48, sampler="low_confidence", temperature=1.0,
                   n=4, generator=seeded_generators(0, 4), constraint=c, return_stats=True)
    assert out.steps == 18  # default steps: one per value position (3 slots of 6)
    assert TOK.decode(out.tokens[0, :2].tolist()) == "ab"
    check_rows(out.tokens, c, c.layout(model, 46), plen=2)
    x = generate(model, length=48, steps=8, sampler="low_confidence", temperature=1.0, n=4,
                 generator=seeded_generators(0, 4), constraint=c, constraint_method="per_token")
    lay = c.layout(model, 48)
    assert all(torch.equal(r[lay.fixed], lay.template[lay.fixed]) for r in x)
    calls = fn.calls
    with pytest.raises(ValueError, match="scaffold needs at least"):
        generate(model, length=20, constraint=JsonSchema(PERSON, scaffold=True))
    assert fn.calls == calls


def test_one_step_is_dingo_on_every_slot():
    """One step over one block at temperature 0 commits every value position: each slot
    holds best_block of the model's scores there, the slots being independent."""
    model, _ = make_model(3, length=40)
    c = JsonSchema(PERSON, scaffold=True)
    lay = c.layout(model, 40)
    x = generate(model, length=40, steps=1, sampler="low_confidence", temperature=0.0,
                 constraint=c)
    canvas = torch.where(lay.fixed, lay.template, TOK.mask_token_id)[None]
    lp = model(canvas, torch.ones(1))[0]
    for slot in lay.slots:
        want, _, _ = best_block(lp[slot.start:slot.end], slot.automaton, remaining=0)
        assert torch.equal(x[0, slot.start:slot.end], want)


def test_rows_depend_only_on_their_generator():
    model, _ = make_model(4, length=40)
    kw = dict(length=40, steps=10, sampler="low_confidence", block_length=8, temperature=1.0,
              constraint=JsonSchema(PERSON, scaffold=True))
    batch = generate(model, n=3, generator=seeded_generators(10, 3), **kw)
    one = generate(model, n=1, generator=seeded_generators(12, 1), **kw)
    assert torch.equal(batch[2], one[0])


def test_cli_scaffold(tmp_path, capsys):
    from reverie.cli import main

    save_random_model(tmp_path, length=40)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(PERSON))
    base = ["generate", "--model", str(tmp_path), "--n", "2", "--no-progress",
            "--schema", str(schema)]
    assert main([*base, "--scaffold"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert re.match(r'\{"name":"', line) and JsonSchema(PERSON).matches(line)
    assert main([*base, "--scaffold", "--budget", "30"]) == 2
    assert "scaffold needs at least" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "--regex", "a+", "--scaffold"]) == 2
    assert "need --schema" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--regex", "[0-9"]) == 2
    assert "invalid regular expression" in capsys.readouterr().err  # before loading the model

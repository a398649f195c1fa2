"""Constraints inside ``reverie.discrete.generate``: every sampler's outputs full-match the
pattern; one step over one block is exactly the DINGO program; errors before any model call."""

from __future__ import annotations

import json
import re

import pytest
import torch

from reverie._random import seeded_generators
from reverie.discrete import SAMPLERS, CharTokenizer, TokenDenoiser, generate
from reverie.discrete.constraints import JsonSchema, Regex, best_block

CHARS = '{}[]":, 0123456789abcdefghijklmnopqrstuvwxyz-'
TOK = CharTokenizer(CHARS)
V = TOK.vocab_size
L = 16


class _Model:
    """Fixed random logits per position plus a dependence on the left neighbour, so that
    what the model predicts changes as the canvas fills in; counts its calls."""

    def __init__(self, length: int = L, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.base = torch.randn(length, V, generator=g) * 2
        self.pair = torch.randn(V + 1, V, generator=g)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        left = torch.cat([torch.full_like(x[:, :1], V), x[:, :-1]], 1).clamp_max(V)
        return self.base[: x.shape[1]] + self.pair[left]


def make_model(seed: int = 0, length: int = L) -> tuple[TokenDenoiser, _Model]:
    fn = _Model(length, seed)
    model = TokenDenoiser(fn, mask_id=TOK.mask_token_id, vocab_size=V, time_conditioned=False,
                          tokenizer=TOK)
    model.pad_id = TOK.pad_token_id
    return model, fn


def texts(x: torch.Tensor, start: int = 0, check_padding: bool = True) -> list[str]:
    out = []
    for row in x.tolist():
        ids = row[start:]
        if check_padding and TOK.pad_token_id in ids:  # padding (EOS) only at the end
            assert set(ids[ids.index(TOK.pad_token_id):]) == {TOK.pad_token_id}
        out.append(TOK.decode(ids))
    return out


PATTERN = r"(cat|dog)s? [0-9]{1,3}-[a-z]+"


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "adablock"  # needs delimiters
                                     and not SAMPLERS[s].revises])  # revisers refuse constraints
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_sampler_output_full_matches(sampler, temperature):
    model, _ = make_model(1)
    for block_length in (None, 8):
        steps = L if sampler == "first_hitting" else 8
        x = generate(model, length=L, steps=steps, sampler=sampler, block_length=block_length,
                     temperature=temperature, n=4, generator=seeded_generators(3, 4),
                     constraint=Regex(PATTERN))
        for text in texts(x):
            assert re.fullmatch(PATTERN, text), (sampler, block_length, text)


def test_json_schema_and_prompt():
    schema = {"type": "object", "properties": {"id": {"type": "integer"},
                                               "ok": {"type": "boolean"}},
              "required": ["id", "ok"]}
    model, _ = make_model(2, length=28)
    prompt = "ab"
    x = generate(model, prompt=prompt, length=28, steps=14, sampler="low_confidence",
                 block_length=7, temperature=1.0, n=3, generator=seeded_generators(0, 3),
                 constraint=JsonSchema(schema))
    for row in x:
        assert TOK.decode(row[:2].tolist()) == prompt
    for text in texts(x, start=2):
        obj = json.loads(text)
        assert isinstance(obj["id"], int) and isinstance(obj["ok"], bool)


def test_one_step_one_block_is_the_dingo_program():
    model, _ = make_model(4)
    x = generate(model, length=L, steps=1, sampler="low_confidence", temperature=0.0,
                 constraint=Regex(PATTERN))
    canvas = torch.full((1, L), TOK.mask_token_id)
    lp = model(canvas, torch.ones(1))
    automaton = Regex(PATTERN).automaton(model)
    want, _, _ = best_block(lp[0], automaton, automaton.start, remaining=0)
    assert torch.equal(x[0], want)


def accepted_rows(x: torch.Tensor, model) -> int:
    """Rows the pattern's token automaton accepts; each of them also full-matches the regex
    as text (the automaton and ``re`` agree)."""
    automaton = Regex(PATTERN).automaton(model)
    n = 0
    for row, text in zip(x, texts(x, check_padding=False)):
        if automaton.accepts(row.tolist()):
            assert re.fullmatch(PATTERN, text), text
            n += 1
    return n


def _per_token(model, steps: int, block_length: int | None = None, **kw) -> torch.Tensor:
    return generate(model, length=L, steps=steps, block_length=block_length,
                    sampler="low_confidence", temperature=1.0, n=8,
                    generator=seeded_generators(1, 8), constraint_method="per_token", **kw)


def test_per_token_baseline_accepts_rows_decoded_left_to_right():
    """One step per block (each block committed at once, left to right): the per-token masking
    baseline succeeds on every row (measured 8 of 8); the same model unconstrained gives 0."""
    model, _ = make_model(5)
    assert accepted_rows(_per_token(model, 2, 8, constraint=Regex(PATTERN)), model) >= 7
    assert accepted_rows(_per_token(model, 2, 8), model) == 0


def test_per_token_baseline_fails_where_dingo_does_not():
    """With several commits per block in confidence order, masking each token against the
    automaton's state on its left dead-ends (measured 0 of 8 accepted); DINGO's block program
    accepts all 8 on the same setup."""
    model, _ = make_model(5)
    assert accepted_rows(_per_token(model, 8, constraint=Regex(PATTERN)), model) <= 1
    dingo = generate(model, length=L, steps=8, sampler="low_confidence", temperature=1.0, n=8,
                     generator=seeded_generators(1, 8), constraint=Regex(PATTERN))
    assert accepted_rows(dingo, model) == 8


def test_rows_depend_only_on_their_generator():
    model, _ = make_model(6)
    kw = dict(length=L, steps=8, sampler="low_confidence", block_length=8, temperature=1.0,
              constraint=Regex(PATTERN))
    batch = generate(model, n=3, generator=seeded_generators(10, 3), **kw)
    one = generate(model, n=1, generator=seeded_generators(12, 1), **kw)
    assert torch.equal(batch[2], one[0])


def test_errors_come_before_any_model_call():
    model, fn = make_model(7)
    with pytest.raises(ValueError, match="at least 17 tokens"):
        generate(model, length=L, constraint=Regex("[0-9]{17}"))
    with pytest.raises(ValueError, match="invalid regular expression"):
        generate(model, length=L, constraint=Regex("[0-9"))
    with pytest.raises(ValueError, match="unknown constraint method"):
        generate(model, length=L, constraint=Regex("[0-9]"), constraint_method="beam")
    with pytest.raises(TypeError, match="constraint must be"):
        generate(model, length=L, constraint="[0-9]+")
    no_eos = TokenDenoiser(fn, mask_id=TOK.mask_token_id, vocab_size=V, tokenizer=_NoEos())
    with pytest.raises(ValueError, match="no eos token"):
        generate(no_eos, length=L, constraint=Regex("[0-9]+"))
    assert fn.calls == 0


class _NoEos:  # a tokenizer with a mask token but no end-of-sequence token
    eos_token_id, mask_token_id, all_special_ids = None, TOK.mask_token_id, [TOK.mask_token_id]

    def __len__(self):
        return V

    def convert_ids_to_tokens(self, ids):
        return ["<pad>", *CHARS, "<mask>"]


def save_random_model(folder, length: int = 24) -> None:
    """A randomly initialised reverie model folder (the format of the bundled tiny-json)."""
    from safetensors.torch import save_file

    from reverie.discrete.nets import TinyTransformer

    torch.manual_seed(0)
    net = TinyTransformer(V, length, dim=32, depth=1, heads=2)
    config = {"format": "reverie-discrete", "architecture": "TinyTransformer",
              "model": net.config, "tokenizer": TOK.to_dict(), "mask_id": TOK.mask_token_id,
              "pad_id": TOK.pad_token_id, "length": length}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(net.state_dict(), str(folder / "model.safetensors"))


def test_cli_generate_with_regex_and_schema(tmp_path, capsys):
    from reverie.cli import main

    save_random_model(tmp_path)
    base = ["generate", "--model", str(tmp_path), "--n", "3", "--steps", "12",
            "--block-length", "12", "--no-progress"]
    assert main([*base, "--regex", PATTERN]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(PATTERN, line) for line in lines)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}},
                                  "required": ["n"]}))
    assert main([*base, "--schema", str(schema), "--temperature", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(isinstance(json.loads(line)["n"], int) for line in lines)
    assert main([*base, "--regex", "[0-9]{30}"]) == 2  # too long for the canvas: clear error
    assert "at least 30 tokens" in capsys.readouterr().err


def test_bench_validity_rows_and_schema_validator(tmp_path):
    from reverie.bench.constraints import TINY_JSON_SCHEMAS, schema_valid, validity_rows
    from reverie.discrete import load_model

    person = TINY_JSON_SCHEMAS["person"]
    assert schema_valid({"name": "Ada", "age": 3, "city": "Oslo"}, person)
    assert not schema_valid({"name": "Ada", "age": 3.5, "city": "Oslo"}, person)
    assert not schema_valid({"name": "Ada", "age": True, "city": "Oslo"}, person)
    assert not schema_valid({"name": "Ada", "age": 3}, person)
    assert not schema_valid({"x": 1, "y": 2, "tags": ["a", 3]}, TINY_JSON_SCHEMAS["point"])
    save_random_model(tmp_path, length=32)
    rows = validity_rows(load_model(tmp_path), n=2, steps=4, schemas=["point"], seed=1)
    assert [(r["schema"], r["method"]) for r in rows] == [
        ("point", m) for m in ("unconstrained", "per_token", "dingo", "scaffold")]
    for r in rows:
        if r["method"] in ("dingo", "scaffold"):
            assert r["parse_rate"] == 1.0 and r["schema_valid"] == 1.0

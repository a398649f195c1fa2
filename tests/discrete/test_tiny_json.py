"""The bundled tiny-json model, its loader, the `reverie generate` command and the benchmark."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from reverie import cli
from reverie.discrete import ReverieLM, generate, load_model
from reverie.discrete.samplers import SAMPLERS


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-json")


def test_bundled_model_loads(model):
    assert isinstance(model, ReverieLM)
    assert model.length == 64 and model.mask_id == model.vocab_size - 1
    assert model.delimiter_ids == model.encode(",")
    assert not model.time_conditioned
    assert model.config["training"]["script"] == "scripts/train_tiny_json.py"


def test_prompted_samples_keep_the_prompt_and_mostly_parse(model):
    prompt = '{"name":"'
    x = generate(
        model,
        prompt=prompt,
        length=64,
        steps=32,
        sampler="low_confidence",
        n=16,
        generator=torch.Generator().manual_seed(0),
    )
    texts = [model.decode(r) for r in x]
    assert all(t.startswith(prompt) for t in texts)
    ok = 0
    for t in texts:
        try:
            ok += isinstance(json.loads(t), dict)
        except ValueError:
            pass
    assert ok >= 8  # a regression guard; the measured rates are in BENCHMARKS.md


def adablock_blocks(model) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Run AdaBlock (a local copy whose decision function records each new block) and return
    the tokens and ``(row, start, end, predicted token at end - 1 when it was planned)``."""
    base = SAMPLERS["adablock"]
    blocks: list[tuple[int, int, int, int]] = []

    def decide(ctx):
        pred = ctx.logp.argmax(-1)
        for r in ctx.new_block.nonzero().flatten().tolist():
            lo, hi = int(ctx.block_start[r]), int(ctx.block_end[r])
            blocks.append((r, lo, hi, int(pred[r, hi - 1])))
        return base.decide(ctx)

    # a wider window and a lower confidence bar than the defaults: the bundled model predicts
    # a comma confidently only a few positions ahead
    out = generate(model, length=64, steps=48, sampler=replace(base, decide=decide), n=6,
                   generator=torch.Generator().manual_seed(1), window=0.5,
                   delimiter_threshold=0.1)
    return out, blocks


def blocks_end_at(blocks, delimiters, block_length: int = 32, length: int = 64) -> bool:
    """Every block shorter than ``block_length`` (and not cut by the canvas end) ends at a
    predicted delimiter, and at least 8 blocks are such."""
    short = [b for b in blocks if b[2] - b[1] < block_length and b[2] < length]
    return len(short) >= 8 and all(tok in delimiters for *_, tok in short)


def test_adablock_uses_the_models_delimiters(model):
    out, blocks = adablock_blocks(model)
    assert bool((out != model.mask_id).all())
    assert blocks_end_at(blocks, model.delimiter_ids), blocks
    # mostly the sample has the comma where its block was planned to end (measured 5 of 9)
    comma = model.encode(",")[0]
    ends = [(r, hi - 1) for r, _, hi, tok in blocks if tok == comma]
    assert sum(int(out[r, i]) == comma for r, i in ends) >= len(ends) // 2


def test_adablock_segmentation_follows_the_delimiter_set(model):
    """The same model with ':' as its delimiter segments differently (blocks end after the
    keys), and the check for ',' rejects those blocks."""
    colon = copy.copy(model)
    colon.delimiter_ids = model.encode(":")
    _, own = adablock_blocks(model)
    _, other = adablock_blocks(colon)
    assert blocks_end_at(other, colon.delimiter_ids), other
    assert not blocks_end_at(other, model.delimiter_ids)
    assert not blocks_end_at(own, colon.delimiter_ids)
    assert sorted(b[:3] for b in own) != sorted(b[:3] for b in other)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "reverie-discrete", "architecture": "Mamba"})
    )
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model(tmp_path)


def test_generate_command(capsys, tmp_path):
    out = tmp_path / "samples.jsonl"
    rc = cli.main(
        [
            "generate",
            "--model",
            "tiny-json",
            "--prompt",
            '{"x":',
            "--length",
            "32",
            "--steps",
            "16",
            "--sampler",
            "low_confidence",
            "--n",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith('{"x":') for line in lines)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == lines and len(rows[0]["tokens"]) == 32


def test_generate_command_errors(capsys):
    rc = cli.main(["generate", "--sampler", "fastest", "--no-progress"])
    assert rc == 2
    assert "unknown sampler 'fastest'" in capsys.readouterr().err
    rc = cli.main(["generate", "--prompt", "x" * 70, "--no-progress"])
    assert rc == 2
    assert "longer than length=64" in capsys.readouterr().err


def test_bench_reference_part_runs(tmp_path, capsys):
    out = tmp_path / "discrete.json"
    rc = cli.main(
        [
            "bench",
            "discrete",
            "--skip-json",
            "--n-ref",
            "400",
            "--samplers",
            "first_hitting,ancestral",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    names = {r["sampler"] for r in res["reference"]["rows"]}
    assert names == {"first_hitting", "ancestral"}
    assert "TV / floor" in capsys.readouterr().out


def test_bench_speed_is_warm_interleaved_and_median(tmp_path, monkeypatch):
    """Every tiny-json cell runs once untimed (its accuracy run, the warm-up) before any timed
    run; then each round times every sampler at steps = L once, alternating the order; the
    reported tokens/s is n L / the median of the rounds."""
    import statistics

    import reverie.discrete

    calls = []
    real = reverie.discrete.generate

    def spy(model, **kw):
        if kw["length"] == 64:  # the tiny-json part (the reference part has L = 8)
            calls.append((kw["sampler"], kw["steps"]))
        return real(model, **kw)

    monkeypatch.setattr(reverie.discrete, "generate", spy)
    out = tmp_path / "discrete.json"
    rc = cli.main(["bench", "discrete", "--n-ref", "50", "--n-json", "4", "--rounds", "3",
                   "--samplers", "threshold,ancestral", "--out", str(out)])
    assert rc == 0
    assert len(calls) == 8 + 3 * 2
    warm, timed = calls[:8], calls[8:]
    assert sorted(warm) == [(s, k) for s in ("ancestral", "threshold") for k in (8, 16, 32, 64)]
    pair = [("ancestral", 64), ("threshold", 64)]
    assert timed == pair + pair[::-1] + pair
    res = json.loads(out.read_text())["tiny_json"]
    assert res["dtype"] == {"network": "float32", "draws": "float64"}
    for row in res["rows"]:
        if row["steps"] == 64:
            assert len(row["seconds_per_round"]) == 3
            median = statistics.median(row["seconds_per_round"])
            assert row["tokens_per_s"] == pytest.approx(4 * 64 / median)
        else:
            assert row["tokens_per_s"] is None


def test_bundled_block_causal_sibling_loads_and_its_cache_is_exact():
    """``tiny-json-block``: the same data and tokenizer, a block-causal network (blocks of 16)
    trained with BD3-LM's loss; the exact prefix cache gives the uncached tokens."""
    import reverie
    from reverie.discrete import ReverieBlockLM

    lm = reverie.load("tiny-json-block")
    assert isinstance(lm, ReverieBlockLM) and lm.block_size == 16 and lm.length == 64
    assert lm.config["training"]["script"] == "scripts/train_tiny_json.py"
    kw = dict(prompt='{"name":"', length=64, steps=55, sampler="low_confidence", n=8)
    ref = generate(lm, generator=[torch.Generator().manual_seed(i) for i in range(8)], **kw)
    out = generate(lm, generator=[torch.Generator().manual_seed(i) for i in range(8)],
                   cache="prefix", **kw)
    assert torch.equal(out, ref)
    ok = 0
    for t in (lm.decode(r) for r in out):
        try:
            ok += isinstance(json.loads(t), dict)
        except ValueError:
            pass
    assert ok >= 5  # a regression guard; the measured rates are in BENCHMARKS.md

"""The bundled tiny-json model, its loader, the `reverie generate` command and the benchmark."""

import json

import pytest
import torch

from reverie import cli
from reverie.discrete import ReverieLM, generate, load_model


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


def test_adablock_uses_the_models_delimiters(model):
    out = generate(
        model,
        length=64,
        steps=64,
        sampler="adablock",
        n=2,
        return_stats=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert bool((out.tokens != model.mask_id).all())


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

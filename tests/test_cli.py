"""The `reverie` command: sample / samplers / models / train, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.cli import main
from reverie.hub import BUNDLED, bundled_path
from reverie.samplers import SAMPLERS


def test_samplers_lists_every_sampler_with_its_description(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(SAMPLERS)
    for line, (name, s) in zip(out, SAMPLERS.items()):
        assert line.startswith(name) and s.description in line


def test_models_lists_bundled(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in BUNDLED:
        assert name in out
    assert "missing" not in out


def test_sample_two_moons_writes_picture_and_arrays(tmp_path, capsys):
    png, npy, pt = tmp_path / "m.png", tmp_path / "m.npy", tmp_path / "m.pt"
    rc = main(
        [
            "sample",
            "--model",
            "two-moons",
            "--n",
            "50",
            "--steps",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--out",
            str(png),
            "--out",
            str(npy),
            "--out",
            str(pt),
        ]
    )
    assert rc == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    x = np.load(npy)
    assert x.shape == (50, 2) and np.isfinite(x).all()
    assert torch.equal(torch.load(pt), torch.from_numpy(x))
    # the same seed gives the same samples
    main(
        [
            "sample",
            "--model",
            "two-moons",
            "--n",
            "50",
            "--steps",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--out",
            str(tmp_path / "again.npy"),
        ]
    )
    assert np.array_equal(np.load(tmp_path / "again.npy"), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.npy", "m.npy", "m.png", "m.pt"]


def test_sample_trajectories_and_sampler_options(tmp_path):
    out = tmp_path / "t.png"
    rc = main(
        [
            "sample",
            "--model",
            "two-moons",
            "--n",
            "20",
            "--steps",
            "5",
            "--quiet",
            "--sampler",
            "ddim",
            "--option",
            "eta=1.0",
            "--label",
            "all",
            "--cfg",
            "2",
            "--trajectories",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.exists()


@pytest.mark.skipif(not bundled_path("digits").is_dir(), reason="digits weights not bundled")
def test_sample_digits_with_label_and_cfg(tmp_path):
    out, arr = tmp_path / "d.png", tmp_path / "d.npy"
    rc = main(
        [
            "sample",
            "--model",
            "digits",
            "--n",
            "8",
            "--steps",
            "3",
            "--label",
            "3",
            "--cfg",
            "2.0",
            "--quiet",
            "--out",
            str(out),
            "--out",
            str(arr),
        ]
    )
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert np.load(arr).shape == (8, 1, 8, 8)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "nope"], "digits, two-moons"),
        (["--model", "two-moons", "--label", "2"], "out of range"),
        (["--model", "two-moons", "--label", "x"], "--label expects"),
        (["--model", "two-moons", "--cfg", "2"], "--cfg needs --label"),
        (["--model", "two-moons", "--sampler", "nope"], "unknown sampler"),
        (["--model", "two-moons", "--option", "eta"], "KEY=VALUE"),
        (["--model", "two-moons", "--option", "nope=1"], "no option"),
        (["--model", "two-moons", "--out", "{tmp}/missing/x.png"], "does not exist"),
        (["--model", "two-moons", "--out", "{tmp}/x.gif"], "cannot write"),
        (["--model", "two-moons", "--n", "0"], "--n must be"),
    ],
)
def test_sample_errors_are_clear_and_write_nothing(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "x.png")]
    rc = main(["sample", "--n", "5", "--steps", "2", "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.rglob("*")) == []


def test_train_then_sample_a_data_file(tmp_path, capsys):
    data = torch.randn(256, 2) * 0.3 + 1.0
    torch.save({"x": data, "labels": (data[:, 0] > 1).long()}, tmp_path / "d.pt")
    model = tmp_path / "model"
    rc = main(
        [
            "train",
            str(tmp_path / "d.pt"),
            "--out",
            str(model),
            "--steps",
            "30",
            "--batch-size",
            "64",
            "--quiet",
        ]
    )
    assert rc == 0 and (model / "reverie.json").exists() and (model / "model.safetensors").exists()
    rc = main(
        [
            "sample",
            "--model",
            str(model),
            "--n",
            "10",
            "--steps",
            "3",
            "--label",
            "1",
            "--cfg",
            "1.5",
            "--quiet",
            "--out",
            str(tmp_path / "s.npy"),
        ]
    )
    assert rc == 0 and np.load(tmp_path / "s.npy").shape == (10, 2)
    rc = main(["train", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m2")])
    assert rc == 2 and "no data file" in capsys.readouterr().err

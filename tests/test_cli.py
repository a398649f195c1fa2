"""The `reverie` command: sample / samplers / models / train, and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reverie.cli import main
from reverie.data import TWO_MOONS_CENTER, TWO_MOONS_SCALE, two_moons
from reverie.hub import BUNDLED
from reverie.samplers import SAMPLERS


def moon_distances(x) -> torch.Tensor:
    """``[n, 2]``: each point's distance to the noise-free upper (0) and lower (1) moon."""
    a = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    arcs = [torch.stack([torch.cos(a), torch.sin(a)], 1),
            torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], 1)]
    c = torch.tensor(TWO_MOONS_CENTER, dtype=torch.float64)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return torch.stack([torch.cdist(x, (m - c) * TWO_MOONS_SCALE).min(1).values for m in arcs], 1)


def near_two_moons(x) -> bool:
    """Median distance to the moons below 0.1 (the data's own: 0.035; Gaussian points with
    the data's mean and spread: 0.32) and at least a quarter of the points on each moon."""
    d = moon_distances(x)
    share = (d.argmin(1) == 0).double().mean()
    return float(d.min(1).values.median()) < 0.1 and 0.25 < float(share) < 0.75


def on_their_moons(x, labels) -> bool:
    """At least 95% of the rows lie on the moon of their own label (0 upper, 1 lower)."""
    return float((moon_distances(x).argmin(1) == torch.as_tensor(labels)).double().mean()) >= 0.95


def test_two_moons_checks_reject_wrong_samples():
    x, moon = two_moons(200, generator=torch.Generator().manual_seed(0))
    assert near_two_moons(x) and on_their_moons(x, moon)
    gauss = torch.randn(200, 2, generator=torch.Generator().manual_seed(1)) * x.std(0) + x.mean(0)
    assert not near_two_moons(gauss)
    assert not near_two_moons(x[moon == 0])  # one moon only
    assert not on_their_moons(x, moon[torch.randperm(200, generator=torch.Generator())])


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
            "10",
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
    assert x.shape == (50, 2) and near_two_moons(x)  # measured median distance 0.05
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
            "10",
            "--seed",
            "3",
            "--quiet",
            "--out",
            str(tmp_path / "again.npy"),
        ]
    )
    assert np.array_equal(np.load(tmp_path / "again.npy"), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.npy", "m.npy", "m.png", "m.pt"]
    # one step returns D(x_T), near the data mean: the check rejects it (median distance 0.43)
    main(["sample", "--model", "two-moons", "--n", "50", "--steps", "1", "--seed", "3",
          "--quiet", "--out", str(tmp_path / "one.npy")])
    assert not near_two_moons(np.load(tmp_path / "one.npy"))


def test_sample_trajectories_and_per_sample_labels(tmp_path):
    """``--label all`` gives row ``i`` the label ``i % 2``: with guidance every row lands on
    its own moon (measured 40 of 40), which the same rows with the labels shuffled fail."""
    out, arr = tmp_path / "t.png", tmp_path / "t.npy"
    rc = main(
        [
            "sample",
            "--model",
            "two-moons",
            "--n",
            "40",
            "--steps",
            "10",
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
            "--out",
            str(arr),
        ]
    )
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    x, labels = np.load(arr), torch.arange(40) % 2
    assert near_two_moons(x) and on_their_moons(x, labels)
    assert not on_their_moons(x, labels[torch.randperm(40, generator=torch.Generator())])
    assert not on_their_moons(x, 1 - labels)


def test_sample_digits_with_label_and_cfg(tmp_path):
    """The requested digit, by a 3-NN classifier on the training digits (measured 8 of 8)."""
    import sklearn.neighbors as neighbors

    from reverie.data import load_digits

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
    x = np.load(arr)
    assert x.shape == (8, 1, 8, 8)
    x_tr, y_tr = load_digits("train")
    knn = neighbors.KNeighborsClassifier(3).fit(x_tr.reshape(len(x_tr), -1), y_tr)
    predicted = torch.as_tensor(knn.predict(x.reshape(8, -1)))
    assert int((predicted == 3).sum()) >= 7 and int((predicted == 5).sum()) <= 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "nope"], "digits, two-moons"),
        (["--model", "two-moons", "--label", "2"], "out of range"),
        (["--model", "two-moons", "--label", "x"], "--label expects"),
        (["--model", "two-moons", "--cfg", "2"], "--cfg / --guidance need --label"),
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


def _label_rows_ok(x, labels) -> bool:
    """The data law: x ~ N(1, 0.3^2 I), label = [x_0 > 1]; at least 85% of the rows on their
    label's side of x_0 = 1 and the other coordinate's mean within 0.15 of 1."""
    x = torch.as_tensor(x)
    side = float(((x[:, 0] > 1).long() == labels).double().mean())
    return side >= 0.85 and abs(float(x[:, 1].mean()) - 1.0) < 0.15


def test_train_then_sample_a_data_file(tmp_path, capsys):
    """Training 300 steps learns the conditional law: per-sample labels (``--label all``: row
    ``i`` gets ``i % 2``) put 96% of the rows on their side (measured); flipped labels and a
    30-step model fail the same check."""
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) * 0.3 + 1.0
    torch.save({"x": data, "labels": (data[:, 0] > 1).long()}, tmp_path / "d.pt")
    labels = torch.arange(100) % 2
    samples = {}
    for steps in ("300", "30"):
        model = tmp_path / f"model{steps}"
        rc = main(["train", str(tmp_path / "d.pt"), "--out", str(model), "--steps", steps,
                   "--batch-size", "64", "--quiet"])
        assert rc == 0 and (model / "reverie.json").exists()
        assert (model / "model.safetensors").exists()
        rc = main(["sample", "--model", str(model), "--n", "100", "--steps", "10", "--label",
                   "all", "--cfg", "1.5", "--quiet", "--out", str(tmp_path / f"s{steps}.npy")])
        samples[steps] = np.load(tmp_path / f"s{steps}.npy")
        assert rc == 0 and samples[steps].shape == (100, 2)
    assert _label_rows_ok(samples["300"], labels)
    assert not _label_rows_ok(samples["300"], 1 - labels)
    assert not _label_rows_ok(samples["30"], labels)
    rc = main(["train", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m2")])
    assert rc == 2 and "no data file" in capsys.readouterr().err


def test_sample_with_a_fitted_grid(tmp_path, capsys):
    """``--grid fit`` fits a grid to the model (reverie.optimize_grid), prints it with its
    validation loss next to the default's, and samples on it; a too small --fit-n is a user
    error."""
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "two-moons", "--sampler", "dpmpp_2m", "--steps", "3",
                 "--n", "16", "--grid", "fit", "--fit-n", "16", "--quiet",
                 "--out", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fitted grid"))
    grid = [float(v) for v in line.split(": ")[-1].strip("[]").split(",")]
    loss, default = (float(line.split(f"{k} ")[1].split()[0].rstrip(";"))
                     for k in ("validation loss", "vs default"))
    assert len(grid) == 4 and grid[-1] == 0.0 and grid == sorted(grid, reverse=True)
    assert loss <= default
    assert np.load(out).shape == (16, 2)
    assert main(["sample", "--model", "two-moons", "--grid", "fit", "--fit-n", "2",
                 "--out", str(tmp_path / "y.npy")]) == 2
    assert "--fit-n must be >= 4" in capsys.readouterr().err

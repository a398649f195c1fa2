"""reverie.hub: bundled models, native folders, hub ids, conditioning, atomic saving."""

from __future__ import annotations

import json

import pytest
import torch

import reverie
from reverie.hub import (
    BUNDLED,
    atomic_dir,
    load,
    process_from_config,
    process_to_config,
    save_native,
)
from reverie.nets import MLP


def _tiny_native(tmp_path, name="tiny", num_classes=2):
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, num_class_embeds=num_classes + 1)
    for p in net.parameters():  # the output layer starts at zero; make the net non-trivial
        torch.nn.init.normal_(p, std=0.3)
    folder = save_native(
        tmp_path / name,
        net,
        net_class="MLP",
        net_config=net.config,
        process=reverie.EDM(sigma_data=0.9),
        prediction="x0",
        precondition="edm",
        sigma_data=0.9,
        time_input="c_noise",
        name=name,
        sample_shape=(2,),
        num_classes=num_classes,
        null_class=True,
    )
    return net, folder


def test_native_roundtrip_gives_the_same_denoiser(tmp_path):
    from reverie.nets.function import ModelFunction

    net, folder = _tiny_native(tmp_path)
    model = load(folder)
    assert model.sample_shape == (2,) and model.num_classes == 2 and model.has_null_class
    assert isinstance(model.process, reverie.EDM) and model.process.sigma_data == 0.9
    fn = ModelFunction(
        net.eval(), reverie.EDM(sigma_data=0.9), precondition="edm", sigma_data=0.9, null_label=2
    )
    x, t = torch.randn(5, 2), torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert torch.allclose(model.denoiser(x, t, class_labels=labels), fn(x, t, labels))
    # no labels == the null class
    assert torch.equal(model.denoiser(x, t), model.denoiser(x, t, class_labels=torch.full((5,), 2)))


def test_edm_preconditioning_limits(tmp_path):
    """EDM eq. 7: D(x; sigma) -> x as sigma -> 0 (c_skip -> 1, c_out -> 0)."""
    _, folder = _tiny_native(tmp_path)
    model = load(folder)
    x = torch.randn(4, 2, dtype=torch.float64)
    d = model.denoiser(x, 1e-6)
    assert torch.allclose(d, x, atol=1e-5)


def test_conditional_and_cfg_formula(tmp_path):
    _, folder = _tiny_native(tmp_path)
    model = load(folder)
    x, t = torch.randn(6, 2), 1.3
    d_c = model.denoiser(x, t, class_labels=torch.ones(6, dtype=torch.long))
    d_u = model.denoiser(x, t)
    assert torch.allclose(model.conditional(1)(x, t), d_c)
    guided = model.conditional(1, cfg_scale=3.0)(x, t)
    assert torch.allclose(guided, d_u + 3.0 * (d_c - d_u), atol=1e-5)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    per_sample = model.conditional(labels, cfg_scale=2.0)(x, t)
    d_0 = model.denoiser(x, t, class_labels=torch.zeros(6, dtype=torch.long))
    # each row guided toward its own label: d_u + 2 (d_label - d_u)
    expected = torch.where((labels == 1)[:, None], d_u + 2.0 * (d_c - d_u), d_u + 2.0 * (d_0 - d_u))
    assert torch.allclose(per_sample, expected, atol=1e-5)
    swapped = model.conditional(1 - labels, cfg_scale=2.0)(x, t)
    assert not torch.allclose(swapped, expected, atol=1e-3)  # the check sees wrong labels
    with pytest.raises(ValueError, match="out of range"):
        model.conditional(2)
    with pytest.raises(ValueError, match="out of range"):
        model.conditional(torch.tensor([0, -1]))
    with pytest.raises(TypeError):
        model.conditional(1.5)
    with pytest.raises(ValueError, match="labels were bound"):
        model.conditional(torch.tensor([0, 1]))(x, t)
    with pytest.raises(ValueError, match="already has its class labels"):
        model.conditional(1)(x, t, class_labels=torch.zeros(6, dtype=torch.long))


def test_sample_k_depends_only_on_seed_plus_k(tmp_path):
    _, folder = _tiny_native(tmp_path)
    model = load(folder)
    for sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
        batch = model.sample(4, sampler=sampler, steps=5, seed=10, labels=1)
        single = model.sample(1, sampler=sampler, steps=5, seed=12, labels=1)
        assert torch.allclose(batch[2], single[0], atol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(2, cfg_scale=2.0)


def test_process_config_roundtrip():
    for proc in [
        reverie.EDM(sigma_data=0.7),
        reverie.VE(0.01, 50.0),
        reverie.VP.linear(),
        reverie.RectifiedFlow(shift=3.0),
        reverie.VPLinear(),
        reverie.VPCosine(),
    ]:
        back = process_from_config(json.loads(json.dumps(process_to_config(proc))))
        t = torch.linspace(proc.t_min, proc.t_max, 7, dtype=torch.float64)
        assert type(back) is type(proc)
        assert torch.allclose(back.alpha(t), proc.alpha(t)) and torch.allclose(
            back.sigma(t), proc.sigma(t)
        )
    with pytest.raises(ValueError, match="unknown process"):
        process_from_config({"class": "Nope"})


def test_unknown_names_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="digits, two-moons"):
        load("digitz")
    with pytest.raises(ValueError, match="unknown model"):
        load(str(tmp_path / "does" / "not" / "exist"))


def test_hub_ids_download_then_load(tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub.snapshot_download (patched: no network here)."""
    import huggingface_hub as hf
    _, folder = _tiny_native(tmp_path, "hubmodel")
    calls = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls["repo_id"], calls["patterns"] = repo_id, allow_patterns
        return str(folder)

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    model = load("someone/hubmodel")
    assert calls["repo_id"] == "someone/hubmodel" and "*.safetensors" in calls["patterns"]
    assert not any(p.endswith((".bin", ".pt", ".ckpt")) for p in calls["patterns"])
    assert model.name == "someone/hubmodel"

    def failing(repo_id, **kw):
        raise OSError("offline")

    monkeypatch.setattr(hf, "snapshot_download", failing)
    with pytest.raises(ValueError, match="could not fetch"):
        load("someone/else")


def test_corrupt_and_mismatched_native(tmp_path):
    _, folder = _tiny_native(tmp_path)
    cfg = json.loads((folder / "reverie.json").read_text())
    cfg["net"]["config"]["hidden"] = 32
    (folder / "reverie.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load(folder)
    _, folder = _tiny_native(tmp_path, "b")
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt"):
        load(folder)
    _, folder = _tiny_native(tmp_path, "c")
    (folder / "reverie.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(folder)


def test_atomic_dir_keeps_the_old_folder_on_error(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_bundled_two_moons_is_a_good_model():
    """The bundled two-moons model: sliced-W2 to fresh data within 3x of the data-vs-data floor
    (seeded), and a label picks its moon."""
    from reverie.data import two_moons
    from reverie.metrics import sliced_wasserstein

    assert set(BUNDLED) >= {"digits", "two-moons"}
    model = load("two-moons")
    n = 2000
    ref, _ = two_moons(n, generator=torch.Generator().manual_seed(1))
    ref2, _ = two_moons(n, generator=torch.Generator().manual_seed(2))
    floor = sliced_wasserstein(ref, ref2, generator=torch.Generator().manual_seed(0))
    x = model.sample(n, sampler="dpmpp_2m", steps=20, seed=0)
    sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    assert sw < 3 * floor, (sw, floor)
    upper = model.sample(500, steps=20, seed=0, labels=0, cfg_scale=2.0)
    lower = model.sample(500, steps=20, seed=0, labels=1, cfg_scale=2.0)
    # moon 0 is the upper arc: after centring, its points mostly lie above the lower moon's
    assert float(upper[:, 1].mean()) > float(lower[:, 1].mean()) + 0.5


def test_bundled_digits_loads_and_follows_labels():
    """The bundled digits model is a diffusers folder with EDM preconditioning; with CFG its
    samples are classified as the requested digit by a k-NN on the real training digits
    (which itself scores ~98% on the held-out digits)."""
    import sklearn.neighbors as sklearn_neighbors

    from reverie.data import load_digits

    model = load("digits")
    assert model.sample_shape == (1, 8, 8) and model.num_classes == 10 and model.has_null_class
    assert isinstance(model.process, reverie.EDM) and model.prediction == "x0"
    x_tr, y_tr = load_digits("train")
    knn = sklearn_neighbors.KNeighborsClassifier(3).fit(x_tr.reshape(len(x_tr), -1), y_tr)
    labels = torch.arange(100) % 10
    x = model.sample(100, steps=10, seed=0, labels=labels, cfg_scale=2.0)
    assert x.shape == (100, 1, 8, 8) and float(x.abs().max()) < 1.5
    acc = float((torch.from_numpy(knn.predict(x.reshape(100, -1))) == labels).float().mean())
    assert acc >= 0.9, acc
    with pytest.raises(ValueError, match=r"valid labels are 0\.\.9"):
        model.conditional(10)


def test_load_dispatches_masked_diffusion_models(tmp_path):
    """``reverie.load`` also opens the bundled masked-diffusion LM and reverie-discrete folders."""
    import shutil

    from reverie.discrete import TokenDenoiserBase, generate
    from reverie.discrete.loading import bundled_path

    lm = reverie.load("tiny-json")
    assert isinstance(lm, TokenDenoiserBase)
    copy = tmp_path / "lm"
    shutil.copytree(bundled_path("tiny-json"), copy)
    again = reverie.load(copy)
    g = torch.Generator().manual_seed(0)
    a = generate(lm, length=16, steps=4, n=2, generator=g)
    b = generate(again, length=16, steps=4, n=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)

"""``reverie restore`` (needs the bundled digits model) and its argument checks."""

import pytest

from reverie.cli import main


def _digits_available() -> bool:
    try:
        from reverie.hub import load

        load("digits")
    except Exception:
        return False
    return True


def test_restore_rejects_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    with pytest.raises(SystemExit):
        main(["restore", "--task", "denoise", "--out", out])
    code = main(["restore", "--task", "inpaint", "--method", "nope", "--out", out])
    assert code == 2 and "unknown method 'nope'" in capsys.readouterr().err


def fits_measurement(samples, y, op, decoys) -> bool:
    """The samples explain the measurement ``y``: their mean squared residual ``|A x - y|^2``
    is under half that of unrelated test digits (decoys, drawn as if from the prior)."""
    def res(x):
        return float(((op.A(x) - y) ** 2).mean())

    return res(samples) < 0.5 * res(decoys)


@pytest.mark.skipif(not _digits_available(), reason="the bundled digits model is not available")
@pytest.mark.parametrize(
    "task", ["inpaint", pytest.param("superres", marks=pytest.mark.slow),
             pytest.param("blur", marks=pytest.mark.slow)]
)
def test_restore_writes_a_grid(tmp_path, monkeypatch, task):
    """The grid holds, per image, the truth, the measurement and samples that fit the
    measurement (residual 0.005-0.022 against 0.03-0.6 for other digits, measured); the
    samples of one image do not fit the other image's measurement (the check rejects them)."""
    import torch

    import reverie.plot
    from reverie.bench.inverse import digits_task
    from reverie.data import load_digits

    shown = {}
    real = reverie.plot.image_grid

    def spy(grid, path, **kw):
        shown.update(grid=grid.clone(), **kw)
        return real(grid, path, **kw)

    monkeypatch.setattr(reverie.plot, "image_grid", spy)
    out = tmp_path / f"{task}.png"
    code = main(["restore", "--task", task, "--method", "ddrm", "--steps", "5", "--samples",
                 "2", "--images", "2", "--out", str(out)])
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert shown["ncol"] == 4 and shown["grid"].shape == (8, 1, 8, 8)
    rows = shown["grid"].reshape(2, 4, 1, 8, 8)  # per image: truth | measurement | 2 samples
    images, _ = load_digits("test")
    torch.testing.assert_close(rows[:, 0], images[:2].float())
    # the measurement as the command drew it (same seed, same order of draws)
    g = torch.Generator().manual_seed(0)
    op = digits_task(task, (1, 8, 8), g)
    clean = op.A(rows[:, 0])
    y = clean + 0.05 * torch.randn(clean.shape, generator=g)
    decoys = images[2:6].float()
    for i in range(2):
        assert fits_measurement(rows[i, 2:], y[i : i + 1], op, decoys)
        assert not fits_measurement(rows[1 - i, 2:], y[i : i + 1], op, decoys)

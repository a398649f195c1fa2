"""Restoring digits with the bundled model: ``reverie restore`` and its argument checks, and
posterior samples that beat the unconditional model on inpainting, super-resolution and blur.
The model is part of reverie: a loader failure fails these tests."""

import pytest
import torch

from reverie.bench.inverse import digits_task
from reverie.cli import main
from reverie.inverse import measurement_consistency, psnr, solve

SIGMA_Y = 0.05


@pytest.fixture(scope="module")
def digits():
    from reverie.data import load_digits
    from reverie.hub import load

    images, _ = load_digits("test")
    return load("digits"), images[:8].to(torch.float32)


def _problem(task, x_true):
    g = torch.Generator().manual_seed(0)
    op = digits_task(task, tuple(x_true.shape[1:]), g)
    clean = op.A(x_true)
    return op, clean + SIGMA_Y * torch.randn(clean.shape, generator=g)


def check_restores(x, x_true, op, y, floor_psnr):
    """Restored: mean PSNR to the truth 4 dB above ``floor_psnr`` (the unconditional model's)
    and measurements met to 2.5 noise levels (RMS of ``y - A x``)."""
    ok_psnr = float(psnr(x, x_true).mean()) > floor_psnr + 4.0
    return ok_psnr and float(measurement_consistency(op, x, y).mean()) < 2.5 * SIGMA_Y


@pytest.mark.parametrize("task", ["inpaint", "superres", "blur"])
def test_posterior_samples_restore_the_digits(digits, task):
    """PiGDM, 20 steps, 8 test images. Measured: PSNR inpaint 18.2, superres 15.3, blur 19.6 dB,
    RMS(y - A x) 0.06-0.08; unconditional samples 8.9 dB and RMS 0.3-0.7. The wrong variants
    -- unconditional samples, and posterior samples for the neighbouring image's measurement --
    fail the same check."""
    model, x_true = digits
    op, y = _problem(task, x_true)
    prior = model.sample(8, sampler="dpmpp_2m", steps=20, seed=0).to(torch.float32)
    floor = float(psnr(prior, x_true).mean())

    def restore(meas):
        return solve(model.denoiser, op, meas, SIGMA_Y, method="pigdm", steps=20, n=8,
                     generator=torch.Generator().manual_seed(1))

    assert check_restores(restore(y), x_true, op, y, floor)
    assert not check_restores(prior, x_true, op, y, floor)
    shifted = y.roll(1, 0)
    assert not check_restores(restore(shifted), x_true, op, y, floor)


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


@pytest.mark.parametrize("task", ["inpaint", "superres", "blur"])
def test_restore_writes_a_grid(tmp_path, monkeypatch, task):
    """The grid holds, per image, the truth, the measurement and samples that fit the
    measurement (residual 0.005-0.022 against 0.03-0.6 for other digits, measured); the
    samples of one image do not fit the other image's measurement (the check rejects them)."""
    import reverie.plot
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

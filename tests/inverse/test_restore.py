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


@pytest.mark.skipif(not _digits_available(), reason="the bundled digits model is not available")
@pytest.mark.parametrize(
    "task", ["inpaint", pytest.param("superres", marks=pytest.mark.slow),
             pytest.param("blur", marks=pytest.mark.slow)]
)
def test_restore_writes_a_grid(tmp_path, task):
    out = tmp_path / f"{task}.png"
    code = main(["restore", "--task", task, "--method", "ddrm", "--steps", "5", "--samples",
                 "2", "--images", "2", "--out", str(out)])
    assert code == 0 and out.stat().st_size > 1000

"""reverie.plot: grids hold the right pixels, figures are written atomically."""

from __future__ import annotations

import matplotlib  # noqa: E402,F401 -- a dev dependency: a missing install fails
import numpy as np
import pytest
import torch

from reverie import plot  # noqa: E402


def test_mosaic_places_each_image():
    imgs = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0, 0.5, -0.5)])
    m = plot.mosaic(imgs, ncol=3, pad=1, value_range=(-1, 1))
    assert m.shape == (2 * 3 - 1, 3 * 4 - 1)
    assert np.allclose(m[0:2, 0:3], 0.0) and np.allclose(m[0:2, 4:7], 0.5)
    assert np.allclose(m[0:2, 8:11], 1.0) and np.allclose(m[3:5, 0:3], 0.75)
    assert np.allclose(m[3:5, 4:7], 0.25) and np.allclose(m[3:5, 8:11], 0.0)  # empty cell = pad
    rgb = plot.mosaic(torch.zeros(4, 3, 2, 2), value_range=(0, 1))
    assert rgb.shape == (5, 5, 3)
    with pytest.raises(ValueError, match="shape"):
        plot.mosaic(torch.zeros(4, 2, 5, 5))


def test_image_grid_writes_png(tmp_path):
    path = tmp_path / "grid.png"
    fig = plot.image_grid(torch.rand(10, 1, 8, 8) * 2 - 1, path, ncol=5, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left behind


def test_scatter_and_trajectories(tmp_path):
    pts = torch.randn(100, 2)
    plot.scatter(pts, tmp_path / "s.svg", labels=torch.arange(100) % 2, reference=pts)
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    plot.trajectories(torch.randn(6, 50, 2), tmp_path / "t.pdf")
    assert (tmp_path / "t.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot.scatter(torch.randn(10, 3))
    with pytest.raises(ValueError, match="labels"):
        plot.scatter(pts, labels=[0, 1])
    with pytest.raises(ValueError, match="T >= 2"):
        plot.trajectories(torch.randn(1, 5, 2))


def test_failed_write_leaves_nothing(tmp_path):
    fig = plot.scatter(torch.randn(10, 2))
    with pytest.raises(ValueError, match="cannot write a figure"):
        plot.save_figure(fig, tmp_path / "x.txt")

    class Boom(Exception):
        pass

    def broken_savefig(*a, **k):
        raise Boom

    fig.savefig = broken_savefig
    with pytest.raises(Boom):
        plot.save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []

"""Large and long outputs (reverie.large) against exact Gaussian fields: a window model is the
exact denoiser of a window-sized stationary field; tiled, panoramic and FIFO outputs of a
larger field are compared with the big field's exact covariance. Deterministic samplers of a
linear denoiser are linear maps of their noise, so the output covariance is exact
(``linear_covariance``); every check has a sibling that a wrong variant fails."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.large import fifo, fifo_noise_frames, outpaint, rotating, tiled, upscale
from reverie.reference.fields import GaussianField, linear_covariance

PROC = reverie.EDM()


def _cov(den, shape, steps=40, sampler="dpmpp_2m"):
    d = 1
    for s in shape:
        d *= s
    return linear_covariance(lambda z: reverie.sample(den, z.reshape(-1, *shape), sampler,
                                                      steps), d)


def _seam_error(cov, exact, starts, tile):
    """Largest covariance error (lags 0 and 1) on pairs that straddle a naive tile edge."""
    n = cov.shape[0]
    edges = sorted({s + tile for s in starts if s + tile < n})
    err = (cov - exact).abs()
    return max(float(err[e - 1, e]) for e in edges)


def test_tiled_1d_matches_the_big_field_and_naive_tiles_fail():
    win = GaussianField.stationary(16, 2.0).denoiser(PROC)
    big = GaussianField.stationary(48, 2.0)
    good = _cov(tiled(win, 16, 8, weights="linear"), (48,))
    naive = _cov(tiled(win, 16, 0), (48,))
    assert float((good - big.cov).abs().max()) < 0.12   # measured 0.07
    assert _seam_error(good, big.cov, [0, 16, 32], 16) < 0.12
    # the check rejects naive non-overlapping tiles: independent tiles, no covariance at seams
    assert _seam_error(naive, big.cov, [0, 16, 32], 16) > 0.5
    # inside a naive tile the window model is exact (the sampler's own error)
    assert float((naive[2:14, 2:14] - big.cov[2:14, 2:14]).abs().max()) < 0.02


def test_tiled_2d_matches_the_big_field():
    win = GaussianField.stationary((10, 10), 2.0).denoiser(PROC)
    big = GaussianField.stationary((14, 20), 2.0)
    good = _cov(tiled(win, (10, 10), 5, weights="linear"), (14, 20), steps=30)
    naive = _cov(tiled(win, (10, 10), 0), (14, 20), steps=30)
    assert float((good - big.cov).abs().max()) < 0.2   # measured 0.15 (16 x 24)
    assert float((naive - big.cov).abs().max()) > 0.5


def test_panorama_seam_needs_wrap_around_tiles():
    n, w = 48, 16
    ring = GaussianField.stationary(n, 2.0, periodic=True)
    win = GaussianField.stationary(w, 2.0).denoiser(PROC)
    wrap = _cov(tiled(win, w, 8, weights="linear", wrap=True), (n,))
    flat = _cov(tiled(win, w, 8, weights="linear"), (n,))
    assert float((wrap - ring.cov).abs().max()) < 0.12
    assert abs(float(wrap[n - 1, 0] - ring.cov[n - 1, 0])) < 0.12
    assert abs(float(flat[n - 1, 0] - ring.cov[n - 1, 0])) > 0.5   # the seam of a flat canvas


def test_rotation_joins_the_panorama_seam():
    n = 32
    ring = GaussianField.stationary(n, 2.0, periodic=True)
    flat = GaussianField.stationary(n, 2.0).denoiser(PROC)  # a full-width model, no wrap
    rot = _cov(rotating(flat, 11), (n,), steps=30)
    still = _cov(flat, (n,), steps=30)
    assert abs(float(rot[n - 1, 0] - ring.cov[n - 1, 0])) < 0.05
    assert abs(float(still[n - 1, 0] - ring.cov[n - 1, 0])) > 0.5


def test_shifted_tiles_spread_the_seams():
    """FSTD: non-overlapping tiles at a random offset per step (averaged over a few runs)."""
    win = GaussianField.stationary(16, 2.0).denoiser(PROC)
    big = GaussianField.stationary(48, 2.0)
    covs = [_cov(tiled(win, 16, 0, shift=True, generator=torch.Generator().manual_seed(s)),
                 (48,), steps=30) for s in range(4)]
    shifted = torch.stack(covs).mean(0)
    assert _seam_error(shifted, big.cov, [0, 16, 32], 16) < 0.35
    assert _seam_error(_cov(tiled(win, 16, 0), (48,), steps=30), big.cov, [0, 16, 32], 16) > 0.5


def test_any_size_refinement_restores_the_covariance():
    w, n, scale = 16, 48, 3.0
    base = GaussianField.stationary((1, w), scale * w / n).denoiser(PROC)
    win = GaussianField.stationary((1, w), scale).denoiser(PROC)
    big = GaussianField.stationary(n, scale)

    def run(strength):
        def fn(z):
            small = reverie.sample(base, z[:, None, :w], "dpmpp_2m", 30)
            return upscale(win, small, (n,), tile=w, overlap=8, shift=False, weights="linear",
                           strength=strength, steps=30, noise=z[:, None, w:], mode="linear")
        return float((linear_covariance(fn, w + n) - big.cov).abs().max())

    assert run(0.8) < 0.1   # measured 0.09 (0.7)
    assert run(0.2) > 0.15  # little refinement keeps the interpolation's variance loss


def _ar1_error(cov, n_frames, d, exact):
    return float((cov - exact).abs().max()), torch.diagonal(cov).reshape(n_frames, d)[:, 0]


def test_fifo_matches_the_ar1_sequence_without_drift_and_a_wrong_ladder_fails():
    space = GaussianField.stationary(2, 1.0)
    f, parts, length = 8, 4, 24
    win = GaussianField.ar1(f, 0.5, space).denoiser(PROC)
    exact = GaussianField.ar1(length, 0.5, space).cov
    k = fifo_noise_frames(length, f, parts)

    def cov(den, solver="dpmpp_2m"):
        return linear_covariance(lambda z: fifo(den, length, (z.shape[0], 2), partitions=parts,
                                                noise=z.reshape(-1, k, 2), solver=solver), 2 * k)

    good, var = _ar1_error(cov(win), length, 2, exact)
    assert good < 0.08                                  # measured 0.052
    assert float(var[4:].max() - var[4:].min()) < 0.02  # no drift of the variance with length

    class Mislabelled(reverie.DenoiserBase):  # the model is told noise levels 15% too high
        process, window = PROC, f

        def __call__(self, x, t, **cond):
            return win(x, t * 1.15)

    bad, _ = _ar1_error(cov(Mislabelled()), length, 2, exact)
    assert bad > 0.08
    # the paper's DDIM steps on a 32-level ladder are far coarser than the 2M steps
    ddim, _ = _ar1_error(cov(win, "ddim"), length, 2, exact)
    assert ddim > 2 * good


def test_outpainting_keeps_the_known_region_and_needs_wrap_at_the_far_seam():
    n, w = 48, 16
    ring = GaussianField.stationary(n, 3.0, periodic=True, kernel="matern32")
    win = GaussianField.stationary(w, 3.0, kernel="matern32").denoiser(PROC)
    y = ring.sample(1, torch.Generator().manual_seed(0))[0]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:12] = True
    c, u = ring.cov, ~mask
    gain = c[u][:, mask] @ torch.linalg.inv(c[mask][:, mask])
    mean, post = gain @ y[mask], c[u][:, u] - gain @ c[mask][:, u]

    def stats(den):
        x = outpaint(den, y, mask, sampler="ddpm", steps=30, n=1500,
                     generator=torch.Generator().manual_seed(1))
        assert torch.equal(x[:, mask], y[mask].expand(1500, -1))
        return (x[:, u].mean(0) - mean).abs().max(), torch.cov(x[:, u].T)

    m_err, cov = stats(tiled(win, w, 12, weights="linear", wrap=True))
    assert m_err < 0.2                                         # measured 0.09
    assert float((cov - post).abs().max()) < 0.4               # replacement's bias: 0.28
    _, flat = stats(tiled(win, w, 12, weights="linear"))       # no wrap: the far seam is free
    assert float(flat[-1, -1] - post[-1, -1]) > 0.5
    # a posterior sampler of reverie.inverse on the same canvas; an unconditional sample's
    # mean (0) would be off by max |mean| > 0.5
    x = outpaint(tiled(win, w, 12, weights="linear", wrap=True), y, mask, method="ddrm",
                 steps=30, n=800, generator=torch.Generator().manual_seed(2))
    assert float(mean.abs().max()) > 0.5
    assert float((x[:, u].mean(0) - mean).abs().max()) < 0.3    # measured 0.13


def test_bad_input_is_refused():
    win = GaussianField.stationary(8, 2.0).denoiser(PROC)
    with pytest.raises(ValueError, match="larger than the output"):
        tiled(win, 8, 2)(torch.zeros(1, 6), 1.0)
    with pytest.raises(ValueError, match="cannot fit"):
        tiled(win, 8, 8)
    with pytest.raises(ValueError, match="weights"):
        tiled(win, 8, 2, weights="cosine")
    seq = GaussianField.ar1(4, 0.5, GaussianField.stationary(2, 1.0)).denoiser(PROC)
    with pytest.raises(ValueError, match="longer than the model's window"):
        fifo(seq, 10, (1, 2), window=6)
    with pytest.raises(ValueError, match="even window"):
        fifo(seq, 10, (1, 2), window=3)
    with pytest.raises(ValueError, match="noise must be"):
        fifo(seq, 10, (1, 2), noise=torch.zeros(1, 3, 2))


def test_one_window_is_the_model_and_conditioning_follows_each_window():
    field = GaussianField.stationary(12, 2.0)
    assert torch.allclose(GaussianField.stationary(30, 2.0).window((5,), (12,)).cov, field.cov)
    den = field.denoiser(PROC)
    x = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tiled(den, 12)(x, 2.0), den(x, 2.0))
    assert torch.allclose(tiled(den, 12, wrap=True)(x, 2.0), den(x, 2.0))

    class Scaled(reverie.DenoiserBase):  # uses a per-sample conditioning tensor
        process = PROC

        def __call__(self, x, t, scale=None):
            return x * scale.reshape(-1, 1)

    scale = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = tiled(Scaled(), 4, 2)(torch.ones(3, 10, dtype=torch.float64), 1.0, scale=scale)
    assert torch.allclose(out, scale[:, None].expand(3, 10))


def test_frame_denoiser_wraps_a_per_frame_network():
    from reverie.large import FrameDenoiser

    seq = GaussianField.ar1(4, 0.5, GaussianField.stationary(2, 1.0)).denoiser(PROC)

    def eps_net(x, t):  # an eps-predicting network with one time per frame
        sigma = t[..., None]
        return (x - seq(x, t)) / sigma

    net = FrameDenoiser(eps_net, PROC, "eps", window=4)
    x = torch.randn(2, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0.5, 1.0, 2.0, 4.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    assert torch.allclose(net(x, t), seq(x, t))
    assert torch.allclose(net(x, 1.5), seq(x, 1.5))


def test_aspect_shape_keeps_the_trained_area():
    from reverie.large import aspect_shape

    assert aspect_shape((64, 256), (32, 32), 8) == (16, 64)
    assert aspect_shape((48, 48), (32, 32)) == (32, 32)
    with pytest.raises(ValueError, match="rank"):
        aspect_shape((64,), (32, 32))

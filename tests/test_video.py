"""SparseCtrl in miniature (reverie.video): a sparse condition encoder over a frozen exact video
model, judged against the exact law of the clip given a few keyframes."""

import pytest
import torch

from reverie.process import EDM
from reverie.samplers import sample
from reverie.timeseries.metrics import gaussian_errors
from reverie.video import (
    MovingVideo,
    best_encoder,
    controls,
    encoder_limit,
    sparsectrl_denoiser,
    train_sparse_encoder,
)

N, NOISE = 1500, 0.05


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    video, process = MovingVideo(), EDM(sigma_data=1.0)
    enc, rec = train_sparse_encoder(video, process, steps=300, noise_std=NOISE)
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(video.frames, dtype=torch.bool)
    mask[[0, 5]] = True
    keyframes = video.sample(1, g)[0][mask] + NOISE * torch.randn(2, video.pixels, generator=g,
                                                                  dtype=torch.float64)
    return video, process, enc, rec, mask, keyframes


def _draw(video, process, encoder, cond):
    noise = torch.randn(N, video.frames, video.pixels, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    x = sample(sparsectrl_denoiser(video, encoder, process), noise, "heun", 16, cond=cond)
    return x.reshape(N, -1)


def test_moving_video_law_is_stationary_and_moves():
    v = MovingVideo(frames=4, pixels=5, a=0.8)
    c = v.cov.reshape(4, 5, 4, 5)
    assert torch.allclose(c[2, :, 2], c[0, :, 0])  # every frame has the law N(0, C)
    # frame 1 is 0.8 * (frame 0 shifted by one pixel) + fresh noise
    assert torch.allclose(c[1, :, 0], 0.8 * torch.roll(c[0, :, 0], 1, 0))
    with pytest.raises(ValueError, match="mask must be"):
        v.observation(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="keyframes must hold"):
        v.conditional(torch.tensor([True, False, False, False]), torch.zeros(2, 5), 0.1)


def test_best_encoder_reaches_conditional_mean_with_prior_spread(setup):
    """The closed-form best encoder h = (I - W_sigma) E[x0|y] (EDM: alpha = 1) over the
    frozen linear model samples N(E[x0|y], S) exactly; a 15%-off residual is rejected."""
    video, process, _, _, mask, kf = setup
    limit = encoder_limit(video, mask, kf, NOISE)
    mu, s = limit.means[0], video.cov

    def best(scale):
        return best_encoder(video, mask, kf, NOISE, scale)

    cond = controls(video, mask, kf, N)
    good = gaussian_errors(_draw(video, process, best(1.0), cond), mu, s)
    bad = gaussian_errors(_draw(video, process, best(0.85), cond), mu, s)
    assert good["mean_z"] < 5 and good["w2"] < 0.08, good
    assert bad["mean_z"] > 10, bad


def test_trained_encoder_moves_the_clip_to_the_keyframes(setup):
    """The trained encoder (which sees conditions, mask and time, never the noisy latent)
    brings the sample mean to the exact conditional mean; feeding it a mask shifted by one frame
    or no condition at all does not."""
    video, process, enc, rec, mask, kf = setup
    law = video.conditional(mask, kf, NOISE)
    m, c = law.means[0], law.covariances[0]
    err = {}
    err["sparsectrl"] = gaussian_errors(_draw(video, process, enc, controls(video, mask, kf, N)),
                                        m, c)["mean_err"]
    err["shifted"] = gaussian_errors(
        _draw(video, process, enc, controls(video, mask.roll(1), kf, N)), m, c)["mean_err"]
    none = controls(video, mask, kf, N)
    none = {"cond": torch.zeros_like(none["cond"]), "mask": torch.zeros_like(none["mask"])}
    err["dropped"] = gaussian_errors(_draw(video, process, enc, none), m, c)["mean_err"]
    assert err["sparsectrl"] < 0.7 * err["shifted"], (err, rec)
    assert err["sparsectrl"] < 0.5 * err["dropped"], (err, rec)
    assert err["dropped"] > 0.5, err  # the frozen model alone is the prior: far from the keyframes


def test_encoder_rejects_bad_shapes(setup):
    video, process, enc, _, mask, kf = setup
    with pytest.raises(ValueError, match="keyframes must be"):
        controls(video, mask, kf[:1], 4)
    with pytest.raises(ValueError, match="keyframes must be a range"):
        train_sparse_encoder(video, process, keyframes=(0, 2))
    with pytest.raises(ValueError, match="cond must be"):
        enc(torch.zeros(2, video.frames + 1, video.pixels), torch.zeros(2, video.frames),
            torch.ones(2))

"""reverie.functions: Gaussian-process data at any locations, the exact denoiser, NDP's
conditional sampling against the exact GP posterior, the exchangeable NDP network."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.functions import GP, Kernel, NDPNet, condition, gaussian_errors, ndp_denoiser
from reverie.process import VPLinear
from reverie.reference import Gaussian


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GP_SE = GP(Kernel("se", 0.3), noise=0.3)
X_OBS = torch.tensor([-0.7, -0.1, 0.5])
X_TGT = torch.tensor([-0.4, 0.2, 0.9])


def spread(samples: torch.Tensor, factor: float) -> torch.Tensor:
    """The samples with their spread about the mean scaled (a noise scale ``factor`` off)."""
    m = samples.mean(0)
    return m + factor * (samples - m)


@pytest.mark.parametrize("name", ["se", "matern12", "matern32", "matern52", "periodic"])
def test_samples_follow_the_kernel(name):
    """Exact draws at 6 random locations: errors at the Monte-Carlo floor (n = 4000: mean
    ~0.016, cov ~0.02-0.03); the same draws with their spread 15% off are rejected (cov
    error ~0.3)."""
    gp = GP(Kernel(name, 0.4, variance=1.5, period=0.7))
    x = gp.locations(1, 6, gen(0))[0]
    s = gp.sample(x, 4000, gen(1))
    err = gaussian_errors(s, torch.zeros(6), gp.cov(x))
    assert err["mean"] < 0.06 and err["cov"] < 0.1, err
    assert gaussian_errors(spread(s, 1.15), torch.zeros(6), gp.cov(x))["cov"] > 0.2
    k = gp.kernel(x, x)
    assert torch.allclose(torch.diagonal(k), torch.full((6,), 1.5, dtype=torch.float64))
    if name == "periodic":
        assert torch.allclose(gp.kernel(x, x + 0.7), k)


def test_posterior_is_brute_force_conditioning():
    """The posterior equals conditioning the joint Gaussian of [observed, target] (Schur
    complement with an explicit inverse), for shared and batched locations."""
    y = GP_SE.sample(X_OBS, 2, gen(0))
    mean, cov = GP_SE.posterior(X_OBS, y, X_TGT)
    joint = GP_SE.cov(torch.cat([X_OBS, X_TGT]))
    a, b, c = joint[:3, :3], joint[:3, 3:], joint[3:, 3:]
    torch.testing.assert_close(mean, y @ torch.linalg.inv(a) @ b)
    torch.testing.assert_close(cov, c - b.T @ torch.linalg.inv(a) @ b)
    mb, cb = GP_SE.posterior(X_OBS.expand(2, 3), y, X_TGT.expand(2, 3))
    torch.testing.assert_close(mb, mean)
    torch.testing.assert_close(cb[1], cov)


def test_exact_denoiser_at_any_locations():
    """Shared locations use the reference Gaussian; one set per sample (a batched solve) gives
    the same answer row by row."""
    x = GP_SE.locations(3, 5, gen(0))
    y = torch.randn(3, 5, generator=gen(1), dtype=torch.float64)
    a, s = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.4, 0.8, 0.99])
    out = GP_SE.denoise_at(y, x, a, s)
    for i in range(3):
        ref = Gaussian(torch.zeros(5), GP_SE.cov(x[i])).denoise_at(y[i:i + 1], a[i], s[i])
        torch.testing.assert_close(out[i:i + 1], ref)
        torch.testing.assert_close(GP_SE.denoise_at(y[i:i + 1], x[i], a[i], s[i]), ref)


def test_sampling_is_resolution_free_with_the_exact_denoiser():
    """FDP's claim on the exact denoiser: any sampler at any grid (here 40 points) gives the
    GP law there (errors at the floor); a denoiser with a lengthscale 15% off is rejected."""
    grid = torch.linspace(-1, 1, 40)
    noise = torch.randn(3000, 40, generator=gen(0), dtype=torch.float64)
    target = GP_SE.cov(grid)
    proc = VPLinear()
    s = reverie.sample(GP_SE.denoiser(proc), noise, "dpmpp_2m", 25, cond={"locations": grid})
    err = gaussian_errors(s, torch.zeros(40), target)
    wrong = GP(Kernel("se", 0.3 * 1.15), noise=0.3).denoiser(proc)
    s_wrong = reverie.sample(wrong, noise, "dpmpp_2m", 25, cond={"locations": grid})
    err_wrong = gaussian_errors(s_wrong, torch.zeros(40), target)
    assert err["mean"] < 0.06 and err["cov"] < 0.08, err
    assert err_wrong["cov"] > 0.12, err_wrong


@pytest.fixture(scope="module")
def conditional():
    """RePaint-style conditional samples of the exact denoiser (matern 1/2 GP, 100 DDPM steps,
    3 resamplings) and the exact posterior at the targets."""
    gp = GP(Kernel("matern12", 0.3), noise=0.3)
    y_obs = gp.sample(X_OBS, 1, gen(5))[0]
    mean, cov = gp.posterior(X_OBS, y_obs, X_TGT)
    den = gp.denoiser(VPLinear())
    s = condition(den, X_OBS, y_obs, X_TGT, n=1500, steps=100, resample=3, generator=gen(6))
    return gp, den, y_obs, mean, cov, s


def close_to_posterior(err: dict[str, float]) -> bool:
    """Tolerance of the conditional check: RePaint with the exact denoiser at 100 x 3 steps
    measured mean 0.07-0.10, cov 0.06 (Monte-Carlo floor at n = 1500: 0.03, 0.05; DDPM's
    first-order shrinkage of the variance and RePaint's finite resampling make the rest)."""
    return err["mean"] < 0.15 and err["cov"] < 0.15


def test_conditional_samples_match_the_exact_posterior(conditional):
    gp, den, y_obs, mean, cov, s = conditional
    err = gaussian_errors(s, mean, cov)
    assert close_to_posterior(err), err


def test_conditional_check_rejects_wrong_variants(conditional):
    """A point estimate (the samples' mean repeated, cov error 1), the spread 15% off (cov
    error ~0.27), plain replacement (resample = 1) and the observations ignored (the prior)
    are rejected."""
    gp, den, y_obs, mean, cov, s = conditional
    point = s.mean(0).expand_as(s)
    assert not close_to_posterior(gaussian_errors(point, mean, cov))
    assert not close_to_posterior(gaussian_errors(spread(s, 1.15), mean, cov))
    replace = condition(den, X_OBS, y_obs, X_TGT, n=1500, steps=100, resample=1,
                        generator=gen(6))
    assert not close_to_posterior(gaussian_errors(replace, mean, cov))
    prior = gp.sample(X_TGT, 1500, gen(7))
    assert not close_to_posterior(gaussian_errors(prior, mean, cov))


def test_ndp_network_is_exchangeable():
    """Permuting the points permutes the network's output (bi-dimensional attention has no
    position encoding); shared [N] locations equal the broadcast [B, N] ones."""
    torch.manual_seed(0)
    net = NDPNet(hidden=16, heads=2, layers=2).eval()
    y, x, t = torch.randn(3, 7), torch.rand(3, 7) * 2 - 1, torch.rand(3)
    perm = torch.randperm(7)
    with torch.no_grad():
        out = net(y, t, x)
        torch.testing.assert_close(net(y[:, perm], t, x[:, perm]), out[:, perm])
        torch.testing.assert_close(net(y, t, x[0]), net(y, t, x[0].expand(3, 7)))
        den = ndp_denoiser(net, VPLinear())
        assert den(y.double(), 0.5, locations=x).shape == (3, 7)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="lengthscale"):
        Kernel("se", 0.0)
    with pytest.raises(ValueError, match="lengthscale"):
        Kernel("matern32", -1.0)
    with pytest.raises(ValueError, match="unknown kernel"):
        Kernel("rbf")
    with pytest.raises(ValueError, match="same number of points"):
        GP_SE.posterior(X_OBS, torch.zeros(4), X_TGT)
    with pytest.raises(ValueError, match="domain"):
        GP_SE.posterior(torch.tensor([0.0, 1.5]), torch.zeros(2), X_TGT)
    den = GP_SE.denoiser(VPLinear())
    with pytest.raises(ValueError, match="same number of points"):
        condition(den, X_OBS, torch.zeros(2), X_TGT)
    with pytest.raises(ValueError, match="domain"):
        condition(den, torch.tensor([-3.0, 0.0, 0.2]), torch.zeros(3), X_TGT)
    with pytest.raises(ValueError, match="locations"):
        den(torch.zeros(2, 3, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="same number of points"):
        den(torch.zeros(2, 4, dtype=torch.float64), 0.5, locations=X_OBS)


def test_bundled_ndp_samples_follow_the_gp_law():
    """The bundled NDP (scripts/train_ndp.py) at 12 random points, within its training range
    of 8-16: covariance error 0.12 measured (floor at n = 400 ~0.07), under 0.25; an untrained
    network of the same shape and independent values of the right variance (no correlation)
    are rejected (0.8)."""
    from reverie.functions import load_ndp

    den, gp = load_ndp()
    x = gp.locations(1, 12, gen(3))[0]
    noise = torch.randn(400, 12, generator=gen(0), dtype=torch.float64)
    cov = gp.cov(x)
    s = reverie.sample(den, noise, "dpmpp_2m", 15, cond={"locations": x})
    err = gaussian_errors(s, torch.zeros(12), cov)
    assert err["mean"] < 0.15 and err["cov"] < 0.25, err
    torch.manual_seed(0)
    untrained = ndp_denoiser(NDPNet(**den.fn.config).eval(), den.process)
    s_un = reverie.sample(untrained, noise, "dpmpp_2m", 15, cond={"locations": x})
    assert gaussian_errors(s_un, torch.zeros(12), cov)["cov"] > 0.5
    independent = noise * torch.diagonal(cov).sqrt()
    assert gaussian_errors(independent, torch.zeros(12), cov)["cov"] > 0.5

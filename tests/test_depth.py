"""reverie.depth (GRIN in miniature): the sampling pipeline on an exact Gaussian scene prior,
the interpolation baselines on planes, the metric encoding, the network's set conditioning;
each accuracy check with a deliberately wrong sibling that it rejects."""

import pytest
import torch

from reverie.denoisers import Denoiser
from reverie.depth import (
    GRINNet,
    LogDepth,
    PlaneLogDepth,
    depth_errors,
    interpolate,
    pixel_grid,
    predict_depth,
    render_scenes,
    sparse_points,
)
from reverie.functions import gaussian_errors
from reverie.process import VPLinear
from reverie.reference.gaussian import Gaussian

SIZE = 6


def _scene(prior, k=5, seed=0):
    """Points of one plane drawn from the prior: uv [1, k, 2] and metric depths [1, k]."""
    g = torch.Generator().manual_seed(seed)
    theta = prior.mean + prior.cov.diagonal().sqrt() * torch.randn(3, generator=g,
                                                                    dtype=torch.float64)
    uv = torch.rand(1, k, 2, generator=g, dtype=torch.float64) * 1.8 - 0.9
    x = prior._features(uv) @ theta + prior.obs * torch.randn(1, k, generator=g,
                                                              dtype=torch.float64)
    return uv, LogDepth().decode(x)


def _errors(prior, uv, depth, denoiser=None, scale=1.0):
    den = prior if denoiser is None else denoiser
    _, maps = predict_depth(den, uv, depth, SIZE, samples=600, steps=25)
    maps = maps * scale
    law = prior.posterior(uv[0], LogDepth().encode(depth[0]))
    return gaussian_errors(LogDepth().encode(maps[:, 0].clamp(0.5, 20)).reshape(600, -1),
                           law.mean(), law.covariance())


def _Fixed(fn, process):
    """A wrong denoiser for the siblings: ``fn(flat x, t)`` on flattened maps."""
    return Denoiser(lambda x, t, **cond: fn(x.reshape(x.shape[0], -1), t).reshape(x.shape),
                    process, prediction="x0")


def test_pipeline_draws_the_exact_posterior_and_rejects_wrong_variants():
    prior = PlaneLogDepth(VPLinear(), SIZE, mean=(0.0, 0.0, 0.2), scale=(0.15, 0.1, 0.1))
    uv, depth = _scene(prior)
    # Monte-Carlo floor at n = 600 in 36 dimensions: mean ~0.04, cov ~0.21
    err = _errors(prior, uv, depth)
    assert err["mean"] < 0.15 and err["cov"] < 0.3, err
    # ignoring the points (the prior's denoiser) is rejected
    bad = _errors(prior, uv, depth, denoiser=_Fixed(prior.prior().denoiser(prior.process),
                                                    prior.process))
    assert bad["mean"] > 0.5, bad
    # a point estimate (the posterior mean at every step) instead of the posterior is rejected
    law = prior.posterior(uv[0], LogDepth().encode(depth[0]))
    point = _errors(prior, uv, depth, denoiser=_Fixed(
        lambda x, t: law.mean().expand(x.shape[0], -1), prior.process))
    assert point["cov"] > 0.9, point
    # metric depths 15% too far (a wrong metric scale) are rejected
    wrong = _errors(prior, uv, depth, scale=1.15)
    assert wrong["mean"] > 0.3, wrong


def test_posterior_matches_brute_force_conditioning():
    """The closed-form posterior equals conditioning the joint Gaussian of (pixels, points)."""
    prior = PlaneLogDepth(VPLinear(), 3)
    uv = torch.tensor([[0.1, -0.4], [-0.7, 0.5]], dtype=torch.float64)
    vals = torch.tensor([0.3, -0.1], dtype=torch.float64)
    a = torch.cat([prior._features(pixel_grid(3)), prior._features(uv)])
    cov = a @ prior.cov @ a.T + torch.diag(torch.cat([torch.full((9,), prior.pixel**2),
                                                      torch.full((2,), prior.obs**2)]))
    mu = a @ prior.mean
    gain = cov[:9, 9:] @ torch.linalg.inv(cov[9:, 9:])
    law = prior.posterior(uv, vals)
    assert torch.allclose(law.mean(), mu[:9] + gain @ (vals - mu[9:]), atol=1e-12)
    assert torch.allclose(law.covariance(), cov[:9, :9] - gain @ cov[9:, :9], atol=1e-12)
    wrong = prior.posterior(uv, vals * 1.15)
    assert not torch.allclose(wrong.mean(), law.mean(), atol=1e-3)


def test_linear_interpolation_is_exact_on_a_plane_and_nearest_is_not():
    grid = pixel_grid(8)
    plane = (4.0 + 1.5 * grid[:, 0] - 2.0 * grid[:, 1]).reshape(1, 8, 8)
    corners = torch.tensor([0, 7, 56, 63, 20, 45])  # the hull covers every pixel
    uv, d = grid[corners][None], plane.reshape(1, -1)[:, corners]
    assert depth_errors(interpolate(uv, d, 8, "linear"), plane)["rmse"] < 1e-10
    assert depth_errors(interpolate(uv, d, 8, "nearest"), plane)["rmse"] > 0.3
    const = torch.full((1, 8, 8), 3.0)
    assert depth_errors(interpolate(uv, const.reshape(1, -1)[:, corners], 8, "nearest"),
                        const)["rmse"] < 1e-12


def test_depth_errors_by_hand():
    true = torch.tensor([[[1.0, 2.0], [4.0, 5.0]]])
    err = depth_errors(true * torch.tensor([[[1.1, 1.0], [1.0, 0.8]]]), true)
    assert err["abs_rel"] == pytest.approx((0.1 + 0.2) / 4)
    assert err["rmse"] == pytest.approx(((0.01 + 1.0) / 4) ** 0.5)


def test_log_depth_round_trip_and_scenes():
    enc = LogDepth()
    d = render_scenes(4, 8, seed=1)
    assert d.shape == (4, 8, 8) and float(d.min()) >= 0.5 and float(d.max()) <= 20
    x = enc.encode(d)
    assert float(x.abs().max()) <= 1 and torch.allclose(enc.decode(x), d, rtol=1e-12)
    assert enc.encode(torch.tensor([0.5, 20.0])).tolist() == pytest.approx([-1.0, 1.0])
    uv, z = sparse_points(d, 10, seed=2)
    assert uv.shape == (4, 10, 2) and z.shape == (4, 10)
    # each point's depth is the map's depth at that pixel
    idx = ((uv + 1) / 2 * 8 - 0.5).round().long()
    assert torch.equal(z, d[torch.arange(4)[:, None], idx[..., 1], idx[..., 0]])


def test_net_is_a_set_function_of_the_points():
    torch.manual_seed(0)
    net = GRINNet(hidden=16, heads=2, layers=1).eval()
    x, t = torch.randn(2, 5, 5), torch.tensor([0.3, 0.7])
    pts, vals = torch.rand(2, 7, 2) * 2 - 1, torch.rand(2, 7) * 2 - 1
    out = net(x, t, points=pts, values=vals)
    perm = torch.randperm(7)
    assert torch.allclose(out, net(x, t, points=pts[:, perm], values=vals[:, perm]), atol=1e-5)
    assert not torch.allclose(out, net(x, t, points=pts, values=vals + 0.5), atol=1e-3)
    assert net(x, t, points=pts[:, :3], values=vals[:, :3]).shape == x.shape  # any K


def test_bad_input():
    d = render_scenes(2, 6)
    with pytest.raises(ValueError, match="count"):
        sparse_points(d, 0)
    with pytest.raises(ValueError, match=r"\[B, H, H\]"):
        sparse_points(d[:, :5], 3)
    with pytest.raises(ValueError, match="positive"):
        depth_errors(d, -d)
    with pytest.raises(ValueError, match="normalised"):
        interpolate(torch.full((1, 3, 2), 1.5), torch.ones(1, 3), 6)
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        interpolate(torch.zeros(1, 3, 2), torch.ones(1, 4), 6)
    with pytest.raises(ValueError, match="metres"):
        LogDepth().encode(torch.tensor([30.0]))
    with pytest.raises(ValueError, match="near"):
        LogDepth(5.0, 1.0)
    with pytest.raises(ValueError, match="points="):
        PlaneLogDepth(VPLinear(), 3)(torch.zeros(1, 3, 3), 0.5)
    assert isinstance(PlaneLogDepth(VPLinear(), 2).prior(), Gaussian)

"""reverie.pointclouds: primitives and Chamfer distance, Bayesian Diffusion Models' fusion of a
prior and a reconstruction against the exact Gaussian posterior, the GECCO-style denoiser's
symmetries."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase
from reverie.pointclouds import (
    BayesianFusion,
    GaussianPointPrior,
    PointDenoiserNet,
    chamfer,
    draw,
    fuse,
    posed_shapes,
    primitive,
    project,
)
from reverie.process import VPLinear


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_primitives_and_chamfer():
    """Sphere points have norm 1, cube points max-norm 1, cylinder points radius <= 1 with
    |z| <= 1 and 2/3 of them on the side; Chamfer separates a sphere from a cube (0.17) far
    beyond two samplings of one sphere (0.016)."""
    s, c, y = (primitive(k, 2, 3000, gen(0)) for k in ("sphere", "cube", "cylinder"))
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(2, 3000))
    torch.testing.assert_close(c.abs().amax(-1), torch.ones(2, 3000))
    r = y[..., :2].norm(dim=-1)
    assert (r <= 1 + 1e-6).all() and ((r - 1).abs() < 1e-5).float().mean().sub(2 / 3).abs() < 0.03
    same = chamfer(primitive("sphere", 4, 500, gen(1)), primitive("sphere", 4, 500, gen(2)))
    diff = chamfer(primitive("sphere", 4, 500, gen(1)), primitive("cube", 4, 500, gen(2)))
    assert (diff > 5 * same).all()
    assert project(s).shape == (2, 3000, 2)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        chamfer(s[0], c)
    with pytest.raises(ValueError, match="unknown primitive"):
        primitive("torus", 1, 10)


def test_fuse_is_the_product_of_gaussians():
    """fuse equals the normalised product of two Gaussian densities on a grid (brute force)."""
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    m_a, v_a, m_b, v_b = 0.7, 0.5, -1.2, 1.7
    dens = torch.exp(-(z - m_a) ** 2 / (2 * v_a) - (z - m_b) ** 2 / (2 * v_b))
    dens = dens / dens.sum()
    mean = (z * dens).sum()
    var = ((z - mean) ** 2 * dens).sum()
    m, v = fuse(torch.tensor(m_a), torch.tensor(v_a), torch.tensor(m_b), torch.tensor(v_b))
    assert abs(float(m - mean)) < 1e-6 and abs(float(v - var)) < 1e-6
    with pytest.raises(ValueError, match="positive"):
        fuse(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0))


def test_bdm_fusion_samples_the_exact_posterior():
    """A Gaussian shape prior around a sphere template (var 0.2) and a reconstruction from a
    noisy observation (var 0.1), fused per step and sampled with DPM-Solver++(2M): per
    coordinate mean and variance at the Monte-Carlo floor of the exact posterior; the
    reconstruction's variance 15% off, equal weights instead of the uncertainties, or the
    prior alone are rejected."""
    proc = VPLinear()
    template = primitive("sphere", 1, 16, gen(0))[0].double()
    truth = primitive("cube", 1, 16, gen(1))[0].double()
    var_p, var_r = 0.2, 0.1
    y = truth + var_r**0.5 * torch.randn(16, 3, generator=gen(2), dtype=torch.float64)
    prior = GaussianPointPrior(template, var_p, proc)

    def recon(x, t):  # the data-driven belief: the observation and its noise level
        return y.expand_as(x), torch.full_like(x, var_r)

    post_v = var_p * var_r / (var_p + var_r)
    post_m = (template * var_r + y * var_p) / (var_p + var_r)
    noise = torch.randn(4000, 16, 3, generator=gen(3), dtype=torch.float64)

    def errors(den):
        x = reverie.sample(den, noise, "dpmpp_2m", steps=20)
        return (x.mean(0) - post_m).abs().max(), (x.var(0) / post_v - 1).abs().max()

    em, ev = errors(BayesianFusion(prior.belief, recon, proc))
    assert em < 0.025 and ev < 0.12, (em, ev)  # measured 0.010, 0.068 (4-sd floor ~0.02, 0.09)

    def off(x, t):  # wrong: the reconstruction's variance 15% off (0.08, 0.17)
        return y.expand_as(x), torch.full_like(x, 1.15 * var_r)

    def equal(x, t):  # wrong: the two means averaged regardless of their uncertainties (0.71)
        m_p, _ = prior.belief(x, t)
        return fuse(m_p, torch.ones_like(x), y.expand_as(x), torch.ones_like(x))

    def vague(x, t):  # a reconstruction that knows nothing: the prior alone (1.6, 2.2)
        return x, torch.full_like(x, 1e12)

    em, ev = errors(BayesianFusion(prior.belief, off, proc))
    assert em > 0.05 and ev > 0.14
    assert errors(BayesianFusion(equal, vague, proc))[0] > 0.3
    em, ev = errors(BayesianFusion(prior.belief, vague, proc))
    assert em > 0.3 and ev > 0.3


def test_point_denoiser_symmetries():
    """The GECCO-style net is equivariant in the points, invariant in the view's order, and
    reads the view (a different view changes the output)."""
    net = PointDenoiserNet(hidden=16).double()
    x = primitive("sphere", 2, 30, gen(0)).double()
    view = project(primitive("cube", 2, 20, gen(1)).double())
    t = torch.full((2,), 0.5, dtype=torch.float64)
    out = net(x, t, view)
    perm, vperm = torch.randperm(30, generator=gen(2)), torch.randperm(20, generator=gen(3))
    torch.testing.assert_close(net(x[:, perm], t, view[:, vperm]), out[:, perm])
    assert not torch.allclose(net(x, t, view * 0.5), out)
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        net(x, t, view[..., :1])


def test_projection_lookup_follows_the_camera_ray():
    """Each point reads the view at its own projection: moving a point along the camera ray
    (the dropped axis) leaves its feature unchanged, moving it across the ray changes it; a
    lookup with the wrong camera (dropping x for a view along z) changes along the true ray."""
    net = PointDenoiserNet(hidden=16).double()
    x = draw(posed_shapes(2, gen(0)), 40, gen(1)).double()
    view = project(draw(posed_shapes(2, gen(0)), 30, gen(2)).double())
    along, across = torch.tensor([0.0, 0.0, 0.7]).double(), torch.tensor([0.3, 0.0, 0.0]).double()
    feat = net.lookup(x, view)
    torch.testing.assert_close(net.lookup(x + along, view), feat)
    assert (net.lookup(x + across, view) - feat).norm(dim=-1).min() > 1e-3
    wrong = PointDenoiserNet(hidden=16, drop=0).double()
    wrong.load_state_dict(net.state_dict())
    assert (wrong.lookup(x + along, view) - wrong.lookup(x, view)).norm(dim=-1).min() > 1e-3
    glob = PointDenoiserNet(hidden=16, local=False).double()  # the global-feature baseline
    glob.load_state_dict(net.state_dict())
    t = torch.full((2,), 0.5, dtype=torch.float64)
    assert not torch.allclose(glob(x, t, view), net(x, t, view))


class _ShapeSetOracle(DenoiserBase):
    """The exact ``E[x0 | x_t, view]`` when ``x0`` is one of ``templates`` [K, N, 3] (uniform
    prior) and the view's likelihood is ``exp(-chamfer_2d(project(x0), view) / (2 tau^2))``
    (``tau=None``: the view is ignored)."""

    def __init__(self, templates, process, tau):
        self.templates, self.process, self.tau = templates, process, tau

    def __call__(self, x, t, view=None):
        t = time_tensor(t, x)
        a = self.process.alpha(t).to(x)[:, None, None, None]
        s2 = self.process.sigma(t).to(x)[:, None] ** 2
        T = self.templates
        logw = -((x[:, None] - a * T[None]) ** 2).sum((-1, -2)) / (2 * s2)  # p(x_t | x0) [B, K]
        if self.tau is not None:  # + log p(view | x0)
            pv = project(T)
            d = torch.stack([chamfer(pv, v.expand_as(pv)) for v in view])
            logw = logw - d / (2 * self.tau**2)
        return torch.einsum("bk,knd->bnd", torch.softmax(logw, -1), T)


def test_oracle_conditional_sampling_reproduces_the_viewed_shape():
    """Degenerate case: shapes from a set of 6 posed primitives, each conditioned on its own
    view. Sampling the exact view-conditioned denoiser with DPM-Solver++(2M) returns the viewed
    shape (Chamfer < 1e-4); the same oracle ignoring the view returns other shapes (> 0.05)."""
    proc = VPLinear()
    T = draw(posed_shapes(6, gen(0)), 32, gen(1)).double()
    view = project(T)
    noise = torch.randn(6, 32, 3, generator=gen(2), dtype=torch.float64)

    def err(tau):
        x = reverie.sample(_ShapeSetOracle(T, proc, tau), noise, "dpmpp_2m", steps=20,
                           cond={"view": view})
        return chamfer(x, T)

    assert err(0.05).max() < 1e-4
    assert err(None).mean() > 0.05

"""Nested diffusion (reverie.nested, Zhang et al. 2024): the latent hierarchy against its
closed form and the top-down chain of samplers against the exact joint law of Gaussian data and
its latents; each with a wrong sibling."""

from __future__ import annotations

import pytest
import torch

from reverie.denoisers import Denoiser
from reverie.nested import ConditionalGaussianDenoiser, LatentHierarchy, nested_sample
from reverie.process import VPLinear

D64 = torch.float64
MU = torch.tensor([0.5, -1.0, 0.3], dtype=D64)
S = torch.tensor([[1.0, 0.4, 0.2], [0.4, 0.6, -0.1], [0.2, -0.1, 0.3]], dtype=D64)
NOISE = [0.6, 0.9]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _hierarchy(noise=NOISE):
    evals, evecs = torch.linalg.eigh(S)
    comps = evecs.flip(1).T                       # principal directions, largest first
    return LatentHierarchy(MU, [comps[:2], comps[:1]], list(noise))


def _joint(h):
    """Mean and covariance of (z_2, z_1, x): the most abstract latent first."""
    p1, p2 = h.components
    s1, s2 = h.noise_levels
    blocks = [p2, p1, torch.eye(3, dtype=D64)]
    noise = [s2**2 * torch.eye(1), s1**2 * torch.eye(2), torch.zeros(3, 3)]
    cov = torch.cat([torch.cat([a @ S @ b.T for b in blocks], 1) for a in blocks], 0)
    cov = cov + torch.block_diag(*[n.to(D64) for n in noise])
    return torch.cat([torch.zeros(3, dtype=D64), MU]), cov


def _levels(h, proc, condition=True):
    """Exact level denoisers by Gaussian conditioning of each block on the blocks before it."""
    mean, cov = _joint(h)
    edges, levels = [0, 1, 3, 6], []
    for i in range(3):
        lo, hi = edges[i], edges[i + 1]
        if i == 0 or not condition and i == 1:
            levels.append(ConditionalGaussianDenoiser(proc, mean[lo:hi], cov[lo:hi, lo:hi],
                                                      None if i == 0 else torch.zeros(2, 1)))
            continue
        a = cov[lo:hi, :lo] @ torch.linalg.inv(cov[:lo, :lo])
        levels.append(ConditionalGaussianDenoiser(proc, mean[lo:hi] - a @ mean[:lo],
                                                  cov[lo:hi, lo:hi] - a @ cov[:lo, lo:hi], a))
    return levels


def test_hierarchy_fit_and_encode_have_the_closed_form_law():
    data = MU + torch.randn(20000, 3, generator=_gen(0), dtype=D64) @ torch.linalg.cholesky(S).T
    fitted = LatentHierarchy.fit(data, [2, 1], NOISE)
    exact = _hierarchy()
    for a, b in zip(fitted.components, exact.components):
        assert torch.allclose((a @ b.T).abs(), torch.eye(len(a), dtype=D64), atol=0.02)
    z1, z2 = exact.encode(data, _gen(1))
    _, cov = _joint(exact)
    got = torch.cov(torch.cat([z2, z1], 1).T)
    assert torch.allclose(got, cov[:3, :3], atol=0.05)
    wrong = _joint(_hierarchy([0.6 * 1.15, 0.9 * 1.15]))[1]  # 15% more injected noise
    assert not torch.allclose(got, wrong[:3, :3], atol=0.05)
    with pytest.raises(ValueError, match="decreasing"):
        LatentHierarchy.fit(data, [1, 2], NOISE)


def test_nested_chain_samples_the_exact_joint_law():
    proc = VPLinear()
    h = _hierarchy()
    mean, cov = _joint(h)

    def err(levels):
        z2, z1, x = nested_sample(levels, [1, 2, 3], 8000, "heun", 20, generator=_gen(2))
        joint = torch.cat([z2, z1, x], 1)
        return (float((joint.mean(0) - mean).norm()),
                float((torch.cov(joint.T) - cov).norm() / cov.norm()))

    m, c = err(_levels(h, proc))
    assert m < 0.06 and c < 0.07, (m, c)
    # a middle level that ignores the level above it loses the cross-level covariance
    assert err(_levels(h, proc, condition=False))[1] > 0.1
    # levels built for 15% more injected noise than the hierarchy's: rejected
    m, c = err(_levels(_hierarchy([0.6 * 1.15, 0.9 * 1.15]), proc))
    assert c > 0.09, (m, c)
    with pytest.raises(ValueError, match="needs the latent"):
        _levels(h, proc)[1](torch.zeros(2, 2), 0.5)


def test_train_level_learns_the_conditional_denoiser():
    from reverie.nets import MLP
    from reverie.train.nested import LevelNet, train_level

    proc = VPLinear()
    h = _hierarchy()
    data = MU + torch.randn(4000, 3, generator=_gen(3), dtype=D64) @ torch.linalg.cholesky(S).T
    z1, z2 = h.encode(data, _gen(4))
    torch.manual_seed(0)
    res = train_level(LevelNet(MLP(dim=3, hidden=32, depth=1), 2), z1, z2, proc, steps=100,
                      batch_size=64, lr=1e-2, ema_decay=0.9, log_every=25)
    assert res.losses[-1] < res.losses[0]
    exact, uncond = _levels(h, proc)[1], _levels(h, proc, condition=False)[1]
    c = z2[:1000]
    w_t = proc.add_noise(z1[:1000], torch.randn(1000, 2, generator=_gen(5), dtype=D64), 0.3)
    with torch.no_grad():
        got = Denoiser(res.ema, proc, "eps")(w_t, 0.3, latent=c)
    want = exact(w_t, 0.3, latent=c)
    err = float(((got - want) ** 2).sum(1).mean())
    assert err < 0.5 * float(((uncond(w_t, 0.3, latent=torch.zeros(1000, 1)) - want) ** 2)
                             .sum(1).mean()), err

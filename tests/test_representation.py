"""reverie.representation (LRDM): reconstruction given the latent on an exact linear-Gaussian
case, the linear probe, the network's two conditioning paths; wrong variants rejected."""

import pytest
import torch

from reverie.denoisers import Denoiser
from reverie.functions import gaussian_errors
from reverie.process import EDM
from reverie.representation import LinearGaussianLRDM, LRDMNet, linear_probe, reconstruct

D, K = 6, 2


def _case():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(D, 3, generator=g, dtype=torch.float64)
    enc = torch.randn(K, D, generator=g, dtype=torch.float64)
    return LinearGaussianLRDM(EDM(), mix, enc, noise=0.3), enc, g


def _errors(den, lrdm, z, n=3000, scale=1.0):
    noise = torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = reconstruct(den, (scale * z).expand(n, -1), noise, steps=30)
    law = lrdm.given(z[0])
    return gaussian_errors(x, law.mean(), law.covariance())


def test_reconstruction_draws_the_exact_law_given_the_latent():
    lrdm, enc, g = _case()
    z = lrdm.sample(1, g) @ enc.T
    err = _errors(lrdm, lrdm, z)  # MC floor at n = 3000: mean ~0.02, cov ~0.03-0.05
    assert err["mean"] < 0.06 and err["cov"] < 0.1, err
    # an encoder 15% off (latents scaled by 1.15) is rejected
    assert _errors(lrdm, lrdm, z, scale=1.15)["mean"] > 0.12
    # ignoring the latent (the unconditional data law's denoiser) is rejected
    from reverie.reference.gaussian import Gaussian

    prior = Gaussian(torch.zeros(D, dtype=torch.float64), lrdm.cov).denoiser(lrdm.process)
    blind = Denoiser(lambda x, t, **cond: prior(x, t), lrdm.process, prediction="x0")
    assert _errors(blind, lrdm, z)["cov"] > 0.5


def test_exact_law_given_z_by_brute_force():
    """``given(z)`` is the conditional of the joint Gaussian of (x0, W x0), and it puts ``W x0``
    at ``z`` exactly."""
    lrdm, enc, _ = _case()
    z = torch.tensor([0.4, -1.1], dtype=torch.float64)
    law = lrdm.given(z)
    joint = torch.cat([torch.eye(D, dtype=torch.float64), enc]) @ lrdm.cov @ torch.cat(
        [torch.eye(D, dtype=torch.float64), enc]).T
    gain = joint[:D, D:] @ torch.linalg.inv(joint[D:, D:])
    assert torch.allclose(law.mean(), gain @ z, atol=1e-10)
    assert torch.allclose(law.covariance(), joint[:D, :D] - gain @ joint[D:, :D], atol=1e-8)
    assert torch.allclose(enc @ law.mean(), z, atol=1e-10)


def test_linear_probe():
    g = torch.Generator().manual_seed(2)
    y = torch.arange(300) % 3
    z = torch.nn.functional.one_hot(y, 3).double() * 3 + 0.3 * torch.randn(300, 3, generator=g,
                                                                          dtype=torch.float64)
    assert linear_probe(z[:200], y[:200], z[200:], y[200:]) == 1.0
    noise = torch.randn(300, 3, generator=g, dtype=torch.float64)  # a representation of nothing
    assert linear_probe(noise[:200], y[:200], noise[200:], y[200:]) < 0.5
    with pytest.raises(ValueError, match="z_train"):
        linear_probe(z[:200], y[:100], z[200:], y[200:])


def test_net_paths_and_bad_input():
    torch.manual_seed(0)
    net = LRDMNet(dim=16, latent=3, hidden=32)
    x, t, src = torch.randn(4, 1, 4, 4), torch.rand(4), torch.randn(4, 1, 4, 4)
    assert torch.allclose(net(x, t, source=src), net(x, t, z=net.encode(src)))
    assert not torch.allclose(net(x, t, source=src), net(x, t, source=-src))
    with pytest.raises(ValueError, match="exactly one"):
        net(x, t)
    lrdm, _, _ = _case()
    with pytest.raises(ValueError, match="z="):
        lrdm(torch.zeros(2, D), 1.0)
    with pytest.raises(ValueError, match="latent"):
        reconstruct(lrdm, torch.zeros(3, K), torch.zeros(2, D))
    with pytest.raises(ValueError, match="mix"):
        LinearGaussianLRDM(EDM(), torch.zeros(D, 2), torch.zeros(K, D + 1), 0.1)


def test_dod_second_stage_keeps_the_data_law_and_the_prior():
    """Stage 1 exact, stage 2 exact given z = W x1: x2 follows the data law again and shares
    x1's prior exactly; an encoder 15% off breaks the law and is rejected."""
    from reverie.representation import dod_sample

    lrdm, enc, _ = _case()
    g = torch.Generator().manual_seed(3)
    n1, n2 = (torch.randn(3000, D, generator=g, dtype=torch.float64) for _ in range(2))
    chol = torch.linalg.cholesky(lrdm.cov)

    def first(noise):
        return noise @ chol.T  # exact draws of the data law

    zero = torch.zeros(D, dtype=torch.float64)
    x1, x2 = dod_sample(first, lambda x: x @ enc.T, lrdm, n1, n2, steps=30)
    err = gaussian_errors(x2, zero, lrdm.cov)
    assert err["mean"] < 0.06 and err["cov"] < 0.1, err
    assert torch.allclose(x2 @ enc.T, x1 @ enc.T, atol=1e-8)
    _, bad = dod_sample(first, lambda x: 1.15 * x @ enc.T, lrdm, n1, n2, steps=30)
    assert gaussian_errors(bad, zero, lrdm.cov)["cov"] > 0.15
    with pytest.raises(ValueError, match="batch"):
        dod_sample(first, lambda x: x @ enc.T, lrdm, n1, n2[:5])


def test_x2i_distillation_loss_is_exact_on_the_linear_gaussian_model():
    """The frozen model is the exact LRDM denoiser, affine in z; the student sees s = B z. The
    loss vanishes at the aligner B^-1 (with zero gradient), and an aligner 15% off costs
    exactly 0.15^2 of the loss of a zero aligner (same x_t and t)."""
    from reverie.representation import distillation_loss

    lrdm, enc, g = _case()
    x0 = lrdm.sample(256, g)
    z = x0 @ enc.T
    b = torch.tensor([[2.0, 0.5], [-0.3, 1.2]], dtype=torch.float64)
    s = z @ b.T  # another encoder's view of the same content
    t = torch.exp(torch.rand(256, generator=g, dtype=torch.float64) * 8 - 4)  # sigma in [e-4, e4]
    eps = torch.randn(256, D, generator=g, dtype=torch.float64)

    def aligner(matrix):
        lin = torch.nn.Linear(K, K, bias=False).double()
        lin.weight.data = matrix.clone()
        return lin

    inv = torch.linalg.inv(b)
    best = aligner(inv)
    loss = distillation_loss(lrdm, best, s, z, x0, t, eps)
    loss.backward()
    assert float(loss.detach()) < 1e-20 and float(best.weight.grad.abs().max()) < 1e-10
    zero = float(distillation_loss(lrdm, aligner(0 * inv), s, z, x0, t, eps).detach())
    off = float(distillation_loss(lrdm, aligner(1.15 * inv), s, z, x0, t, eps).detach())
    assert zero > 0.01 and off == pytest.approx(0.15**2 * zero, rel=1e-9)
    with pytest.raises(ValueError, match="batch"):
        distillation_loss(lrdm, best, s[:5], z, x0, t, eps)

"""reverie.train.vae (Kingma & Welling 2014, AEVB): the SGVB estimator against the linear VAE's
closed-form ELBO and a Bernoulli decoder's quadrature (a 15%-off variance rejected), training to
the probabilistic-PCA optimum (Tipping & Bishop 1999; Lucas et al. 2019), the reparameterised
gradient against a finite difference (the gradient without the reparameterisation rejected), a
diffusers AutoencoderKL trained by the ELBO plugged into the DiT latent pipeline, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reverie
from reverie.nets.vae import MLPVAE
from reverie.reference.ppca import PPCA, fit_ppca, linear_vae_elbo
from reverie.train.vae import (
    decode,
    elbo,
    gaussian_kl,
    latent_scale,
    log_likelihood,
    posterior,
    train_vae,
)

D, K = 5, 2


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ppca_data(n: int = 300) -> torch.Tensor:
    """Correlated 5-d Gaussian data with two dominant directions."""
    g = gen(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) * torch.tensor(
        [2.0, 1.5, 0.5, 0.4, 0.3], dtype=torch.float64)
    return torch.randn(n, D, generator=g, dtype=torch.float64) @ a.T + 1.0


def linear_vae(seed: int = 1) -> MLPVAE:
    """A linear VAE with input-dependent encoder variances about e, well above their optimum
    (where the ELBO would be flat in them)."""
    torch.manual_seed(seed)
    vae = MLPVAE(D, K, hidden=()).double()
    with torch.no_grad():
        vae.encoder[0].weight[K:] *= 0.1  # logvar rows
        vae.encoder[0].bias[K:] = 1.0
    return vae


def closed_form(vae: MLPVAE, x: torch.Tensor, obs_logvar: float, enc_scale: float = 1.0):
    with torch.no_grad():
        mean, logvar = posterior(vae, x)
        dec = vae.decoder[0]
        return linear_vae_elbo(x, mean, logvar + math.log(enc_scale), dec.weight, dec.bias,
                               obs_logvar)


@pytest.mark.parametrize("estimator", ["B", "A"])
def test_sgvb_estimate_matches_the_linear_vae_closed_form(estimator):
    """The mean of 20000 reparameterised estimates per point (estimator B: exact KL; A: the
    KL sampled too) matches the exact ELBO within 4 standard errors; the exact ELBO with the
    encoder's or the decoder's variance 15% off is many standard errors away from it."""
    x, lv, s = ppca_data()[:6], math.log(0.3), 20_000
    vae = linear_vae()
    with torch.no_grad():
        mc = elbo(vae, x.repeat(s, 1), obs_logvar=lv, estimator=estimator,
                  generator=gen(2)).reshape(s, -1)
    est, se = mc.mean(0), mc.std(0) / math.sqrt(s)
    z = (est - closed_form(vae, x, lv)) / se
    assert z.abs().max() < 4, z
    wrong_enc = (est - closed_form(vae, x, lv, enc_scale=1.15)) / se
    wrong_obs = (est - closed_form(vae, x, lv + math.log(1.15))) / se
    assert wrong_enc.abs().min() > 8 and wrong_obs.abs().min() > 8, (wrong_enc, wrong_obs)


def test_training_reaches_the_ppca_optimum():
    """The linear VAE trained by the SGVB estimator (Adam, 800 steps) reaches pPCA's maximum
    log-likelihood within 0.01 nats per point (its exact ELBO, a lower bound of its own
    log-likelihood, is that close); the closed form is exact at the ML model's posterior
    (ELBO = log p). The ML model with its noise variance 15% off, or with one latent fewer,
    is rejected by the same check."""
    x = ppca_data()
    ml = fit_ppca(x, K)
    best = float(ml.log_likelihood(x).mean())
    means, cov = ml.posterior(x)  # diagonal: W_ML has orthogonal columns
    assert float(cov.triu(1).abs().max()) < 1e-12
    exact = linear_vae_elbo(x, means, cov.diag().log().expand_as(means), ml.weight, ml.mean,
                            math.log(ml.noise_var))
    torch.testing.assert_close(exact, ml.log_likelihood(x), rtol=0, atol=1e-10)

    torch.manual_seed(0)
    res = train_vae(MLPVAE(D, K, hidden=()).double(), x, steps=800, batch_size=len(x),
                    lr=0.1, warmup=20, progress=False)
    trained = float(closed_form(res.vae, x, float(res.obs_logvar)).mean())

    def accepted(value: float) -> bool:
        return 0 <= best - value < 0.01

    assert accepted(trained), best - trained
    off = PPCA(ml.mean, ml.weight, 1.15 * ml.noise_var)
    assert not accepted(float(off.log_likelihood(x).mean()))
    assert not accepted(float(fit_ppca(x, K - 1).log_likelihood(x).mean()))
    assert res.losses[-1] < res.losses[0]


def test_reparameterised_gradient_matches_a_finite_difference():
    """The encoder's gradient of the SGVB estimate (averaged over 20000 draws) matches the
    central finite difference of the exact ELBO within 2%; without the reparameterisation
    (the draw detached from the encoder) the gradient is off by far more."""
    x, lv, s = ppca_data()[:4], math.log(0.3), 20_000
    vae = linear_vae()
    w = vae.encoder[0].weight

    def mc_grad(detach: bool) -> torch.Tensor:
        w.grad = None
        mean, logvar = posterior(vae, x.repeat(s, 1))
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen(3),
                                                         dtype=mean.dtype)
        z = z.detach() if detach else z
        est = log_likelihood(x.repeat(s, 1), decode(vae, z), "gaussian", lv)
        ((est - gaussian_kl(mean, logvar)).sum() / s).backward()
        return w.grad.clone()

    fd, h = torch.zeros_like(w), 1e-5
    with torch.no_grad():
        for idx in np.ndindex(*w.shape):
            w[idx] += h
            up = closed_form(vae, x, lv).sum()
            w[idx] -= 2 * h
            down = closed_form(vae, x, lv).sum()
            w[idx] += h
            fd[idx] = (up - down) / (2 * h)
    # the same estimate through elbo(): its gradient is the hand-written one's
    w.grad = None
    (elbo(vae, x.repeat(s, 1), obs_logvar=lv, generator=gen(3)).sum() / s).backward()
    torch.testing.assert_close(w.grad, mc_grad(detach=False), rtol=1e-9, atol=1e-9)
    rel = float(torch.linalg.norm(mc_grad(detach=False) - fd) / torch.linalg.norm(fd))
    wrong = float(torch.linalg.norm(mc_grad(detach=True) - fd) / torch.linalg.norm(fd))
    assert rel < 0.02 and wrong > 0.2, (rel, wrong)


def test_bernoulli_elbo_matches_quadrature():
    """A Bernoulli decoder (an MLP, 1-d latent) on binary data: the SGVB estimate matches the
    ELBO by 80-node Gauss-Hermite quadrature within 4 standard errors; the quadrature with the
    encoder variance 15% off is rejected."""
    torch.manual_seed(0)
    vae = MLPVAE(6, 1, hidden=(8,)).double()
    with torch.no_grad():
        vae.encoder[-1].bias[1] = 1.0  # encoder variances about e, away from their optimum
    x = (torch.rand(5, 6, generator=gen(4), dtype=torch.float64) < 0.4).double()
    s = 20_000
    with torch.no_grad():
        mc = elbo(vae, x.repeat(s, 1), likelihood="bernoulli", generator=gen(5)).reshape(s, -1)
        mean, logvar = posterior(vae, x)
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # weight exp(-t^2 / 2)
        t = torch.tensor(nodes)
        wq = torch.tensor(weights) / math.sqrt(2 * math.pi)

        def quad(var_scale: float) -> torch.Tensor:
            z = mean + (var_scale * logvar.exp()).sqrt() * t  # [5, 80]
            out = decode(vae, z.reshape(-1, 1)).reshape(5, 80, 6)
            ll = log_likelihood(x[:, None].expand_as(out).reshape(-1, 6), out.reshape(-1, 6),
                                "bernoulli").reshape(5, 80)
            return (ll * wq).sum(1) - gaussian_kl(mean, logvar + math.log(var_scale))

    est, se = mc.mean(0), mc.std(0) / math.sqrt(s)
    assert ((est - quad(1.0)) / se).abs().max() < 4
    assert ((est - quad(1.15)) / se).abs().min() > 8, (est - quad(1.15)) / se


def test_autoencoderkl_trained_by_the_elbo_plugs_into_the_dit_pipeline(tmp_path):
    """A tiny diffusers AutoencoderKL trained by train_vae (a few steps) and a tiny DiT, saved
    by save_latent_pipeline, load through reverie.load as a DiT pipeline whose encode_image is
    the VAE's posterior mean times its scaling factor and whose decode inverts the scaling."""
    import diffusers

    from reverie.pipelines import DiT
    from reverie.train.latent import LatentDigits, digits_autoencoder, save_latent_pipeline

    x = torch.rand(32, 1, 8, 8, generator=gen(6)) * 2 - 1
    torch.manual_seed(0)
    res = train_vae(digits_autoencoder(), x, steps=3, batch_size=8, progress=False)
    assert len(res.losses) == 1 and math.isfinite(res.losses[0])
    scale = latent_scale(res.vae, x)
    dit = diffusers.DiTTransformer2DModel(
        sample_size=4, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        in_channels=2, out_channels=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
        norm_elementwise_affine=False)
    pipe = reverie.load(str(save_latent_pipeline(LatentDigits(res, scale, dit), tmp_path / "p")))
    assert isinstance(pipe, DiT) and pipe.sample_shape == (2, 4, 4) and pipe.labels["7"] == 7
    with torch.no_grad():
        mean = posterior(res.vae, x[:4])[0]
        torch.testing.assert_close(pipe.encode_image((x[:4] + 1) / 2), mean * scale)
        z = torch.randn(3, 2, 4, 4, generator=gen(7))
        want = (decode(res.vae, z / scale) / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(pipe.decode(z), want)
        out = pipe.sample([1, 2], guidance_scale=1.0, steps=2, output_type="pt")
    assert out.shape == (2, 1, 8, 8)


def test_bad_input():
    vae = MLPVAE(4, 2, hidden=(8,))
    x = torch.rand(8, 4)
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        elbo(vae, x, likelihood="poisson")
    with pytest.raises(ValueError, match="unknown estimator 'C'"):
        elbo(vae, x, estimator="C")
    with pytest.raises(ValueError, match=r"Bernoulli decoder needs data in \[0, 1\]"):
        train_vae(vae, x - 2, likelihood="bernoulli", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"expects \[B, 4\], got \[8, 5\]"):
        elbo(vae, torch.rand(8, 5))
    from reverie.train.latent import digits_autoencoder

    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\], got \[2, 3, 8, 8\]"):
        elbo(digits_autoencoder(), torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match=r"must return \(mean, logvar\)"):
        posterior(_OneOutput(), x)
    with pytest.raises(ValueError, match="obs_logvar must be a float, 'scalar' or 'per-dim'"):
        train_vae(vae, x, obs_logvar="pixel", steps=1, progress=False)
    res = train_vae(vae, x, obs_logvar="per-dim", steps=1, progress=False)
    assert res.obs_logvar.shape == (4,)  # one learned log-variance per dimension
    with pytest.raises(TypeError, match="floating-point tensor"):
        train_vae(vae, torch.ones(8, 4, dtype=torch.long), steps=1, progress=False)
    with pytest.raises(ValueError, match="1 <= k < D"):
        fit_ppca(torch.randn(10, 3), 3)


class _OneOutput(torch.nn.Module):
    def encode(self, x):
        return x

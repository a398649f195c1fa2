"""reverie.nets.ssm: the selective scan against its matrix form and the LTI closed form (wrong
decay / off-by-one rejected), the Mamba block's causality, DiS's shapes and its use as a
reverie denoiser on an exact case; reverie.nets.maetok: random masking and the encoder's
blindness to masked patches; the backbones bench's plumbing."""

from __future__ import annotations

import argparse

import pytest
import torch

import reverie
from reverie.nets.function import ModelFunction
from reverie.nets.maetok import MAETokenizer
from reverie.nets.ssm import (
    DiS,
    MambaBlock,
    selective_scan,
    selective_scan_matrix,
    selective_scan_parallel,
)
from reverie.process import EDM


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(b=2, length=11, d=3, n=4, seed=0):
    g = gen(seed)
    f = dict(generator=g, dtype=torch.float64)
    return (torch.randn(b, length, d, **f), torch.rand(b, length, d, **f) + 0.05,
            -torch.rand(d, n, **f) - 0.1, torch.randn(b, length, n, **f),
            torch.randn(b, length, n, **f))


def test_scan_forms_agree_and_match_the_lti_closed_form():
    """Sequential, parallel (log-depth) and matrix forms of the selective scan agree to 1e-12;
    with constant delta, B, C the scan is the convolution with K_k = sum_n C_n e^(k delta A_n)
    delta B_n (the discretised LTI system's impulse response). A decay 15% off or a readout
    one step late fails the same check."""
    u, delta, A, B, C = _inputs()
    D = torch.rand(3, dtype=torch.float64)
    y = selective_scan(u, delta, A, B, C, D)
    torch.testing.assert_close(selective_scan_parallel(u, delta, A, B, C, D), y, rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(selective_scan_matrix(u, delta, A, B, C, D), y, rtol=0,
                               atol=1e-12)
    # LTI: delta, B, C constant along the sequence
    dl, b0, c0 = delta[:, :1].expand_as(delta), B[:, :1].expand_as(B), C[:, :1].expand_as(C)
    k = torch.arange(11, dtype=torch.float64)
    kern = torch.einsum("bn,kbdn,bd,bn->bkd", c0[:, 0], torch.exp(
        k[:, None, None, None] * dl[None, :, 0, :, None] * A), dl[:, 0], b0[:, 0])  # [b, k, d]

    def conv(kern):
        return torch.stack([sum(kern[:, j] * u[:, t - j] for j in range(t + 1))
                            for t in range(11)], 1)

    ref = conv(kern)
    torch.testing.assert_close(selective_scan_parallel(u, dl, A, b0, c0), ref, rtol=0,
                               atol=1e-12)
    wrong = selective_scan_parallel(u, dl, 1.15 * A, b0, c0)  # decay 15% off
    late = torch.cat([torch.zeros_like(ref[:, :1]), ref[:, :-1]], 1)  # readout of h_{t-1}
    for bad in (wrong, late):
        assert (bad - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"delta must be \[2, 11, 3\]"):
        selective_scan(u, delta[:, :5], A, B, C)


def test_mamba_block_is_causal_in_its_direction():
    """A forward block's output at position t depends on inputs up to t only; a reverse block
    on inputs from t on; DiS (alternating directions) mixes every position."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += 1.0  # change position 5
    fwd, rev = MambaBlock(16, 4).double(), MambaBlock(16, 4, reverse=True).double()
    with torch.no_grad():
        df = (fwd(x2) - fwd(x)).abs().amax((0, 2))
        dr = (rev(x2) - rev(x)).abs().amax((0, 2))
    assert float(df[:5].max()) == 0 and float(df[5]) > 0.01 and float(df[6]) > 0
    assert float(dr[6:].max()) == 0 and float(dr[5]) > 0.01 and float(dr[4]) > 0
    net = DiS((48,), patch=4, dim=16, depth=2).double()
    nn_init = torch.nn.init
    nn_init.normal_(net.head.weight, std=0.1)  # the head starts at zero: give it weights
    s = torch.randn(2, 48, dtype=torch.float64)
    s2 = s.clone()
    s2[:, 20] += 1.0
    t = torch.full((2,), 0.3, dtype=torch.float64)
    with torch.no_grad():
        assert float((net(s2, t) - net(s, t)).abs().reshape(2, 12, 4).amax((0, 2)).min()) > 0


def test_dis_shapes_and_bad_input():
    img = DiS((1, 8, 8), patch=2, dim=16, depth=2, num_classes=3)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(img.unpatchify(img.patchify(x)), x)
    assert img(x, torch.rand(3), torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"DiS expects inputs \[B, 1, 8, 8\]"):
        img(torch.randn(3, 1, 6, 6), torch.rand(3))
    with pytest.raises(ValueError, match="multiples of patch"):
        DiS((1, 8, 8), patch=3)
    with pytest.raises(ValueError, match="depth must be even"):
        DiS((48,), patch=4, depth=3)


def test_untrained_dis_is_the_exact_denoiser_of_its_edm_prior():
    """Under EDM preconditioning a network whose head is zero (DiS at initialisation) gives
    D(x) = c_skip x = sd^2 / (sigma^2 + sd^2) x, the exact posterior mean of N(0, sd^2 I), so a
    reverie ODE sampler run on it must follow that law's exact flow map, linear:
    x_0 = x_T sqrt((sd^2 + sigma_min^2) / (sd^2 + sigma_max^2)). Preconditioning with
    sigma_data 15% off misses the map by far more than the sampler's discretisation error."""
    sd, proc = 0.8, EDM(sigma_data=0.8)
    net = DiS((48,), patch=4, dim=8, depth=2, state=2).double()
    z = torch.randn(20, 48, generator=gen(1), dtype=torch.float64)  # x_T = sigma_max z
    s_max, s_min = float(proc.sigma(proc.t_max)), float(proc.sigma(proc.t_min))
    exact = z * s_max * ((sd**2 + s_min**2) / (sd**2 + s_max**2)) ** 0.5

    def error(s):
        den = reverie.Denoiser(ModelFunction(net, proc, time_input="c_noise",
                                             precondition="edm", sigma_data=s), proc, "x0")
        with torch.no_grad():
            x = reverie.sample(den, z, "dpmpp_2m", 20)
        return float((x - exact).abs().max() / exact.abs().max())

    assert error(sd) < 0.03  # measured 0.017 (20 steps; 0.043 at 10)
    assert error(1.15 * sd) > 0.1  # measured 0.17


def test_maetok_masking_hides_the_masked_patches():
    """MAE masking keeps round((1 - r) N) distinct patches per image; the latent does not
    depend on the masked patches' pixels at all (and does on a kept one's). Without masking
    the same check fails: every patch reaches the latent."""
    torch.manual_seed(0)
    tok = MAETokenizer(dim=16, latent_tokens=2, latent_dim=3, depth=1)
    idx = tok.keep(5, 0.75, gen(0))
    assert idx.shape == (5, 4) and all(len(set(r.tolist())) == 4 for r in idx)
    x = torch.randn(5, 1, 8, 8)
    kept = tok.keep(5, 0.75, gen(1))
    masked = next(i for i in range(16) if i not in kept[0].tolist())
    row, col = divmod(masked, 4)
    x2 = x.clone()
    x2[0, 0, 2 * row: 2 * row + 2, 2 * col: 2 * col + 2] += 3.0  # change a masked patch
    with torch.no_grad():
        z = tok.encode(x, 0.75, gen(1))
        torch.testing.assert_close(tok.encode(x2, 0.75, gen(1)), z, rtol=0, atol=0)
        assert not torch.allclose(tok.encode(x2, 0.0), tok.encode(x, 0.0))  # no masking
        r, c = divmod(int(kept[0, 0]), 4)
        x3 = x.clone()
        x3[0, 0, 2 * r: 2 * r + 2, 2 * c: 2 * c + 2] += 3.0  # change a kept patch
        assert not torch.allclose(tok.encode(x3, 0.75, gen(1))[0], z[0])
        assert tok.decode(z).shape == (5, 1, 8, 8) and z.shape == (5, 6)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        tok.keep(2, 1.0)
    with pytest.raises(ValueError, match=r"latents must be \[B, 6\]"):
        tok.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"expects images \[B, 1, 8, 8\]"):
        tok.encode(torch.zeros(2, 1, 6, 6))


def test_bench_backbones_plumbing():
    from reverie.bench import available, backbones

    assert available()["backbones"] is backbones
    nets = backbones.networks()
    counts = [sum(p.numel() for p in n.parameters()) for n in nets.values()]
    assert abs(counts[0] / counts[1] - 1) < 0.05, counts  # equal parameter count
    parser = argparse.ArgumentParser()
    backbones.add_arguments(parser)
    out = backbones.run(parser.parse_args(["--parts", "dis", "--steps", "1", "--data", "64",
                                           "--test", "32", "--samples", "8"]))["dis"]
    assert [r["net"] for r in out["rows"]] == list(nets)
    # the Bayes error is the floor: no network, trained or not, beats the exact denoiser
    assert all(min(r["mse_over_bayes"].values()) > 0.99 for r in out["rows"])
    with pytest.raises(ValueError, match="--parts must name"):
        backbones.run(parser.parse_args(["--parts", "unet"]))

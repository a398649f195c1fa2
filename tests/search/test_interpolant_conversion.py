"""The interpolant conversion of Kim et al. (2025): a rectified-flow model run as a VP model
(``reverie.denoisers.Converted``), checked against the exact VP denoiser of a Gaussian mixture
and by the law of its VP-SDE samples."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie import search
from reverie.denoisers import Converted
from reverie.metrics import SlicedWasserstein, mode_weight_error

TIMES = (0.002, 0.05, 0.2, 0.5, 0.8, 1.0)


class _NoRescale(Converted):
    """A wrong conversion: the matched time, but the VP state passed on without the scale
    change ``alpha_flow(s) / alpha_vp(t)``."""

    def __call__(self, x, t, **cond):
        t = reverie.denoisers.time_tensor(t, x)
        return self.source(x, self.source_time(t.to(torch.float64)).to(t.dtype), **cond)


class _SameTime(Converted):
    """A wrong conversion: the scale change at ``s = t`` (no time change)."""

    def source_time(self, t):
        return torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)


def _max_error(den, exact, x):
    return max(float((den(x, t) - exact(x, t)).abs().max()) for t in TIMES)


@pytest.mark.parametrize("vp", [reverie.VPLinear(), reverie.VPCosine()], ids=repr)
def test_converted_flow_is_the_exact_vp_denoiser(problem, vp):
    mix, flow, den, _ = problem
    exact = mix.denoiser(vp)
    x = 2 * torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert _max_error(Converted(den, vp), exact, x) < 1e-10
    # the check rejects a conversion without the scale change, or without the time change
    assert _max_error(_NoRescale(den, vp), exact, x) > 0.1
    assert _max_error(_SameTime(den, vp), exact, x) > 0.1
    # the matched time has the VP log-SNR; eps and score follow the VP process
    t = torch.tensor([0.3], dtype=torch.float64)
    conv = Converted(den, vp)
    assert torch.allclose(flow.log_snr(conv.source_time(t)), vp.log_snr(t))
    assert torch.allclose(conv.score(x[:4], 0.3), exact.score(x[:4], 0.3), atol=1e-9)


def _vp_sde_samples(den, n=2000):
    noise = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return reverie.sample(den, noise, sampler="euler_maruyama", steps=25,
                          generator=torch.Generator().manual_seed(2),
                          diffusion=search.sde_diffusion())


def _law_ok(x, mix):
    """Sliced W2 to exact mixture samples below 0.15 (2000 exact samples: ~0.03; the 25-step
    VP-SDE of the exact VP denoiser: ~0.08) and the mode weights within 0.03."""
    sw = SlicedWasserstein(mix.sample(8000, torch.Generator().manual_seed(5)), 64,
                           torch.Generator().manual_seed(7))
    return sw(x) < 0.15 and mode_weight_error(x, mix) < 0.03


def test_vp_sde_of_the_converted_flow_samples_the_mixture(problem):
    """Euler-Maruyama on the VP reverse SDE (g = 3 t^2, the paper's setting) of the converted
    exact flow model lands on the mixture (and on the exact VP model's samples, draw for draw);
    the unscaled conversion (sliced W2 0.58) and the unmatched time (1.0) do not."""
    mix, _, den, _ = problem
    vp = reverie.VPLinear()
    x = _vp_sde_samples(Converted(den, vp))
    assert _law_ok(x, mix)
    assert torch.allclose(x, _vp_sde_samples(mix.denoiser(vp)), atol=1e-9)
    assert not _law_ok(_vp_sde_samples(_NoRescale(den, vp)), mix)
    assert not _law_ok(_vp_sde_samples(_SameTime(den, vp)), mix)


def test_rbf_uses_the_papers_diffusion_on_a_converted_flow(problem):
    mix, _, den, tilt = problem
    conv = Converted(den, reverie.VPLinear())
    res = search.run(conv, tilt.reward, method="rbf", budget=64, n=4, shape=(2,),
                     generator=torch.Generator().manual_seed(0), steps=8)
    assert res.nfe <= 64 and res.samples.shape == (4, 2)
    assert isinstance(search.METHODS["rbf"].sampler_options(conv)["diffusion"],
                      search.sde_diffusion)
    assert search.METHODS["rbf"].sampler_options(mix.denoiser(reverie.VPLinear())) == {}


def test_converted_refuses_bad_input(problem):
    _, _, den, _ = problem
    with pytest.raises(TypeError, match="reverie denoiser"):
        Converted(lambda x, t: x, reverie.VPLinear())
    with pytest.raises(TypeError, match="GaussianProcess"):
        Converted(den, "vp")

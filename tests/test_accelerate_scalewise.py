"""SwD's scale-wise sampler (reverie.accelerate.scalewise) against an exact reference: a
stationary Gaussian field on a ring is diagonal in Fourier space at every resolution, so with
the exact denoiser at each scale every step (denoise, band-limited enlargement, re-noising with
fresh noise) acts on each frequency alone and the output spectrum has a closed-form scalar
recursion; the sampler is linear in its noises, so its output covariance is exact
(``linear_covariance``, no Monte Carlo). Two per-scale models: the exact denoiser (the posterior
mean) and the exact flow map to the data (a perfect few-step student, with which multistep
sampling at full resolution is exact in law)."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.accelerate import METHODS
from reverie.accelerate.scalewise import scalewise_sample
from reverie.denoisers import DenoiserBase
from reverie.reference.fields import GaussianField, linear_covariance
from reverie.reference.spectral import circulant, ring_spectrum

PROC = reverie.EDM()
N = 32
SCHEDULE = [(9, 80.0), (17, 2.0), (N, 0.6)]  # odd low scales: no Nyquist bin to split
TRUTH = GaussianField.stationary(N, 2.5, periodic=True)
LAM = ring_spectrum(TRUTH.cov)  # unitary spectrum at N, fftfreq order
P = LAM / N  # per-frequency amplitude variance (norm="forward" coefficients)


def _field_at(m: int) -> GaussianField:
    """The truth seen at ``m`` points: the same amplitudes at ``|f| <= (m - 1) / 2``."""
    f = torch.fft.fftfreq(m, 1 / m).round().long()
    return GaussianField(circulant(m * P[f % N]), (m,))


class FlowMap(DenoiserBase):
    """The exact probability-flow map of a field from ``t`` to the data: per eigen-direction
    ``x0 = x sqrt(l / (a^2 l + s^2))`` (the Gaussian's monotone transport)."""

    def __init__(self, field: GaussianField):
        self.field, self.process = field, PROC

    def __call__(self, x, t, **cond):
        a, s = PROC.alpha(t[0]).item(), PROC.sigma(t[0]).item()
        f = self.field
        return ((x @ f.evecs) * (f.evals / (a * a * f.evals + s * s)).sqrt()) @ f.evecs.T


def _gain(kind, a, s, p, m):
    if kind == "flow":
        return (p / (a * a * p + s * s / m)).sqrt()
    return a * p / (a * a * p + s * s / m)  # the posterior mean


def _exact_spectrum(schedule, kind="mean") -> torch.Tensor:
    """The output's unitary spectrum at ``N`` by the per-frequency recursion: the model's gain
    ``g`` (:func:`_gain`), white noise of amplitude variance ``1 / m`` at ``m`` points."""
    freq = torch.fft.fftfreq(N, 1 / N).abs()
    w = torch.full((N,), PROC.sigma(torch.tensor(schedule[0][1])).item() ** 2 / schedule[0][0],
                   dtype=torch.float64)  # the state's amplitude variance, pure noise
    for i, (m, t) in enumerate(schedule):
        a, s = float(PROC.alpha(torch.tensor(t))), float(PROC.sigma(torch.tensor(t)))
        here = freq <= (m - 1) / 2 if m < N else torch.ones(N, dtype=torch.bool)
        u = torch.where(here, _gain(kind, a, s, P, m) ** 2 * w, 0.0)  # x0's variance
        if i == len(schedule) - 1:
            return N * u
        m2, t2 = schedule[i + 1]
        a2, s2 = float(PROC.alpha(torch.tensor(t2))), float(PROC.sigma(torch.tensor(t2)))
        w = a2 * a2 * u + s2 * s2 / m2  # enlarged (amplitudes kept) and re-noised
    raise AssertionError


def _cov(renoise: float = 1.0, schedule=SCHEDULE, kind="mean") -> torch.Tensor:
    model = FlowMap if kind == "flow" else (lambda f: f.denoiser(PROC))
    dens = [model(_field_at(m) if m < N else TRUTH) for m, _ in schedule]
    sizes = [m for m, _ in schedule]
    cuts = torch.tensor([0, *sizes]).cumsum(0).tolist()

    def fn(z):
        parts = [z[:, cuts[i]:cuts[i + 1]] for i in range(len(sizes))]
        return scalewise_sample(dens, parts[0], schedule,
                                noises=[renoise * p for p in parts[1:]])
    return linear_covariance(fn, cuts[-1])


@pytest.mark.parametrize("kind", ["mean", "flow"])
def test_scalewise_sampler_matches_the_exact_per_frequency_law(kind):
    exact = circulant(_exact_spectrum(SCHEDULE, kind))
    assert float((_cov(kind=kind) - exact).abs().max()) < 1e-7  # measured 2e-9
    # a re-noising level 15% off (either way) is rejected by the same check
    for r in (1.15, 0.85):
        assert float((_cov(r, kind=kind) - exact).abs().max()) > 1e-2  # measured >= 0.03


def test_scalewise_loses_little_against_full_resolution_steps():
    # with the perfect student, the same (size, t) schedule at full resolution is exact in law;
    # starting at 9 then 17 points loses only what the coarse scales miss above the noise
    # (up to the pure-noise start at sigma = 80, which ignores the data's variance)
    full = _cov(schedule=[(N, t) for _, t in SCHEDULE], kind="flow")
    assert float((full - TRUTH.cov).abs().max()) < 1e-3  # measured 3.5e-4
    sw = _cov(kind="flow")
    err = float((sw - TRUTH.cov).abs().max())
    assert err < 1e-3  # measured 4.3e-4
    ratio = ring_spectrum(sw) / LAM
    assert float(ratio.min()) > 0.97  # every frequency keeps its variance (measured >= 0.982)
    # skipping the middle scale (9 points straight to the last level) loses the frequencies
    # 5..7 that 9 points cannot hold and sigma = 0.6 no longer drowns: rejected
    skip = _cov(schedule=[(9, 80.0), (N, 0.6)], kind="flow")
    assert float((skip - TRUTH.cov).abs().max()) > 10 * err  # measured 0.010
    assert float((ring_spectrum(skip) / LAM).min()) < 0.6  # measured 0.54 at |f| = 5


def test_scalewise_with_one_scale_is_one_denoiser_call_and_registered():
    z = torch.randn(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    den = TRUTH.denoiser(PROC)
    x = scalewise_sample(den, z, [(N, 80.0)])
    assert torch.allclose(x, den(80.0 * z, torch.full((3,), 80.0, dtype=torch.float64)))
    assert METHODS["scalewise"].kind == "sampler"
    # a convolution-free denoiser per scale; a single shared one must accept every size
    y = scalewise_sample([_field_at(9).denoiser(PROC), den], z[:, :9], [(9, 80.0), (N, 1.0)],
                         generator=torch.Generator().manual_seed(1))
    assert y.shape == (3, N)


def test_scalewise_bad_input():
    den = TRUTH.denoiser(PROC)
    z = torch.randn(2, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="shrink"):
        scalewise_sample(den, z, [(9, 80.0), (5, 1.0)])
    with pytest.raises(ValueError, match="decrease"):
        scalewise_sample(den, z, [(9, 1.0), (N, 2.0)])
    with pytest.raises(ValueError, match="first size"):
        scalewise_sample(den, z, [(N, 80.0)])
    with pytest.raises(ValueError, match="one denoiser per"):
        scalewise_sample([den], z, [(9, 80.0), (N, 1.0)])
    with pytest.raises(ValueError, match="noises"):
        scalewise_sample(den, z, [(9, 80.0), (N, 1.0)], noises=[])
    with pytest.raises(ValueError, match="at least one"):
        scalewise_sample(den, z, [])
    with pytest.raises(ValueError, match="unknown upsample"):
        scalewise_sample(den, z, [(9, 80.0), (N, 1.0)], upsample="cubic")


class _RingNet(torch.nn.Module):
    """A tiny circular 1-D convolution predicting ``x0`` at any length (EDM sigma input)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv1d(2, 16, 3, padding=1, padding_mode="circular")
        self.b = torch.nn.Conv1d(16, 1, 3, padding=1, padding_mode="circular")

    def forward(self, x, t):
        s = t.float().reshape(-1, 1, 1)
        h = torch.cat([x / (1 + s * s).sqrt(), s.log().expand_as(x)], 1)
        return self.b(torch.tanh(self.a(h)))


def test_scalewise_distill_learns_the_field_at_two_scales():
    # a 2-step student (4 points, then 8) trained by MMD on field samples; its starting copy
    # (the same network, untrained here) fails the same check
    from reverie.accelerate.distill import mmd
    from reverie.accelerate.scalewise import scalewise_distill
    from reverie.denoisers import Denoiser

    torch.manual_seed(0)
    field = GaussianField.stationary(8, 1.5, periodic=True)
    gen = torch.Generator().manual_seed(0)
    targets, held = (field.sample(512, gen).float()[:, None] for _ in range(2))
    teacher = Denoiser(_RingNet(), PROC, "x0")
    schedule = [((4,), 80.0), ((8,), 1.0)]
    student = scalewise_distill(teacher, targets, schedule, iters=60, batch=64, lr=1e-2)
    noise = torch.randn(512, 1, 4, generator=torch.Generator().manual_seed(1))
    untrained = scalewise_distill(teacher, targets, schedule, iters=1, lr=0.0)

    def dist(s):
        return float(mmd(s.sample(noise), held))
    assert dist(student) < 0.05 * dist(untrained)  # measured 0.013 against 0.78
    assert METHODS["scalewise_distill"].kind == "distill"
    with pytest.raises(ValueError, match="trained for 2 steps"):
        student.sample(noise, 1)

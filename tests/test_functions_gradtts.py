"""reverie.gradtts: Grad-TTS's data-dependent prior N(mu, I) as a process: closed-form
marginals against the paper's SDE, every sampler reproducing the data law per example, the
synthetic tone example."""

from __future__ import annotations

import pytest
import torch

from reverie import SAMPLERS
from reverie.functions import gaussian_errors
from reverie.gradtts import GradTTS, align_means, frame_residual, tone_frames
from reverie.reference import Gaussian


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


D, N = 4, 1500
PROC = GradTTS()
# the data: X0 = mu + R, R ~ N(b, C) with a full covariance, mu one of three per example
RESIDUAL = Gaussian([0.3, -0.2, 0.0, 0.5], torch.tensor([[0.5, 0.2, 0.0, 0.1],
                                                         [0.2, 0.4, 0.1, 0.0],
                                                         [0.0, 0.1, 0.3, 0.05],
                                                         [0.1, 0.0, 0.05, 0.6]]))
MUS = torch.tensor([[3.0, -2.0, 1.0, 0.0], [-3.0, 0.5, 2.0, -2.5], [0.0, 2.5, -3.0, 3.0]],
                   dtype=torch.float64)
MU = MUS[torch.arange(N) % 3]


def residual_errors(x: torch.Tensor, mu: torch.Tensor = MU) -> dict[str, float]:
    """``x - mu`` against the residual law, per prior mean (worst of the three)."""
    errs = [gaussian_errors((x - mu)[k::3], RESIDUAL.means[0], RESIDUAL.covariances[0])
            for k in range(3)]
    return {key: max(e[key] for e in errs) for key in ("mean", "cov")}


def matches(err: dict[str, float]) -> bool:
    """Floor at n = 500 per mean: mean ~0.045, cov ~0.06; first-order stochastic samplers at
    100 steps add up to ~0.15 to the covariance (their variance shrinkage)."""
    return err["mean"] < 0.12 and err["cov"] < 0.2


@pytest.mark.parametrize("t", [0.2, 0.6, 1.0])
def test_marginals_solve_the_papers_sde(t):
    """Euler-Maruyama on eq. 1 (dX = 1/2 (mu - X) beta dt + sqrt(beta) dW, 400 steps) from
    data with three different mu ends at the closed form N((1 - a) mu + a x0, 1 - a^2) of
    eq. 3-4 (errors at the floor); the same marginal without the shift (a zero-mean VP, as a
    wrong mu = 0) is rejected."""
    g = gen(0)
    x0 = MU + RESIDUAL.sample(N, g)
    x, k = x0.clone(), 400
    for i in range(k):
        drift, diff = PROC.drift_diffusion(x, t * i / k, MU)
        x = x + drift * (t / k) + diff * (t / k) ** 0.5 * torch.randn(x.shape, generator=g,
                                                                      dtype=torch.float64)
    def worst(z: torch.Tensor) -> tuple[float, float]:
        """Largest |mean| and |std - 1| of z over coordinates and the three mu groups."""
        groups = [z[k::3] for k in range(3)]
        return (max(float(g.mean(0).abs().max()) for g in groups),
                max(float((g.std(0) - 1).abs().max()) for g in groups))

    mean, std = PROC.marginal(x0, MU, t)
    m_err, s_err = worst((x - mean) / std)  # standard normal if the marginal is right
    assert m_err < 0.15 and s_err < 0.1, (m_err, s_err)
    a, s = float(PROC.process.alpha(t)), float(PROC.process.sigma(t))
    assert worst((x - a * x0) / s)[0] > 0.5


ODE = [n for n in SAMPLERS if not SAMPLERS[n].stochastic]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reproduces_the_data_law(name):
    """The exact denoiser with mu as conditioning, any sampler (100 steps for stochastic and
    first-order ones, 25 otherwise), from N(mu, I): X0 - mu follows the residual law for
    each mu."""
    den = PROC.exact_denoiser(RESIDUAL)
    info = SAMPLERS[name]
    steps = 100 if info.stochastic or info.order == 1 else 25
    x = PROC.sample(den, MU, name, steps, noise=torch.randn(N, D, generator=gen(1),
                                                            dtype=torch.float64),
                    generator=gen(2))
    err = residual_errors(x)
    assert matches(err), err


def test_the_check_rejects_a_wrong_mu_or_a_start_from_n01():
    """Sampling with mu 0.5 off, or the ODE started from N(0, I) instead of N(mu, I)
    (noise - mu), lands off the data law."""
    den = PROC.exact_denoiser(RESIDUAL)
    noise = torch.randn(N, D, generator=gen(1), dtype=torch.float64)
    wrong = PROC.sample(den, MU + 0.5, "dpmpp_2m", 25, noise=noise)
    assert not matches(residual_errors(wrong))
    start0 = PROC.sample(den, MU, "dpmpp_2m", 25, noise=noise - MU)
    assert not matches(residual_errors(start0))


def test_tone_example_recovers_the_pitches():
    """The note sequence's frames sampled from the exact denoiser given the aligner's mu: the
    loudest bin of every frame is its note's pitch, and the frames follow X0 | mu."""
    pitches, durations = [4, 7, 5, 9], [6, 4, 8, 5]
    mu = align_means(pitches, durations)
    den = PROC.exact_denoiser(frame_residual())
    x = PROC.sample(den, mu.repeat(50, 1), "dpmpp_2m", 20, generator=gen(0))
    note_pitch = torch.tensor(sum(([p] * d for p, d in zip(pitches, durations)), []))
    assert bool((x.reshape(50, -1, 20).mean(0).argmax(-1) == note_pitch).all())
    r = frame_residual()
    # floor of exact draws (n = 1150, 20 strongly correlated bins): mean 0.02, cov 0.06-0.13
    err = gaussian_errors(x - mu.repeat(50, 1), r.means[0], r.covariances[0])
    assert err["mean"] < 0.1 and err["cov"] < 0.2, err
    assert tone_frames(pitches, durations, generator=gen(1)).shape == (23, 20)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        align_means([4, 5], [3])
    with pytest.raises(ValueError, match=">= 1 frame"):
        align_means([4], [0])
    with pytest.raises(ValueError, match="'score', 'eps' or 'x0'"):
        PROC.denoiser(lambda x, t, mu: x, prediction="v")
    den = PROC.exact_denoiser(RESIDUAL)
    with pytest.raises(ValueError, match="shaped like mu"):
        PROC.sample(den, MU, noise=torch.zeros(3, D, dtype=torch.float64))

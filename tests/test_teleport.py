"""Analytical teleportation (reverie.teleport): the Gaussian read off the model is exact on
Gaussian data and the data's moments at high noise; teleport + sampler is the exact ODE map on
Gaussian data and the exact law on a mixture when it teleports to a noise level where the
mixture looks Gaussian (and not when it teleports below it)."""

import statistics

import pytest
import torch
from tests.conftest import gen

import reverie
from reverie.metrics import SlicedWasserstein
from reverie.reference import Gaussian
from reverie.teleport import GaussianFit, fit_gaussian, sample

PROCESSES = [reverie.VP.linear(), reverie.EDM(), reverie.RectifiedFlow()]
F64 = torch.float64


def _moments_close(fit: GaussianFit, mean: torch.Tensor, cov: torch.Tensor, rtol: float) -> bool:
    scale = float(torch.linalg.matrix_norm(cov, ord=2))
    return (float((fit.mean - mean).norm()) <= rtol * scale**0.5
            and float(torch.linalg.matrix_norm(fit.cov - cov, ord=2)) <= rtol * scale)


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_fit_is_exact_on_a_gaussian(gaussian, proc):
    fit = fit_gaussian(gaussian.denoiser(proc), (2,), n=64, generator=gen(0), dtype=F64)
    assert fit.nfe == 64
    assert _moments_close(fit, gaussian.means[0], gaussian.covariances[0], 1e-6)


def test_fit_reads_the_data_moments_at_high_noise_only(mixture):
    """Wang & Vastola's premise: at high noise any data's denoiser is its Gaussian's; the same
    check rejects the fit at sigma / alpha = 1, where the mixture is not Gaussian."""
    proc = reverie.VP.linear()
    mean, cov = mixture.mean().to(F64), mixture.covariance().to(F64)
    high = fit_gaussian(mixture.denoiser(proc), (2,), n=512, generator=gen(1), dtype=F64)
    assert _moments_close(high, mean, cov, 0.02)
    t_low = float(proc.t_from_sigma_ve(torch.tensor(1.0, dtype=F64)))
    low = fit_gaussian(mixture.denoiser(proc), (2,), n=512, t=t_low, generator=gen(1), dtype=F64)
    assert not _moments_close(low, mean, cov, 0.1)


def _ode_to(den, x: torch.Tensor, t1: float) -> torch.Tensor:
    """The probability-flow ODE from ``t_max`` to ``t1``, solved numerically (third-order
    DPM-Solver++(3M), 200 steps uniform in t, the state at ``t1`` kept)."""
    proc = den.process
    grid = reverie.make_grid(proc, 200, "uniform", t_min=t1)
    kept = []
    reverie.run("dpmpp_3m", den, x, grid, legacy=False,
                callback=lambda state, sch: kept.append(state.x) if state.i == 199 else None)
    return kept[0]


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_teleport_is_the_ode_solution_on_a_gaussian(gaussian, proc):
    den = gaussian.denoiser(proc)
    x = torch.randn(256, 2, generator=gen(2), dtype=F64) * float(proc.sigma(proc.t_max))
    t1 = float(proc.t_from_sigma_ve(torch.tensor(1.5, dtype=F64)))
    solved = _ode_to(den, x, t1)
    right = fit_gaussian(den, (2,), n=64, generator=gen(0), dtype=F64)
    wrong = GaussianFit.from_moments(right.mean, 1.15 * right.cov)
    err = {k: float((f.teleport(x, proc.t_max, t1, proc) - solved).abs().max() / solved.std())
           for k, f in (("right", right), ("wrong", wrong))}
    # the fitted Gaussian's closed form is the ODE solution; a 15% wrong covariance is not
    assert err["right"] < 1e-3 and err["wrong"] > 2e-2, err
    out = sample(den, x / float(proc.sigma(proc.t_max)), "unipc", 5, fit=right)
    assert out.nfe == 5 and float(out.grid[0]) == pytest.approx(
        float(proc.t_from_sigma_ve(torch.tensor(right.scale, dtype=F64))))


def test_teleport_keeps_the_mixture_law_only_above_its_gaussian_phase(mixture):
    proc, n = reverie.VP.linear(), 2000
    sw = SlicedWasserstein(mixture.sample(5 * n, gen(3)), 64, gen(4), p=1)
    floor = [sw(mixture.sample(n, gen(10 + k))) for k in range(6)]
    tol = statistics.mean(floor) + 4 * statistics.stdev(floor)
    fit = fit_gaussian(mixture.denoiser(proc), (2,), generator=gen(5))
    noise = torch.randn(n, 2, generator=gen(6), dtype=F64)
    dist = {skip: sw(sample(mixture.denoiser(proc), noise, "unipc", 25, fit=fit, skip=skip).x0)
            for skip in (1.0, 0.25)}
    # the default skip = 1 teleports to the widest data scale (sigma / alpha = 2.3 here, modes
    # 5 apart) and keeps the exact law; skip = 0.25 teleports into the modes' own scale, where
    # the mixture is not Gaussian, and the same check rejects it
    assert dist[1.0] < tol < dist[0.25], (dist, tol)


def test_bad_input(gaussian):
    proc = reverie.VP.linear()
    den = gaussian.denoiser(proc)
    fit = GaussianFit.from_moments(gaussian.means[0], gaussian.covariances[0])
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match="more model calls"):
        fit_gaussian(den, (2,), n=3)
    with pytest.raises(ValueError, match="skip must be a positive"):
        sample(den, noise, fit=fit, skip=0.0)
    with pytest.raises(ValueError, match="at or below t_min"):
        sample(den, noise, fit=fit, skip=1e-6)
    with pytest.raises(TypeError, match="grid name"):
        sample(den, noise, fit=fit, grid=torch.linspace(999, 0, 6))
    with pytest.raises(TypeError, match="GaussianFit"):
        sample(den, noise, fit=gaussian)
    with pytest.raises(ValueError, match="shape"):
        sample(den, torch.randn(4, 3), fit=fit)
    with pytest.raises(ValueError, match="more samples than dimensions"):
        GaussianFit.from_data(torch.randn(2, 2))
    data = Gaussian([1.0, -1.0], [[0.5, 0.1], [0.1, 0.3]]).sample(20000, gen(7))
    assert _moments_close(GaussianFit.from_data(data), torch.tensor([1.0, -1.0], dtype=F64),
                          torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64), 0.05)

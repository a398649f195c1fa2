"""Sequential posterior sampling (Stevens et al., ICASSP 2025) on a linear-Gaussian state-space
model: ``x_k = rho x_{k-1} + sqrt(1 - rho^2) w_k`` (stationary law N(0, I), the diffusion prior),
``y_k = A x_k + 0.3 v_k``. Each frame's posterior ``p(x_k | y_k)`` is Gaussian in closed form;
PiGDM is exact for this prior, so the error left is the time discretisation."""

import pytest
import torch

import reverie
from reverie.inverse import MatrixOperator
from reverie.inverse.sequential import sequential_solve
from reverie.reference import Gaussian, linear_gaussian_posterior
from reverie.timeseries.metrics import gaussian_w2

F64 = torch.float64
A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
SY, RHO, FRAMES = 0.3, 0.95, 4


def _case():
    g = torch.Generator().manual_seed(0)
    x, ys = torch.randn(3, generator=g, dtype=F64), []
    for _ in range(FRAMES):
        ys.append(A @ x + SY * torch.randn(2, generator=g, dtype=F64))
        x = RHO * x + (1 - RHO**2) ** 0.5 * torch.randn(3, generator=g, dtype=F64)
    prior = Gaussian(torch.zeros(3, dtype=F64), None)
    posts = [linear_gaussian_posterior(prior, A, y, SY**2) for y in ys]
    return prior.denoiser(reverie.VP.linear()), torch.stack(ys), posts, g


def _w2(samples, posts):
    """Mean W2 to the exact per-frame posteriors over the warm-started frames 2..K."""
    return sum(gaussian_w2(s.mean(0), torch.cov(s.T), p.mean(), p.covariance())
               for s, p in zip(samples[1:], posts[1:])) / (FRAMES - 1)


def test_warm_start_beats_cold_start_at_equal_steps_and_wrong_transition_is_rejected():
    den, ys, posts, g = _case()
    op, kw = MatrixOperator(A), {"method": "pigdm", "n": 2000, "generator": g}
    warm = _w2(sequential_solve(den, op, ys, SY, lambda x: RHO * x, steps=200, warm_steps=50,
                                **kw), posts)
    # cold: every frame from noise with the same 50 steps
    cold = _w2(torch.stack([sequential_solve(den, op, y[None], SY, None, steps=50, warm_steps=50,
                                             **kw)[0] for y in ys]), posts)
    assert warm < 0.85 * cold, (warm, cold)
    # sibling: a wrong transition model (the sign flipped) spoils the warm start
    bad = _w2(sequential_solve(den, op, ys, SY, lambda x: -RHO * x, steps=200, warm_steps=50,
                               **kw), posts)
    assert bad > 1.3 * warm, (bad, warm)


def test_sequential_bad_input():
    den, ys, _, g = _case()
    op = MatrixOperator(A)
    with pytest.raises(ValueError, match="method must be one of"):
        sequential_solve(den, op, ys, SY, lambda x: x, method="ddrm")
    with pytest.raises(ValueError, match="ys must have shape"):
        sequential_solve(den, op, ys[:, :1], SY, lambda x: x)
    with pytest.raises(ValueError, match="warm_steps"):
        sequential_solve(den, op, ys, SY, lambda x: x, steps=10, warm_steps=20)

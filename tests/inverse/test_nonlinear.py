"""Non-linear forward models (phase retrieval, saturated blur): forward maps by hand, gradients
by finite differences, refusal by the linear / SVD methods, and the gradient-based posterior
samplers against the exact posterior of a 2-D Gaussian mixture computed on a grid."""

import math

import pytest
import torch

import reverie
from reverie.inverse import (
    METHODS,
    MatrixOperator,
    PhaseRetrieval,
    Saturated,
    compatible_methods,
    gaussian_kernel,
    nonlinear_blur,
    random_phase_retrieval,
    solve,
)
from reverie.metrics import sliced_wasserstein
from reverie.reference import GaussianMixture

F64 = torch.float64
PROC = reverie.VP.linear()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_forward_maps_by_hand():
    B = torch.tensor([[1 + 1j, 0], [0, 2j], [1, -1]], dtype=torch.complex128)
    pr = PhaseRetrieval(B)
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=F64)
    want = torch.tensor([2.0, 16.0, 1.0], dtype=F64)  # |1+i|^2, |4i|^2, |1-2|^2
    assert torch.allclose(pr(x), want.expand(2, 3))  # and the sign of x is not seen
    sat = Saturated(MatrixOperator(torch.tensor([[1.0, 0.5]], dtype=F64)), gain=2.0)
    u = 0.4 + 0.5 * 0.2
    assert torch.allclose(sat(torch.tensor([[0.4, 0.2]], dtype=F64)),
                          torch.tensor([[math.tanh(2 * u) / math.tanh(2.0)]], dtype=F64))
    # nonlinear_blur is the saturated Blur; deepinv's RandomPhaseRetrieval scaling E|B_ij|^2 = 1/m
    img = torch.randn(2, 1, 6, 6, generator=_gen(0), dtype=F64)
    nb = nonlinear_blur(gaussian_kernel(3, 1.0), (1, 6, 6), gain=1.5)
    assert torch.allclose(nb(img), torch.tanh(1.5 * nb.operator.A(img)) / math.tanh(1.5))
    rp = random_phase_retrieval(400, (1, 5, 5), _gen(1))
    power = float((rp.re**2 + rp.im**2).mean())
    assert abs(power * 400 - 1) < 0.03, power * 400


def _fd_error(f, x, v, vjp):
    """Relative gap between <vjp(v), d> and the central difference of <v, f(x + h d)>."""
    d = torch.randn(x.shape, generator=_gen(9), dtype=F64)
    h = 1e-5
    fd = ((f(x + h * d) - f(x - h * d)) * v).sum() / (2 * h)
    return float(((vjp * d).sum() - fd).abs() / fd.abs())


@pytest.mark.parametrize("which", ["phase", "saturated"])
def test_gradients_match_finite_differences(which):
    x = torch.randn(3, 1, 4, 4, generator=_gen(2), dtype=F64)
    if which == "phase":
        f = random_phase_retrieval(24, (1, 4, 4), _gen(3))
    else:
        k = torch.tensor([[0.0, 0.2, 0.1], [0.1, 0.4, 0.0], [0.0, 0.1, 0.1]])  # not symmetric
        f = nonlinear_blur(k, (1, 4, 4), gain=2.0)
    v = torch.randn(3, *f.out_shape, generator=_gen(4), dtype=F64)
    xr = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad((f(xr) * v).sum(), xr)
    assert _fd_error(f, x, v, vjp) < 1e-7
    if which == "phase":  # the closed form 2 Re(B^H (B x) v), as deepinv's A_vjp
        B = torch.complex(f.re, f.im)
        bx = x.reshape(3, -1).to(B.dtype) @ B.T
        closed = 2 * ((bx * v) @ B.conj()).real.reshape(x.shape)
        assert torch.allclose(vjp, closed)
    assert _fd_error(f, x, v, 1.15 * vjp) > 0.1  # a 15% wrong gradient is caught


def test_linear_and_svd_methods_refuse_a_non_linear_model():
    f = random_phase_retrieval(6, (2,), _gen(0))
    assert compatible_methods(f) == tuple(m for m in METHODS if not METHODS[m].linear)
    assert set(compatible_methods(f)) == {"dps", "red_diff", "tds"}
    den = GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0).denoiser(PROC)
    y = torch.ones(6, dtype=F64)
    for method in ("pigdm", "ddrm", "mcg_diff"):
        with pytest.raises(TypeError, match=r"needs a linear operator.*not linear: no adjoint, "
                           "no SVD"):
            solve(den, f, y, 0.1, method=method)
    with pytest.raises(ValueError, match="does not match the operator's in_shape"):
        solve(den, f, y, 0.1, shape=(3,))
    with pytest.raises(ValueError, match="produces measurements of shape"):
        solve(den, f, torch.ones(5, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="must have shape"):
        f(torch.ones(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="LinearOperator"):
        Saturated(lambda x: x)
    with pytest.raises(ValueError, match="gain"):
        Saturated(MatrixOperator(torch.eye(2)), gain=-1.0)
    with pytest.raises(ValueError, match="columns"):
        PhaseRetrieval(torch.ones(3, 4), in_shape=(5,))


# ---- exact posterior of a 2-D Gaussian mixture under a non-linear measurement ---------------

PRIOR = GaussianMixture(torch.tensor([[2.0, 1.0], [1.0, -2.0], [-0.5, 1.5]], dtype=F64), 0.25,
                        torch.tensor([0.5, 0.3, 0.2], dtype=F64))
SIGMA_Y = 0.2


def _grid_posterior(f, y, n, seed):
    """Exact posterior samples: p(x) N(y; f(x), sigma_y^2) on a 501^2 grid over [-5, 5]^2,
    drawn by cell and jittered uniformly inside it."""
    t = torch.linspace(-5, 5, 501, dtype=F64)
    X = torch.cartesian_prod(t, t)
    logp = PRIOR.log_prob(X) - 0.5 * ((f(X) - y) ** 2).sum(1) / SIGMA_Y**2
    idx = torch.multinomial(torch.softmax(logp, 0), n, replacement=True, generator=_gen(seed))
    return X[idx] + (t[1] - t[0]) * (torch.rand(n, 2, generator=_gen(seed + 1), dtype=F64) - 0.5)


CASES = {  # forward model, seed of the true x
    "phase": (random_phase_retrieval(4, (2,), _gen(0)), 4),
    "saturated": (Saturated(MatrixOperator(torch.tensor([[1.0, 0.6], [-0.4, 1.0]], dtype=F64)),
                            gain=2.0), 6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_methods_approach_the_exact_posterior(case):
    """Every method that accepts a non-linear model (from the registry) lands within 0.6x the
    prior's sliced-W2 distance to the exact posterior (the phase-retrieval one is bimodal in
    the sign of x); the same method run with the measurement of another x does not. DPS at
    scale 0.3 (its default 1 overshoots on intensities: 0.72 here); 50 steps, 1000 samples."""
    f, seed = CASES[case]
    x_true, x_other = PRIOR.sample(1, _gen(seed)), PRIOR.sample(1, _gen(11))
    y = f(x_true)[0] + SIGMA_Y * torch.randn(f.out_shape, generator=_gen(5), dtype=F64)
    ref = _grid_posterior(f, y, 4000, 7)

    def sw(x):
        return sliced_wasserstein(x, ref, 128, _gen(3))

    bound = 0.6 * sw(PRIOR.sample(1000, _gen(8)))
    den = PRIOR.denoiser(PROC)
    for method in compatible_methods(f):
        kw = dict(method=method, steps=50, n=1000, **({"scale": 0.3} if method == "dps" else {}))
        got = sw(solve(den, f, y, SIGMA_Y, generator=_gen(1), **kw))
        wrong = sw(solve(den, f, f(x_other)[0], SIGMA_Y, generator=_gen(1), **kw))
        assert got < bound < wrong, (method, got, bound, wrong)


def test_tds_inflated_twist_at_small_noise():
    """Phase retrieval at sigma_y = 0.05: TDS's default twist, inflated by the denoiser's
    uncertainty along the Jacobian (``sigma_y^2 + r_t^2 |J^T u|^2``), lands within 0.25x the
    prior's sliced-W2 distance to the exact posterior (200 samples: 0.19-0.23 over seeds 1-3,
    the prior 1.46); the measurement of another x does not (0.86-0.92), and the un-inflated
    twist ``N(y; A(D), sigma_y^2)`` diverges (it used to end in NaN) with an error naming the
    method and the step. Not claimed: a spread as wide as the posterior's -- one cloud's
    weights degenerate at this noise (ESS ~2 mid-run), its samples are narrower than the
    posterior, and the posterior mean as a point estimate scores 0.24."""
    sy = 0.05
    f, seed = CASES["phase"]
    y = f(PRIOR.sample(1, _gen(seed)))[0] + sy * torch.randn(f.out_shape, generator=_gen(5),
                                                              dtype=F64)
    t = torch.linspace(-5, 5, 501, dtype=F64)
    X = torch.cartesian_prod(t, t)
    logp = PRIOR.log_prob(X) - 0.5 * ((f(X) - y) ** 2).sum(1) / sy**2
    ref = X[torch.multinomial(torch.softmax(logp, 0), 4000, replacement=True, generator=_gen(7))]

    def sw(x):
        return sliced_wasserstein(x, ref, 128, _gen(3))

    bound = 0.25 * sw(PRIOR.sample(1000, _gen(8)))
    den = PRIOR.denoiser(PROC)
    kw = dict(method="tds", steps=50, n=200, generator=_gen(1))
    y_other = f(PRIOR.sample(1, _gen(11)))[0]
    assert sw(solve(den, f, y, sy, **kw)) < bound < sw(solve(den, f, y_other, sy, **kw))
    with pytest.raises(reverie.samplers.NonFiniteError, match=r"tds: (NaN or \+?inf|every particle)"
                       r".* after step \d+/50"):
        solve(den, f, y, sy, inflate=False, **kw)


def test_tds_non_finite_weights_raise():
    """A forward model that is NaN where some particles go (sqrt of a negative coordinate):
    the SMC log-weights become NaN before the sample does, and TDS raises naming the step
    instead of resampling with NaN weights."""
    def f(x):
        return x[:, :1].sqrt()

    den = PRIOR.denoiser(PROC)
    y = torch.ones(1, dtype=F64)
    for inflate in (True, False):
        with pytest.raises(reverie.samplers.NonFiniteError,
                           match=r"tds: NaN or \+inf in the SMC log-weights (after step \d+/20|at "
                           "the start)"):
            solve(den, f, y, 0.1, method="tds", steps=20, n=64, shape=(2,), generator=_gen(0),
                  inflate=inflate)

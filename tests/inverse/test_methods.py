"""Posterior samplers against exact posteriors (Gaussian and Gaussian-mixture priors)."""

import math

import pytest
import torch

import reverie
from reverie.inverse import (
    METHODS,
    Composed,
    Downsample,
    Identity,
    Inpainting,
    MatrixOperator,
    PoissonNoise,
    solve,
)
from reverie.metrics import mode_weights, sliced_wasserstein
from reverie.reference import Gaussian, GaussianMixture, linear_gaussian_posterior

PROC = reverie.VP.linear()
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sw(x, ref):
    return sliced_wasserstein(x, ref, 128, _gen(3))


# ---- Gaussian prior, linear-Gaussian likelihood: the posterior is Gaussian ------------------

GAUSS_A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
GAUSS_Y = torch.tensor([0.05, -1.9], dtype=F64)
GAUSS_SY = 0.3


@pytest.mark.parametrize("method", ["pigdm", "tds", "mcg_diff"])
def test_exact_methods_match_the_gaussian_posterior(method):
    """PiGDM (its likelihood approximation is exact for an N(0, I) prior), TDS and MCGdiff
    (asymptotically exact SMC) recover the posterior mean and covariance. Tolerances: 5
    standard errors of the mean (with a 4x smaller effective sample size for the resampled
    SMC clouds) and 10% relative Frobenius error of the covariance (sampling error ~2-4% at
    this size; the rest is the time discretisation of 800 log-SNR-uniform steps, which shrinks
    as steps grow -- see test_exact_methods_converge_with_steps)."""
    prior = Gaussian(torch.zeros(3), None)
    post = linear_gaussian_posterior(prior, GAUSS_A, GAUSS_Y, GAUSS_SY**2)
    mu, C = post.mean(), post.covariance()
    n = 4000
    smc = METHODS[method].particles
    kw = {"particles": 500} if smc else {}
    x = solve(prior.denoiser(PROC), MatrixOperator(GAUSS_A), GAUSS_Y, GAUSS_SY, method=method,
              steps=800, n=n, generator=_gen(1), grid="logsnr", **kw)
    n_eff = n / 4 if smc else n
    se = torch.sqrt(torch.diagonal(C) / n_eff)
    assert bool(((x.mean(0) - mu).abs() < 5 * se).all()), (x.mean(0), mu)
    rel = float(torch.linalg.norm(x.T.cov() - C) / torch.linalg.norm(C))
    assert rel < 0.1, rel
    # the prior's covariance (I) is far from the posterior's: the check can fail
    assert float(torch.linalg.norm(torch.eye(3, dtype=F64) - C) / torch.linalg.norm(C)) > 0.5


def test_exact_methods_converge_with_steps():
    """Discretisation error of PiGDM's posterior variance shrinks as steps double."""
    prior = Gaussian(torch.zeros(3), None)
    C = linear_gaussian_posterior(prior, GAUSS_A, GAUSS_Y, GAUSS_SY**2).covariance()
    errs = []
    for steps in (25, 100):
        x = solve(prior.denoiser(PROC), MatrixOperator(GAUSS_A), GAUSS_Y, GAUSS_SY,
                  method="pigdm", steps=steps, n=4000, generator=_gen(2))
        errs.append(float(torch.linalg.norm(x.T.cov() - C) / torch.linalg.norm(C)))
    assert errs[1] < 0.5 * errs[0], errs


# ---- Gaussian-mixture prior ----------------------------------------------------------------


def _mixture():
    means = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], dtype=F64)
    return GaussianMixture(means, 0.25, torch.tensor([0.1, 0.2, 0.3, 0.4]))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "structured_noise"])
def test_every_method_improves_on_the_prior(method):
    prior = _mixture()
    A = torch.tensor([[1.0, 0.3], [-0.2, 1.0]], dtype=F64)
    y = torch.tensor([1.2, -0.5], dtype=F64)
    post = linear_gaussian_posterior(prior, A, y, 0.5**2)
    n = 1000
    ref = post.sample(n, _gen(5))
    res = solve(prior.denoiser(PROC), MatrixOperator(A), y, 0.5, method=method, steps=50, n=n,
                generator=_gen(1), return_info=True)
    assert res.samples.shape == (n, 2)
    assert res.nfe == 50 and res.method == METHODS[method].name
    assert _sw(res.samples, ref) < 0.6 * _sw(prior.sample(n, _gen(6)), ref)


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].particles])
def test_smc_error_shrinks_as_particles_grow(method):
    """A hard problem (one measurement of a bimodal posterior): the mode weights of
    clouds of 2 particles are badly off; clouds of 256 get them nearly right."""
    prior = _mixture()
    A = torch.tensor([[1.0, 0.3]], dtype=F64)
    y = torch.tensor([1.2], dtype=F64)
    post = linear_gaussian_posterior(prior, A, y, 0.5**2)
    ref = mode_weights(post.sample(20000, _gen(5)), prior)
    errs = []
    for particles in (2, 256):
        x = solve(prior.denoiser(PROC), MatrixOperator(A), y, 0.5, method=method, steps=30,
                  n=1024, particles=particles, generator=_gen(1))
        errs.append(float((mode_weights(x, prior) - ref).abs().sum()))
    assert errs[1] < 0.5 * errs[0] and errs[1] < 0.15, errs


def _grid_posterior(prior, loglik, n, seed, lim=5.0, size=401):
    """Exact samples by quadrature on a fine 2-D grid (+ uniform jitter within a cell)."""
    u = torch.linspace(-lim, lim, size, dtype=F64)
    pts = torch.cartesian_prod(u, u)
    logp = prior.log_prob(pts) + loglik(pts)
    idx = torch.multinomial(torch.softmax(logp, 0), n, replacement=True, generator=_gen(seed))
    h = u[1] - u[0]
    return pts[idx] + (torch.rand(n, 2, generator=_gen(seed + 1), dtype=F64) - 0.5) * h


@pytest.mark.parametrize("method", ["dps", "tds", "red_diff"])
def test_non_linear_operator(method):
    prior = _mixture()

    def f(x):
        return (x[:, 0] + 0.2 * x[:, 1] ** 2)[:, None]

    y = torch.tensor([3.0], dtype=F64)
    sy = 0.5

    def loglik(x):
        return -0.5 * ((y - f(x)) ** 2).sum(1) / sy**2

    ref = _grid_posterior(prior, loglik, 1000, 7)
    x = solve(prior.denoiser(PROC), f, y, sy, method=method, steps=50, n=1000, shape=(2,),
              generator=_gen(1))
    assert _sw(x, ref) < 0.6 * _sw(prior.sample(1000, _gen(6)), ref)


@pytest.mark.parametrize("method", ["dps", "tds"])
def test_poisson_noise(method):
    prior = GaussianMixture(torch.tensor([[1.0, 3.0], [3.0, 1.0], [3.0, 3.0]], dtype=F64), 0.1)
    A = torch.tensor([[1.0, 0.2], [0.3, 1.0]], dtype=F64)
    noise = PoissonNoise(rate=4.0)
    y = noise.sample((torch.tensor([[1.0, 3.0]], dtype=F64) @ A.T), _gen(3))[0]

    def loglik(x):
        return noise.log_likelihood(y.expand(x.shape[0], 2), x @ A.T)

    ref = _grid_posterior(prior, loglik, 1000, 7, lim=6.0)
    kw = {"scale": 0.3} if method == "dps" else {}
    x = solve(prior.denoiser(PROC), MatrixOperator(A), y, noise, method=method, steps=50, n=1000,
              generator=_gen(1), **kw)
    assert _sw(x, ref) < 0.5 * _sw(prior.sample(1000, _gen(6)), ref)


# ---- joint signal + structured noise --------------------------------------------------------


def test_structured_noise_exact_for_gaussian_priors():
    """Isotropic Gaussian priors for signal and noise: the joint PiGDM likelihood is exact and
    the signal posterior is linear_gaussian_posterior with noise variance q^2 + sigma_y^2."""
    q, sy = 0.7, 0.2
    sig, noi = Gaussian(torch.zeros(3), None), Gaussian(torch.zeros(2), q**2)
    post = linear_gaussian_posterior(sig, GAUSS_A, GAUSS_Y, q**2 + sy**2)
    res = solve(sig.denoiser(PROC), MatrixOperator(GAUSS_A), GAUSS_Y, sy,
                method="structured_noise", steps=200, n=4000, generator=_gen(1),
                noise_denoiser=noi.denoiser(PROC), noise_data_std=q, return_info=True)
    x = res.samples
    C = post.covariance()
    se = torch.sqrt(torch.diagonal(C) / 4000)
    assert bool(((x.mean(0) - post.mean()).abs() < 5 * se).all())
    assert float(torch.linalg.norm(x.T.cov() - C) / torch.linalg.norm(C)) < 0.1
    assert res.nfe == 400 and res.extra["noise"].shape == (4000, 2)


def test_structured_noise_beats_treating_it_as_white():
    """Noise drawn from a two-component mixture along a direction (structured): the joint
    sampler recovers the signal posterior far better than PiGDM with white noise of the
    same total variance. The exact posterior is a mixture over noise components."""
    sig = Gaussian(torch.zeros(2), None)
    d = torch.tensor([1.0, -1.0], dtype=F64) / math.sqrt(2)
    nmeans = torch.stack([2 * d, -2 * d])
    noi = GaussianMixture(nmeans, 0.05)
    A = torch.tensor([[1.0, 0.4], [0.2, 1.0]], dtype=F64)
    y = torch.tensor([2.3, -0.8], dtype=F64)
    sy = 0.1
    # exact: sum_k w_k p(x | y - m_k) with noise variance 0.05 + sy^2
    parts = [linear_gaussian_posterior(sig, A, y - m, 0.05 + sy**2) for m in nmeans]
    ev = torch.stack([
        torch.distributions.MultivariateNormal(
            torch.zeros(2, dtype=F64), A @ A.T + (0.05 + sy**2) * torch.eye(2, dtype=F64)
        ).log_prob(y - m) for m in nmeans
    ])
    w = torch.softmax(ev, 0)
    exact = GaussianMixture(torch.cat([p.means for p in parts]),
                            torch.cat([p.covariances for p in parts]), w)
    ref = exact.sample(2000, _gen(5))
    nstd = math.sqrt(float(torch.diagonal(noi.covariance()).mean()))
    x = solve(sig.denoiser(PROC), MatrixOperator(A), y, sy, method="structured_noise", steps=100,
              n=2000, generator=_gen(1), noise_denoiser=noi.denoiser(PROC), noise_data_std=nstd)
    white = solve(sig.denoiser(PROC), MatrixOperator(A), y, math.sqrt(nstd**2 + sy**2),
                  method="pigdm", steps=100, n=2000, generator=_gen(1))
    assert _sw(x, ref) < 0.5 * _sw(white, ref)


# ---- images: structured operators with exact Gaussian posteriors -----------------------------


@pytest.mark.parametrize("task", ["inpaint", "superres"])
def test_image_operators_match_exact_gaussian_posterior(task):
    """4x4 one-channel 'images' with a correlated Gaussian prior; MCGdiff (through the
    operators' closed-form SVDs) matches the exact posterior mean."""
    g = _gen(8)
    b = torch.randn(16, 16, generator=g, dtype=F64)
    cov = b @ b.T / 16 + 0.1 * torch.eye(16, dtype=F64)
    prior = Gaussian(torch.zeros(16), cov)
    den = reverie.Denoiser(lambda x, t: prior.denoise(x.reshape(-1, 16), t, PROC).reshape(x.shape),
                           PROC, "x0")
    if task == "inpaint":
        op = Inpainting(torch.rand(1, 4, 4, generator=g) > 0.5)
    else:
        op = Downsample(2, (1, 4, 4))
    x_true = prior.sample(1, g).reshape(1, 1, 4, 4)
    y = op.A(x_true)[0] + 0.1 * torch.randn(op.out_shape, generator=g, dtype=F64)
    post = linear_gaussian_posterior(prior, op.matrix(), y.reshape(-1), 0.01)
    x = solve(den, op, y, 0.1, method="mcg_diff", steps=200, n=2000, particles=200,
              generator=_gen(1))
    assert x.shape == (2000, 1, 4, 4)
    se = torch.sqrt(torch.diagonal(post.covariance()) / 500)  # effective size n / 4
    assert bool(((x.reshape(2000, 16).mean(0) - post.mean()).abs() < 5 * se).all())


# ---- bookkeeping and bad input --------------------------------------------------------------


def test_generators_and_determinism():
    prior = _mixture()
    den, op = prior.denoiser(PROC), MatrixOperator(torch.tensor([[1.0, 0.3]], dtype=F64))
    y = torch.tensor([1.2], dtype=F64)
    a = solve(den, op, y, 0.5, method="ddrm", steps=10, n=3, generator=_gen(4))
    b = solve(den, op, y, 0.5, method="ddrm", steps=10, n=3, generator=_gen(4))
    torch.testing.assert_close(a, b)
    # one generator per sample: sample k does not depend on the batch
    one = solve(den, op, y, 0.5, method="dps", steps=10, n=1, generator=[_gen(10)])
    three = solve(den, op, y, 0.5, method="dps", steps=10, n=3,
                  generator=[_gen(10), _gen(11), _gen(12)])
    torch.testing.assert_close(one[0], three[0])


def test_batched_measurements_one_sample_each():
    prior = _mixture()
    den, op = prior.denoiser(PROC), Identity((2,))
    y = torch.tensor([[2.0, 2.0], [-2.0, -2.0]], dtype=F64)
    x = solve(den, op, y, 0.05, method="ddrm", steps=30, generator=_gen(1))
    assert x.shape == (2, 2)
    torch.testing.assert_close(x, y, atol=0.2, rtol=0)


def test_bad_input():
    prior = _mixture()
    den = prior.denoiser(PROC)
    op = MatrixOperator(torch.tensor([[1.0, 0.3]], dtype=F64))
    y = torch.tensor([1.2], dtype=F64)
    with pytest.raises(ValueError, match="unknown method 'nope'; expected one of dps, pigdm"):
        solve(den, op, y, 0.5, method="nope")
    with pytest.raises(ValueError, match=r"y has shape \(3,\).*\[1\]"):
        solve(den, op, torch.ones(3, dtype=F64), 0.5, method="dps")
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        solve(den, op, y, -0.1, method="dps")
    comp = Composed(Downsample(2, (1, 4, 4)), Identity((1, 4, 4)))
    for m in [k for k in METHODS if METHODS[k].svd]:
        with pytest.raises(ValueError, match=f"method '{m}' needs an operator with an SVD"):
            solve(den, comp, torch.ones(1, 2, 2, dtype=F64), 0.5, method=m)
    with pytest.raises(TypeError, match="needs a linear operator"):
        solve(den, lambda x: x[:, :1], y, 0.5, method="pigdm", shape=(2,))
    with pytest.raises(ValueError, match="needs shape="):
        solve(den, lambda x: x[:, :1], y, 0.5, method="dps")
    with pytest.raises(ValueError, match="does not use particles"):
        solve(den, op, y, 0.5, method="dps", particles=4)
    with pytest.raises(ValueError, match="has no option"):
        solve(den, op, y, 0.5, method="ddrm", scale=2.0)
    with pytest.raises(TypeError, match="needs Gaussian noise"):
        solve(den, op, y, PoissonNoise(2.0), method="ddrm")
    with pytest.raises(ValueError, match="one torch.Generator"):
        solve(den, op, y, 0.5, method="tds", n=2, generator=[_gen(1), _gen(2)])
    with pytest.raises(ValueError, match="needs noise_denoiser"):
        solve(den, op, y, 0.5, method="structured_noise")
    with pytest.raises(TypeError, match="reverie denoiser"):
        solve(lambda x, t: x, op, y, 0.5)

    class Shaped(reverie.Denoiser):
        sample_shape = (3,)

    with pytest.raises(ValueError, match=r"operator acts on samples of shape \[2\]"):
        solve(Shaped(lambda x, t: x, PROC, "x0"), op, y, 0.5)
    assert "RED-diff" in METHODS and METHODS["RED-diff"].name == "red_diff"


@pytest.mark.parametrize("method", ["pigdm", "ddrm", "diffpir", "mcg_diff"])
def test_noiseless_measurement_is_met_exactly(method):
    """sigma_y = 0: the samples satisfy A x = y to rounding, and their mean is the exact
    posterior mean (5 standard errors, effective size n / 4)."""
    prior = Gaussian(torch.zeros(3), None)
    post = linear_gaussian_posterior(prior, GAUSS_A, GAUSS_Y, 0.0)
    x = solve(prior.denoiser(PROC), MatrixOperator(GAUSS_A), GAUSS_Y, 0.0, method=method,
              steps=100, n=2000, generator=_gen(0))
    torch.testing.assert_close(x @ GAUSS_A.T, GAUSS_Y.expand(2000, 2), atol=1e-8, rtol=0)
    se = torch.sqrt(torch.diagonal(post.covariance()).clamp(min=1e-12) / 500)
    assert bool(((x.mean(0) - post.mean()).abs() < 5 * se + 1e-8).all())

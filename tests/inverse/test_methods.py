"""Posterior samplers against exact posteriors (Gaussian and Gaussian-mixture priors)."""

import functools
import itertools
import math
from dataclasses import dataclass

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
from reverie.metrics import SlicedWasserstein, sliced_wasserstein
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


@dataclass(frozen=True)
class Case:
    """A linear-Gaussian problem with its exact posterior and a distance to it."""

    prior: Gaussian | GaussianMixture
    A: torch.Tensor
    y: torch.Tensor
    noise_std: float
    post: GaussianMixture
    distance: SlicedWasserstein  # to 20000 exact posterior samples, fixed directions
    options: dict  # extra solve() keywords (structured_noise's noise prior)


def _make_case(prior, A, y, sy, exact_noise_var=None, **options):
    post = linear_gaussian_posterior(prior, A, y, sy**2 if exact_noise_var is None
                                     else exact_noise_var)
    return Case(prior, A, y, sy, post, SlicedWasserstein(post.sample(20000, _gen(5)), 128,
                                                         _gen(3)), options)


@functools.cache
def _case(name):
    if name == "gauss":  # N(0, I) prior: a Gaussian posterior
        return _make_case(Gaussian(torch.zeros(3), None), GAUSS_A, GAUSS_Y, GAUSS_SY)
    if name == "mix":  # 4-mode prior, two measurements: two posterior modes (weights .88, .12)
        return _make_case(_mixture(), torch.tensor([[1.0, 0.3], [-0.2, 1.0]], dtype=F64),
                          torch.tensor([1.2, -0.5], dtype=F64), 0.5)
    # structured noise N(0, q^2 I) + white sigma_y: exact with noise variance q^2 + sigma_y^2
    q = 0.7
    return _make_case(Gaussian(torch.zeros(3), None), GAUSS_A, GAUSS_Y, 0.2, q**2 + 0.2**2,
                      noise_denoiser=Gaussian(torch.zeros(2), q**2).denoiser(PROC),
                      noise_data_std=q)


def posterior_distance(x, case):
    """Sliced W2 of the samples ``x`` to the exact posterior of ``case``."""
    return case.distance(x)


def check_posterior(x, case, bound):
    """The accuracy check: ``x`` is within ``bound`` of the exact posterior."""
    return posterior_distance(x, case) < bound


# Bounds, set from measurement: the largest distance over seeds 1-6 (n = 1000, 100 steps, SMC
# methods in clouds of 100 particles), with ~30% margin. Every bound of a problem lies below the
# distance of a point estimate (all samples at the posterior mean or the pseudo-inverse) and of
# prior samples, so the check rejects both (test_the_posterior_check_rejects_...). Measured:
#   gauss [posterior mean 0.60, pseudo-inverse 0.60, prior 0.97, two-sample floor 0.03]:
#     dps 0.24-0.25 (approximate), pigdm 0.03-0.04, ddrm 0.10-0.12, red_diff 0.42-0.43 (no
#     posterior spread: covariance error ~0.9), diffpir 0.18-0.20, tds 0.04-0.06,
#     mcg_diff 0.06-0.09, mmps 0.03-0.04 (exact for a Gaussian prior)
#   mix [posterior mean 0.57, pseudo-inverse 0.79, prior 1.86, floor 0.03]: pigdm 0.10-0.13,
#     ddrm 0.24-0.26, tds 0.06-0.13, mcg_diff 0.06-0.14; mmps 0.45-0.51 (mode weights
#     .67/.33 against .89/.11: its moment match is unimodal), so it has no mix bound
#   noise [posterior mean 0.71, pseudo-inverse 0.74, prior 0.74, floor 0.04]:
#     structured_noise 0.04-0.07
# DPS, RED-diff and DiffPIR do NOT beat a point estimate on the mixture (DPS 0.63-0.66, RED-diff
# 0.73, DiffPIR 1.00-1.06 against 0.57 for the posterior mean: they miss the mode weights and
# spread; DiffPIR's data weight lam = 7 is the paper's setting for images with tiny noise, here
# lam = 1, zeta = 1 reaches 0.28); there they are held to what the docs claim of them, a
# reconstruction: at most 0.6 of the prior's distance (RECONSTRUCTION_ONLY; DiffPIR is at 0.54).
POSTERIOR_BOUNDS = {
    "gauss": {"dps": 0.32, "pigdm": 0.06, "ddrm": 0.15, "red_diff": 0.5, "diffpir": 0.25,
              "tds": 0.09, "mcg_diff": 0.12, "mmps": 0.06},
    "mix": {"pigdm": 0.17, "ddrm": 0.33, "tds": 0.18, "mcg_diff": 0.19},
    "noise": {"structured_noise": 0.09},
}
RECONSTRUCTION_ONLY = {"mix": ("dps", "red_diff", "diffpir")}
ALL_CASES = [(c, m) for c in POSTERIOR_BOUNDS
             for m in (*POSTERIOR_BOUNDS[c], *RECONSTRUCTION_ONLY.get(c, ()))]


def _solve_case(case, method, seed=1, n=1000, steps=100):
    kw = {"particles": 100} if METHODS[method].particles else {}
    return solve(case.prior.denoiser(PROC), MatrixOperator(case.A), case.y, case.noise_std,
                 method=method, steps=steps, n=n, generator=_gen(seed), return_info=True,
                 **kw, **case.options)


def test_every_registered_method_has_a_posterior_check():
    """A method added to the registry must get a measured bound here."""
    assert {m for _, m in ALL_CASES} == set(METHODS)
    assert all(m in POSTERIOR_BOUNDS["gauss"] for m in METHODS if m != "structured_noise")


@pytest.mark.parametrize("case,method", ALL_CASES)
def test_every_method_matches_the_exact_posterior(case, method):
    c = _case(case)
    res = _solve_case(c, method)
    n_calls = 2 if method == "structured_noise" else 1
    assert res.samples.shape == (1000, c.A.shape[1])
    assert res.nfe == 100 * n_calls and res.method == METHODS[method].name
    d = posterior_distance(res.samples, c)
    if method in RECONSTRUCTION_ONLY.get(case, ()):
        assert d < 0.6 * posterior_distance(c.prior.sample(1000, _gen(6)), c), d
    else:
        assert check_posterior(res.samples, c, POSTERIOR_BOUNDS[case][method]), d


@pytest.mark.parametrize("case", list(POSTERIOR_BOUNDS))
def test_the_posterior_check_rejects_point_estimates_and_the_prior(case):
    """The wrong variants -- every sample at the posterior mean, at the pseudo-inverse
    ``A^+ y`` (point estimates), or drawn from the prior -- fail every bound of the problem,
    while exact posterior samples pass the tightest one."""
    c = _case(case)
    n = 1000
    loosest, tightest = max(POSTERIOR_BOUNDS[case].values()), min(POSTERIOR_BOUNDS[case].values())
    wrong = {
        "posterior mean": c.post.mean().expand(n, -1),
        "pseudo-inverse": (torch.linalg.pinv(c.A) @ c.y).expand(n, -1),
        "prior": c.prior.sample(n, _gen(6)),
    }
    for name, x in wrong.items():
        assert not check_posterior(x, c, loosest), (name, posterior_distance(x, c))
    assert check_posterior(c.post.sample(n, _gen(7)), c, tightest)


# ---- SMC: asymptotically exact as the particles grow ---------------------------------------

# one measurement of the 4-mode prior: a two-mode posterior (weights .82, .18) whose mode
# weights a small cloud gets wrong
SMC_A, SMC_Y = torch.tensor([[1.0, 0.3]], dtype=F64), torch.tensor([1.2], dtype=F64)
SMC_LADDER = {"tds": ((2, 8, 32), 100), "mcg_diff": ((2, 8, 32, 128), 200)}


def check_converges_to_floor(distances, floor, factor=3.0):
    """Distances (as particles grow) decrease strictly and the last is within ``factor`` times
    the two-sample floor."""
    return all(b < a for a, b in itertools.pairwise(distances)) and distances[-1] < factor * floor


@functools.cache
def _smc_reference(n=4096):
    """The distance to the exact posterior and its two-sample floor at ``n`` samples (one for
    both methods: the same problem)."""
    post = linear_gaussian_posterior(_mixture(), SMC_A, SMC_Y, 0.5**2)
    dist = SlicedWasserstein(post.sample(50000, _gen(5)), 128, _gen(3))
    return dist, sum(dist(post.sample(n, _gen(100 + i))) for i in range(5)) / 5


@functools.cache
def _smc_distances(method):
    prior = _mixture()
    n = 4096
    dist, floor = _smc_reference(n)
    ladder, steps = SMC_LADDER[method]
    ds = [dist(solve(prior.denoiser(PROC), MatrixOperator(SMC_A), SMC_Y, 0.5, method=method,
                     steps=steps, n=n, particles=p, generator=_gen(1))) for p in ladder]
    return ds, floor


def test_every_particle_method_has_a_convergence_ladder():
    assert set(SMC_LADDER) == {m for m in METHODS if METHODS[m].particles}


@pytest.mark.parametrize("method", list(SMC_LADDER))
def test_smc_distance_falls_to_the_floor_as_particles_grow(method):
    """4096 samples in clouds of 2 -> 8 -> 32 (-> 128 for MCGdiff, which needs more particles
    and steps here) particles: the distance to the exact posterior falls monotonically to within
    3x the two-sample floor (0.06). Measured over seeds 1-5: TDS 0.84-0.90 -> 0.17-0.36 ->
    0.04-0.17; MCGdiff 1.09-1.16 -> 0.46-0.52 -> 0.12-0.29 -> 0.05-0.12."""
    ds, floor = _smc_distances(method)
    assert ds[0] > 10 * floor  # two particles are far off: the check can fail
    assert check_converges_to_floor(ds, floor), (ds, floor)


@pytest.mark.parametrize("method", list(SMC_LADDER))
def test_the_convergence_check_rejects_no_convergence(method):
    """Fed the ladder reversed (error growing with particles) or stopped at 8 particles (still
    far from the floor), the check fails."""
    ds, floor = _smc_distances(method)
    assert not check_converges_to_floor(ds[::-1], floor)
    assert not check_converges_to_floor(ds[:2], floor)


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
    bound = 0.6 * _sw(prior.sample(1000, _gen(6)), ref)  # 0.72; dps 0.61, tds 0.64, red_diff 0.34
    assert _sw(x, ref) < bound
    assert _sw(ref.mean(0).expand(1000, 2), ref) > bound  # the posterior mean (1.52) fails


@pytest.mark.parametrize("method", ["dps", "tds"])
def test_poisson_noise(method):
    """Against a quadrature posterior. TDS (measured 0.06-0.10 over seeds 1-5) is held to 0.2,
    which the posterior mean as a point estimate (0.31) and prior samples (1.39) fail; DPS
    (0.61) does not beat that point estimate and is held to half the prior's distance."""
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
    prior_d = _sw(prior.sample(1000, _gen(6)), ref)
    if method == "tds":
        assert _sw(x, ref) < 0.2
        assert _sw(ref.mean(0).expand(1000, 2), ref) > 0.2 and prior_d > 0.2  # wrong variants
    else:
        assert _sw(x, ref) < 0.5 * prior_d


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

"""Composition of models: superposition (SuperDiff OR / AND), products / negations / mixtures
with MCMC correctors ("Reduce, Reuse, Recycle"), checked against exact Gaussian mixtures."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.compose import (
    HMC,
    MALA,
    UHMC,
    ULA,
    EnergyModel,
    Mixture,
    MixtureEnergy,
    Negation,
    Product,
    make_corrector,
    sample_with_corrector,
    superpose,
)
from reverie.metrics import mode_weight_error, sliced_wasserstein
from reverie.process import VE, VPLinear
from reverie.reference import Gaussian, GaussianMixture, mixture_product, mixture_union
from reverie.samplers import sample

PROC = VPLinear()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _noise(n, seed=0, d=2):
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)


def _sw(x, y):
    return sliced_wasserstein(x, y, generator=_gen(0))


def _floor(target, n, repeats=4):
    ref = target.sample(n, _gen(100))
    return sum(_sw(target.sample(n, _gen(200 + r)), ref) for r in range(repeats)) / repeats, ref


# ---- exact references --------------------------------------------------------------------------


def test_mixture_product_and_union_are_exact():
    a = GaussianMixture([[-1.0, 0.0], [1.0, 1.0]], torch.tensor([[[0.5, 0.1], [0.1, 0.3]]] * 2),
                        [0.3, 0.7])
    b = GaussianMixture([[0.0, -1.0], [2.0, 0.0], [0.0, 2.0]], [0.4, 0.2, 0.6], [0.2, 0.5, 0.3])
    x = torch.randn(50, 2, generator=_gen(1), dtype=torch.float64) * 2
    prod = mixture_product(a, b)
    diff = prod.log_prob(x) - a.log_prob(x) - b.log_prob(x)
    assert float(diff.std()) < 1e-9  # the product up to its normalising constant
    # and normalised: log Z = log int a b = log sum_ij w_i w_j N(m_i; m_j, S_i + S_j)
    grid = torch.stack(torch.meshgrid(torch.linspace(-6, 6, 241, dtype=torch.float64),
                                      torch.linspace(-6, 6, 241, dtype=torch.float64),
                                      indexing="ij"), -1).reshape(-1, 2)
    assert abs(float(prod.log_prob(grid).exp().sum() * 0.05**2) - 1.0) < 1e-3
    union = mixture_union([a, b], [0.25, 0.75])
    expect = torch.logsumexp(torch.stack([math.log(0.25) + a.log_prob(x),
                                          math.log(0.75) + b.log_prob(x)]), 0)
    assert torch.allclose(union.log_prob(x), expect, atol=1e-10)


# ---- combinators -------------------------------------------------------------------------------


def _pair():
    a = GaussianMixture([[-2.0, 1.5], [-1.0, -2.0]], 0.15, [0.7, 0.3])
    b = GaussianMixture([[2.0, 1.0], [1.5, -1.5]], [0.2, 0.1], [0.5, 0.5])
    return a, b


def test_mixture_combinator_is_the_exact_noised_mixture():
    """A mixture of noised models is the noised mixture: exact at every noise level."""
    a, b = _pair()
    target = mixture_union([a, b], [0.3, 0.7])
    mix = Mixture([MixtureEnergy(a, PROC), MixtureEnergy(b, PROC)], [0.3, 0.7])
    x = torch.randn(64, 2, generator=_gen(2), dtype=torch.float64) * 2
    for t in (0.05, 0.3, 0.9):
        assert torch.allclose(mix(x, t), target.denoise(x, t, PROC), atol=1e-10)
        assert torch.allclose(mix.score(x, t), target.score(x, t, PROC), atol=1e-9)
        assert torch.allclose(mix.log_density(x, t), target.log_prob(x, t, PROC), atol=1e-10)


def test_product_and_negation_combine_scores_and_energies():
    a, b = _pair()
    ea, eb = MixtureEnergy(a, PROC), MixtureEnergy(b, PROC)
    x = torch.randn(16, 2, generator=_gen(3), dtype=torch.float64)
    t = 0.4
    prod = Product([ea, eb], [0.7, 0.6])
    assert torch.allclose(prod.score(x, t), 0.7 * ea.score(x, t) + 0.6 * eb.score(x, t))
    # the data prediction is Tweedie's formula applied to the summed score
    al, sg = float(PROC.alpha(t)), float(PROC.sigma(t))
    assert torch.allclose(prod(x, t), (x + sg**2 * prod.score(x, t)) / al, atol=1e-10)
    expect = 0.7 * ea.log_density(x, t) + 0.6 * eb.log_density(x, t)
    assert torch.allclose(prod.log_density(x, t), expect)
    neg = Negation(ea, eb, strength=0.5)
    assert neg.weights == [1.5, -0.5]
    assert torch.allclose(neg(x, t), 1.5 * ea(x, t) - 0.5 * eb(x, t), atol=1e-10)
    # score-only parts: a product still denoises but has no energy
    plain = Product([a.denoiser(PROC), b.denoiser(PROC)])
    assert not plain.has_energy
    assert torch.allclose(plain(x, t), ea(x, t) + eb(x, t) - x / al, atol=1e-9)


def test_energy_model_by_autograd_matches_the_exact_mixture():
    a, _ = _pair()
    em = EnergyModel(lambda x, t: a.log_prob_at(x, PROC.alpha(t), PROC.sigma(t)), PROC)
    x = torch.randn(8, 2, generator=_gen(4), dtype=torch.float64)
    assert torch.allclose(em(x, 0.3), a.denoise(x, 0.3, PROC), atol=1e-9)
    ld, sc = em.log_density_and_score(x, 0.3)
    assert torch.allclose(sc, a.score(x, 0.3, PROC), atol=1e-9)
    assert torch.allclose(ld, a.log_prob(x, 0.3, PROC))


# ---- SuperDiff ---------------------------------------------------------------------------------


def test_superposition_or_reproduces_the_exact_mixture():
    a, b = _pair()
    target = mixture_union([a, b], [0.3, 0.7])
    n = 1000
    res = superpose([a.denoiser(PROC), b.denoiser(PROC)], _noise(n), "or", [0.3, 0.7],
                    sampler="ddpm", steps=200, generator=_gen(1))
    floor, ref = _floor(target, n)
    assert res.nfe == 2 * 200 and res.log_q.shape == (199, 2, n)
    assert mode_weight_error(res.x0, target) < 0.05  # sampling sd of the TV ~ 0.02
    assert _sw(res.x0, ref) < 1.6 * floor
    # fixed weights (no tracked densities) are far off: the mixture needs kappa(x, t)
    fixed = sample(Product([a.denoiser(PROC), b.denoiser(PROC)], [0.3, 0.7]), _noise(n), "ddpm",
                   200, generator=_gen(1))
    assert mode_weight_error(fixed, target) > 0.15


def test_superposition_and_equalises_the_densities():
    a = Gaussian([-1.0, 0.0], torch.tensor([0.3, 0.3]).diag())
    b = Gaussian([1.5, 0.5], torch.tensor([0.6, 0.2]).diag())
    n = 500
    res = superpose([a.denoiser(PROC), b.denoiser(PROC)], _noise(n), "and", sampler="ddpm",
                    steps=100, generator=_gen(1))
    # the tracked densities stay equal by construction ...
    assert float((res.log_q[:, 0] - res.log_q[:, 1]).abs().max()) < 1e-8
    # ... and the exact ones nearly so, far more than for the average of the two scores
    gap = (a.log_prob(res.x0) - b.log_prob(res.x0)).abs().mean()
    avg_model = Product([a.denoiser(PROC), b.denoiser(PROC)], [0.5, 0.5])
    avg = sample(avg_model, _noise(n), "ddpm", 100, generator=_gen(1))
    gap_avg = (a.log_prob(avg) - b.log_prob(avg)).abs().mean()
    assert gap < 0.5 and gap < gap_avg / 4, (float(gap), float(gap_avg))


# ---- products with MCMC correctors -------------------------------------------------------------


def test_product_of_gaussians_with_correctors_matches_the_exact_product():
    a = Gaussian([-1.0, 0.0], torch.tensor([1.0, 0.5]).diag())
    b = Gaussian([1.5, 0.5], torch.tensor([0.3, 1.0]).diag())
    target = mixture_product(a, b)
    model = Product([MixtureEnergy(a, PROC), MixtureEnergy(b, PROC)])
    n = 1000
    floor, ref = _floor(target, n)
    plain = sample_with_corrector(model, _noise(n), None, "ddpm", 40, generator=_gen(1))
    err_plain = _sw(plain.x0, ref)
    for corr in (MALA(4), HMC(2)):
        out = sample_with_corrector(model, _noise(n), corr, "ddpm", 40, generator=_gen(1))
        assert out.acceptance.shape == (40,) and 0.5 < float(out.acceptance.mean()) <= 1.0
        err = _sw(out.x0, ref)
        assert err < 1.6 * floor, (type(corr).__name__, err, floor)
        assert err < err_plain / 2.5, (err, err_plain)  # plain score addition is biased


def test_product_of_mixtures_with_correctors_beats_score_addition():
    a = GaussianMixture([[-1.5, 0.0], [1.5, 0.0]], 0.3)
    b = GaussianMixture([[0.0, -1.5], [0.0, 1.5], [1.5, 1.5]], 0.5, [0.3, 0.3, 0.4])
    target = mixture_product(a, b)
    model = Product([MixtureEnergy(a, PROC), MixtureEnergy(b, PROC)])
    n = 1000
    floor, ref = _floor(target, n)
    plain_x = sample_with_corrector(model, _noise(n), None, "ddpm", 50, generator=_gen(1)).x0
    plain = _sw(plain_x, ref)
    out = sample_with_corrector(model, _noise(n), MALA(5), "ddpm", 50, generator=_gen(1))
    err = _sw(out.x0, ref)
    assert err < plain / 2.5, (err, plain)
    assert err < 2.5 * floor, (err, floor)


def test_unadjusted_correctors_are_stable_on_a_thin_target():
    """ULA / U-HMC steps scale with sigma^2 by default: no blow-up on data far narrower than
    the unit scale (where eta ~ alpha^2 + sigma^2 would overshoot)."""
    a = Gaussian([0.0, 0.0], torch.tensor([1.0, 1e-4]).diag())
    b = Gaussian([0.5, 0.0], torch.tensor([1.0, 1e-4]).diag())
    target = mixture_product(a, b)
    model = Product([MixtureEnergy(a, PROC), MixtureEnergy(b, PROC)])
    for corr in (ULA(), UHMC()):
        x = sample_with_corrector(model, _noise(300), corr, "ddpm", 30, generator=_gen(1)).x0
        assert bool(torch.isfinite(x).all())
        assert float(x[:, 1].std()) < 0.05 and abs(float(x[:, 0].mean() - target.mean()[0])) < 0.2
    loose = ULA(5, 0.05, data_variance=1.0)  # the unit-scale step overshoots the thin direction
    try:
        x = sample_with_corrector(model, _noise(300), loose, "ddpm", 30, generator=_gen(1)).x0
        blew_up = float(x[:, 1].abs().max()) > 1.0
    except FloatingPointError:  # NaN / inf detected by the loop (NonFiniteError)
        blew_up = True
    assert blew_up


@pytest.mark.parametrize("corr", [MALA(20, 0.5), HMC(10, 0.3, 3)], ids=["mala", "hmc"])
def test_adjusted_correctors_leave_the_exact_marginal_invariant(corr):
    """Started from exact samples of q_t, Metropolis-adjusted chains stay at q_t."""
    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], torch.tensor([[0.3, 0.6], [0.5, 0.2]]),
                         [0.4, 0.6])
    t, n = 0.3, 4000
    q_t = gm.marginal(PROC, t)
    x = q_t.sample(n, _gen(5))
    out = corr(MixtureEnergy(gm, PROC), x, t, generator=_gen(6))
    assert 0.3 < out.acceptance < 1.0
    moved = (out.x - x).norm(dim=1).mean()
    assert moved > 0.2  # the chain moves ...
    se = (q_t.covariance().diagonal() / n).sqrt()
    assert bool(((out.x.mean(0) - q_t.mean()).abs() < 4 * se).all())  # ... and stays at q_t
    assert torch.allclose(torch.cov(out.x.T), q_t.covariance(), atol=0.08)


def test_correctors_with_per_sample_generators_are_batch_independent():
    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], 0.3)
    model = MixtureEnergy(gm, PROC)
    x = gm.marginal(PROC, 0.5).sample(3, _gen(0))
    for corr in (ULA(3), MALA(3), HMC(2), UHMC(2)):
        full = corr(model, x, 0.5, generator=[_gen(10 + k) for k in range(3)]).x
        one = corr(model, x[2:], 0.5, generator=[_gen(12)]).x
        assert torch.allclose(full[2:], one)


# ---- bad input ---------------------------------------------------------------------------------


def test_composition_bad_input():
    a, b = _pair()
    ea = MixtureEnergy(a, PROC)
    with pytest.raises(ValueError, match="different noising processes"):
        Product([a.denoiser(PROC), b.denoiser(VE())])
    with pytest.raises(ValueError, match="different noising processes"):
        superpose([a.denoiser(PROC), b.denoiser(VPLinear(beta_max=10.0))], _noise(4))
    plain = Product([a.denoiser(PROC), b.denoiser(PROC)])
    with pytest.raises(TypeError, match="MALA.*needs an energy"):
        sample_with_corrector(plain, _noise(4), MALA(), "ddpm", 5)
    with pytest.raises(TypeError, match="needs an energy"):
        HMC()(plain, _noise(4), 0.5)
    with pytest.raises(TypeError, match="needs an energy"):
        Mixture([ea, b.denoiser(PROC)])
    # score-only correctors accept score-only models
    assert ULA(1)(plain, _noise(4), 0.5).x.shape == (4, 2)
    assert UHMC(1)(plain, _noise(4), 0.5).x.shape == (4, 2)
    with pytest.raises(ValueError, match="or, and"):
        superpose([ea, ea], _noise(4), "xor")
    with pytest.raises(ValueError, match="deterministic"):
        superpose([ea, ea], _noise(4), sampler="dpmpp_2m")
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        superpose([ea, ea], _noise(4, d=3))
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        sample_with_corrector(ea, _noise(4, d=3), ULA(), "ddpm", 5)
    with pytest.raises(ValueError, match="ula, mala, hmc, uhmc"):
        make_corrector("gibbs")
    with pytest.raises(ValueError, match="3 weights for 2"):
        Product([ea, ea], [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="DenoiserBase"):
        Product([ea, lambda x, t: x])
    with pytest.raises(ValueError, match="steps"):
        MALA(steps=0)


# ---- command line ------------------------------------------------------------------------------


def test_compose_command_writes_plot_and_samples(tmp_path, capsys):
    from reverie.cli import main

    plot, out = tmp_path / "c.png", tmp_path / "x.pt"
    rc = main(["compose", "ring", "left", "--op", "product", "--n", "200", "--steps", "10",
               "--corrector-steps", "2", "--plot", str(plot), "--out", str(out)])
    assert rc == 0 and plot.stat().st_size > 1000
    x = torch.load(out, weights_only=True)
    assert x.shape == (200, 2) and bool(torch.isfinite(x).all())
    text = capsys.readouterr().out
    assert "exact target: sliced W2" in text and "MALA" in text
    assert main(["compose", "ring", "grid", "--op", "and", "--n", "50", "--steps", "20",
                 "--plot", ""]) == 0
    assert main(["compose", "ring", "--op", "or", "--plot", ""]) == 2  # one model: clear error
    assert "two or more models" in capsys.readouterr().err
    assert main(["compose", "ring", "nosuchmodel", "--plot", ""]) == 2


def test_compose_command_on_bundled_two_moons(capsys):
    import reverie.hub as hub  # the bundled model ships with reverie: a loader failure fails

    assert "two-moons" in hub.BUNDLED
    from reverie.cli import main

    assert main(["compose", "two-moons:0", "two-moons:1", "--op", "and", "--n", "50", "--steps",
                 "20", "--plot", "", "--threads", "1"]) == 0
    assert "EDM" in capsys.readouterr().out
    assert main(["compose", "two-moons:7", "ring", "--plot", ""]) == 2
    assert "label" in capsys.readouterr().err

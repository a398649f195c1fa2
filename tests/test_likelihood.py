"""Probability-flow ODE log-likelihood, the adaptive solver and the Ito density estimator,
checked against exact Gaussian-mixture densities."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.likelihood import (
    bits_per_dim,
    ito_increment,
    ito_log_density,
    log_likelihood,
    solve_ode,
)
from reverie.process import VE, VP, RectifiedFlow, VPLinear
from reverie.reference import GaussianMixture


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: thread hand-offs dominate on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mixture() -> GaussianMixture:
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 0.6]]])
    return GaussianMixture([[-2.0, 0.0], [1.5, 1.0]], covs, weights=[0.4, 0.6])


def _data(n=48, seed=0):
    return _mixture().sample(n, torch.Generator().manual_seed(seed))


# ---- the adaptive solver -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_solver_meets_tolerance_on_analytic_odes(method):
    y0 = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)

    def f(t, y):  # y1' = -y1, y2' = cos t
        return torch.stack([-y[:, 0], torch.full_like(y[:, 1], math.cos(t))], 1)

    errs = []
    for tol in (1e-4, 1e-7):
        sol = solve_ode(f, y0, 0.0, 3.0, method=method, rtol=tol, atol=tol)
        exact = torch.stack([y0[:, 0] * math.exp(-3.0), y0[:, 1] + math.sin(3.0)], 1)
        errs.append(float((sol.y - exact).abs().max()))
        assert errs[-1] < 50 * tol
    assert errs[1] < errs[0] / 10  # tighter tolerance -> smaller error
    # integrating backwards returns to the start
    fwd = solve_ode(f, y0, 0.0, 3.0, method=method, rtol=1e-9, atol=1e-9)
    back = solve_ode(f, fwd.y, 3.0, 0.0, method=method, rtol=1e-9, atol=1e-9)
    assert torch.allclose(back.y, y0, atol=1e-6)


def test_solver_counts_evaluations_and_rejects_bad_input():
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    sol = solve_ode(f, torch.ones(3, 1, dtype=torch.float64), 0.0, 1.0)
    assert sol.nfe == len(calls)
    assert sol.nfe == 2 + 6 * (sol.steps + sol.rejected)  # dopri5: FSAL, 6 new stages per step
    with pytest.raises(ValueError, match="unknown ODE method"):
        solve_ode(f, torch.ones(3, 1), 0.0, 1.0, method="rk4")
    with pytest.raises(ValueError, match=r"\[batch, n\]"):
        solve_ode(f, torch.ones(3), 0.0, 1.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ode(lambda t, y: math.cos(50 * t) * y, torch.ones(1, 1, dtype=torch.float64),
                  0.0, 10.0, rtol=1e-10, atol=1e-10, max_steps=5)


# ---- probability-flow ODE likelihood -------------------------------------------------------------


@pytest.mark.parametrize("process", [VPLinear(), VP.linear(), RectifiedFlow()], ids=repr)
def test_exact_divergence_matches_exact_log_density(process):
    gm, x = _mixture(), _data()
    exact = gm.log_prob(x)
    res = log_likelihood(gm.denoiser(process), x, "exact", return_info=True)
    rel = ((res.log_likelihood - exact).abs() / exact.abs().clamp(min=1.0)).max()
    assert rel < 0.01, float(rel)  # with the standard N(0, sigma_T^2) prior
    assert res.nfe > 0 and res.log_likelihood.shape == (x.shape[0],)
    assert torch.allclose(res.prior + res.delta, res.log_likelihood)
    # with the exact marginal at t_max as prior, only the solver's error is left
    exact_prior = lambda xt: gm.log_prob(xt, process.t_max, process)  # noqa: E731
    ll = log_likelihood(gm.denoiser(process), x, prior=exact_prior)
    assert (ll - exact).abs().max() < 2e-3


def test_clean_end_step_is_third_order():
    """The segment from sigma = 0 to t_min is one Heun step: halving sigma_min divides its
    error by ~8 (a model evaluated only from t_min would be off by log p_{t_min} - log p_0)."""
    gm, x = _mixture(), _data(32)
    exact = gm.log_prob(x)
    errs, skipped = [], []
    for s_min in (0.1, 0.05):
        proc = VE(sigma_min=s_min)
        ll = log_likelihood(gm.denoiser(proc), x, rtol=1e-8, atol=1e-8,
                            prior=lambda xt, p=proc: gm.log_prob(xt, p.t_max, p))
        errs.append(float((ll - exact).abs().max()))
        skipped.append(float((gm.log_prob(x, s_min, proc) - exact).abs().max()))
    assert errs[0] / errs[1] > 5.0, errs
    assert errs[1] < skipped[1] / 10


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    gm, proc = _mixture(), VPLinear()
    x = _data(4).repeat(128, 1)  # 128 independent probes for each of 4 points
    exact = log_likelihood(gm.denoiser(proc), _data(4), rtol=1e-6, atol=1e-6)
    est = log_likelihood(gm.denoiser(proc), x, "hutchinson", probe=probe, rtol=1e-6, atol=1e-6,
                         generator=torch.Generator().manual_seed(3)).reshape(128, 4)
    mean, se = est.mean(0), est.std(0) / math.sqrt(128)
    assert bool((est.std(0) > 1e-4).all())  # the estimate is random ...
    assert bool(((mean - exact).abs() < 4 * se + 2e-3).all()), (mean - exact, se)  # ... unbiased


def test_hutchinson_per_sample_generators_make_samples_batch_independent():
    gm, proc = _mixture(), VPLinear()
    x = _data(3)
    kw = dict(divergence="hutchinson", rtol=1e-6, atol=1e-6)
    gens = lambda: [torch.Generator().manual_seed(10 + k) for k in range(3)]  # noqa: E731
    full = log_likelihood(gm.denoiser(proc), x, generator=gens(), **kw)
    alone = log_likelihood(gm.denoiser(proc), x[1:2], generator=gens()[1:2], **kw)
    assert torch.allclose(full[1], alone[0], atol=1e-4)  # solver steps differ, probes do not


def test_bits_per_dim():
    ll = torch.tensor([-3 * 4 * math.log(2)], dtype=torch.float64)
    assert torch.allclose(bits_per_dim(ll, 4), torch.tensor([3.0], dtype=torch.float64))
    assert torch.allclose(bits_per_dim(ll, (1, 2, 2), bin_width=2 / 256),
                          torch.tensor([10.0], dtype=torch.float64))  # + 7 bits for 8-bit data
    with pytest.raises(ValueError, match="bin_width"):
        bits_per_dim(ll, 4, bin_width=0.0)


def test_likelihood_bad_input():
    gm, proc = _mixture(), VPLinear()
    den = gm.denoiser(proc)
    with pytest.raises(ValueError, match="batch first"):
        log_likelihood(den, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        log_likelihood(den, torch.zeros(4, 3, dtype=torch.float64), sample_shape=(2,))
    with pytest.raises(ValueError, match="dimension 2"):  # the mixture itself refuses
        log_likelihood(den, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(den, torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="exact, hutchinson"):
        log_likelihood(den, _data(2), "skilling")
    with pytest.raises(ValueError, match="rademacher, gaussian"):
        log_likelihood(den, _data(2), "hutchinson", probe="uniform")
    with pytest.raises(TypeError, match="DenoiserBase"):
        log_likelihood(lambda x, t: x, _data(2))
    with pytest.raises(TypeError, match="floating"):
        log_likelihood(den, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(den, _data(2), t_min=0.5, t_max=0.4)


# ---- the Ito density estimator ------------------------------------------------------------------


def _ito_errors(steps, sampler="ddpm", n=256):
    gm, proc = _mixture(), VPLinear()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tr = ito_log_density(gm.denoiser(proc), noise, sampler, steps,
                         generator=torch.Generator().manual_seed(2), keep_path=True,
                         prior=lambda x: gm.log_prob(x, proc.t_max, proc))
    exact = torch.stack([gm.log_prob(x, t, proc) for x, t in zip(tr.path, tr.t)])
    return tr, tr.log_q - exact, exact


def test_ito_estimate_tracks_exact_marginal_density_along_paths():
    tr, err, exact = _ito_errors(800)
    assert tr.log_q.shape == (800, 256) and tr.nfe == 800
    end = err[-1]
    # an Ito sum: error O(step^(1/2)) per path (0.3-0.4 nats here), nearly unbiased
    assert float(end.abs().mean()) < 0.5
    assert float(err.abs().mean()) < 0.5
    assert abs(float(end.mean())) < 4 * float(end.std()) / math.sqrt(256) + 0.1
    # tracking nothing (keeping the prior value) would be off by the whole change of log q
    assert float(end.abs().mean()) < 0.45 * float((exact[-1] - exact[0]).abs().mean())


def test_ito_error_shrinks_like_an_ito_sum():
    """Error O(step^(1/2)): four times the steps halves it."""
    _, coarse, _ = _ito_errors(200, n=128)
    _, fine, _ = _ito_errors(800, n=128)
    ratio = float(fine[-1].std() / coarse[-1].std())
    assert 0.35 < ratio < 0.7, ratio


def test_ito_increment_is_exact_in_expectation_for_a_gaussian():
    """For q_t = N(0, v_t) and a reverse step with exact noise, E[increment] matches the exact
    expected change of log q (the Laplacian terms cancel in expectation)."""
    proc = VPLinear()
    t, t_next = 0.5, 0.499
    v, v_next = 1.0, 1.0  # alpha^2 * 1 + sigma^2 = 1 for unit data
    x = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, an = float(proc.alpha(t)), float(proc.alpha(t_next))
    s, sn = float(proc.sigma(t)), float(proc.sigma(t_next))
    # the exact reverse kernel of N(0, 1) data: x_next | x is Gaussian
    # (joint of (x_next, x) under the forward kernel x = (a/an) x_next + sqrt(G) z)
    G = s**2 - (a / an) ** 2 * sn**2
    c = a / an
    mean = c * v_next / v * x
    var = v_next - c**2 * v_next**2 / v
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_next = mean + math.sqrt(var) * z
    inc = ito_increment(-x / v, x, x_next, t, t_next, proc)
    exact = (-0.5 * x_next**2 / v_next + 0.5 * x**2 / v).sum(1)
    F = math.log(a / an)  # a wrong term would leave a bias O(F); the scheme's own is O(F^2)
    bias = abs(float((inc - exact).mean()))
    assert bias < 5 * float((inc - exact).std()) / math.sqrt(x.shape[0]) + F**2, (bias, F)
    assert G > 0


def test_ito_bad_input():
    gm, proc = _mixture(), VPLinear()
    den = gm.denoiser(proc)
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="deterministic"):
        ito_log_density(den, noise, "dpmpp_2m", 10)
    with pytest.raises(ValueError, match="eta"):
        ito_log_density(den, noise, "dpmpp_2m_sde", 10, eta=0.5)
    with pytest.raises(ValueError, match="batch first"):
        ito_log_density(den, torch.zeros(2, dtype=torch.float64), "ddpm", 10)
    with pytest.raises(ValueError, match="clean end"):
        ito_increment(noise, noise, noise, 0.01, 0.0, proc)
    with pytest.raises(ValueError, match="alpha > 0"):
        ito_increment(noise, noise, noise, 1.0, 0.9, RectifiedFlow())
    with pytest.raises(ValueError, match="shape"):
        ito_increment(noise, noise, noise[:, :1], 0.5, 0.4, proc)


def test_likelihood_command_on_an_exact_toy(tmp_path, capsys):
    from reverie.cli import main

    out = tmp_path / "ll.json"
    assert main(["likelihood", "--model", "ring", "--n", "16", "--rtol", "1e-4", "--atol", "1e-4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exact log-density" in text and "bits/dim" in text
    import json

    res = json.loads(out.read_text())
    assert len(res["log_likelihood"]) == 16
    assert abs(res["log_likelihood_mean"] - res["exact_log_likelihood_mean"]) < 0.01
    data = tmp_path / "bad.pt"
    torch.save(torch.zeros(4, 3), data)
    assert main(["likelihood", "--model", "ring", "--data", str(data)]) == 2
    assert "expects (2,)" in capsys.readouterr().err


def test_likelihood_command_on_held_out_digits(capsys):
    import reverie.hub as hub  # the bundled model ships with reverie: a loader failure fails

    assert "digits" in hub.BUNDLED
    from reverie.cli import main

    assert main(["likelihood", "--model", "digits", "--data", "test", "--n", "2", "--divergence",
                 "hutchinson", "--rtol", "1e-2", "--atol", "1e-2", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("bits/dim (dequantised"))
    bpd = float(line.split(":")[1].split("+-")[0])
    assert 0.0 < bpd < math.log2(17)  # below a uniform distribution over the 17 pixel levels

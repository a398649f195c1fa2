"""reverie.guidance against exact answers on a labelled Gaussian mixture.

The mixture has an exact time-dependent classifier p(c | x_t), exact class-conditional and
unconditional denoisers, and exact CFG targets p(x|c)^w p(x)^(1-w) (sampled on a fine grid).
"""

from __future__ import annotations

import contextlib
import statistics

import pytest
import torch

import reverie
from reverie.guidance import METHODS, guide
from reverie.metrics import SlicedWasserstein
from reverie.reference import GaussianMixture, LabelledMixture

N = 4000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setup():
    """Two overlapping classes (class 1 has two components), so the guidance scale moves the
    law visibly; the exact classifier, denoisers and a sliced-W1 check against p(x | 0)."""
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, 2.0]],
                          torch.tensor([[0.6, 0.5], [0.5, 0.6], [0.4, 0.4]]), [0.4, 0.4, 0.2])
    lm = LabelledMixture(mix, [0, 1, 1])
    proc = reverie.VP.linear()
    base = lm.denoiser(proc)
    uncond = reverie.Denoiser(
        lambda x, t: base(x, t, class_labels=torch.full((x.shape[0],), lm.null_class)),
        proc, "x0")
    cm = lm.conditional(0)
    sw = SlicedWasserstein(cm.sample(5 * N, gen(1)), 64, gen(7), p=1)
    floor = [sw(cm.sample(N, gen(100 + k))) for k in range(8)]
    tol = statistics.mean(floor) + 4 * statistics.stdev(floor)  # measured: 0.015 + 4 x 0.003
    noise = torch.randn(N, 2, generator=gen(3), dtype=torch.float64)
    return lm, proc, base, uncond, sw, tol, noise


def test_classifier_guidance_at_scale_one_samples_the_class(setup):
    """Exact classifier + exact unconditional model at scale 1 = the exact class-conditional
    law (sliced W1 at the sampling floor); 15% more or less guidance is rejected."""
    lm, proc, _, uncond, sw, tol, noise = setup
    dist = {}
    for w in (1.0, 1.15, 0.85):
        den = guide(uncond, "classifier", w, classifier=lm.classifier(proc, 0))
        dist[w] = sw(reverie.sample(den, noise, sampler="heun", steps=30))
    assert dist[1.0] < tol, dist
    assert dist[1.15] > 1.5 * tol and dist[0.85] > 1.5 * tol, (dist, tol)


def test_classifier_guidance_equals_cfg_with_exact_models(setup):
    """Bayes on scores: grad log p(c|x_t) = score(x|c) - score(x), so classifier guidance of the
    unconditional model equals CFG at every scale, pointwise; the x0-based universal
    approximation does not."""
    lm, proc, base, uncond, _, _, _ = setup
    x = torch.randn(64, 2, generator=gen(5), dtype=torch.float64) * 1.5
    labels, null = torch.zeros(64, dtype=torch.long), torch.full((64,), lm.null_class)
    for w in (0.5, 1.0, 3.0):
        for t in (50.0, 400.0, 900.0):
            cls = guide(uncond, "classifier", w, classifier=lm.classifier(proc, 0))(x, t)
            cfg = guide(base, "cfg", w, uncond={"class_labels": null})(x, t, class_labels=labels)
            assert torch.allclose(cls, cfg, atol=1e-8), (w, t)
    uni = guide(uncond, "universal", 1.0, classifier=lm.classifier(proc, 0))(x, 400.0)
    cfg = guide(base, "cfg", 1.0, uncond={"class_labels": null})(x, 400.0, class_labels=labels)
    assert (uni - cfg).abs().max() > 1e-2


def test_cfg_family_formulas(setup):
    """Each CFG variant against its paper's formula written out here; the options that turn a
    variant into plain CFG do so, and the defaults do not."""
    lm, proc, base, _, _, _, _ = setup
    x = torch.randn(32, 2, generator=gen(6), dtype=torch.float64)
    t = torch.tensor(300.0, dtype=torch.float64)
    labels, null = torch.zeros(32, dtype=torch.long), torch.full((32,), lm.null_class)
    d_c, d_u = base(x, t, class_labels=labels), base(x, t, class_labels=null)
    uncond = {"class_labels": null}

    def run(method, w, **kw):
        return guide(base, method, w, uncond=uncond, **kw)(x, t, class_labels=labels)

    cfg = d_u + 3.0 * (d_c - d_u)
    assert torch.allclose(run("cfg", 3.0), cfg)
    assert torch.allclose(run("cfg", 1.0), d_c)
    # rescale: phi * cfg * std(c) / std(cfg) + (1 - phi) cfg, in x0 space here
    ratio = d_c.std(1, keepdim=True) / cfg.std(1, keepdim=True)
    want = 0.7 * cfg * ratio + 0.3 * cfg
    assert torch.allclose(run("cfg_rescale", 3.0, space="x0"), want)
    assert torch.allclose(run("cfg_rescale", 3.0, rescale=0.0), cfg)
    # APG without momentum and threshold: D_c + (w-1)(perp + eta par) of diff against D_c
    diff = d_c - d_u
    unit = d_c / d_c.norm(dim=1, keepdim=True)
    par = (diff * unit).sum(1, keepdim=True) * unit
    assert torch.allclose(run("apg", 3.0, momentum=0.0), d_c + 2.0 * (diff - par))
    assert torch.allclose(run("apg", 3.0, momentum=0.0, eta=1.0), cfg)
    assert not torch.allclose(run("apg", 3.0), cfg, atol=1e-3)
    # CFG-Zero*: s* = <v_c, v_u> / |v_u|^2 on the ODE velocity
    v_c, v_u = (reverie.denoisers.from_x0(d, "flow", x, t, proc) for d in (d_c, d_u))
    s = (v_c * v_u).sum(1, keepdim=True) / (v_u * v_u).sum(1, keepdim=True)
    v = s * v_u + 3.0 * (v_c - s * v_u)
    assert torch.allclose(run("cfg_zero_star", 3.0),
                          reverie.denoisers.to_x0(v, "flow", x, t, proc))
    assert not torch.allclose(run("cfg_zero_star", 3.0), cfg, atol=1e-3)
    zero = guide(base, "cfg_zero_star", 3.0, uncond=uncond, zero_steps=1)
    first = zero(x, t, class_labels=labels)  # zero-init: no motion at the first call
    assert torch.allclose(reverie.denoisers.from_x0(first, "flow", x, t, proc),
                          torch.zeros_like(x), atol=1e-10)
    later = guide(base, "cfg_zero_star", 3.0, uncond=uncond)(x, t - 1, class_labels=labels)
    assert torch.allclose(zero(x, t - 1, class_labels=labels), later)  # then CFG-Zero*


def test_apg_norm_threshold_on_images():
    """APG's norm cap on image-shaped predictions [B, C, H, W]: the update D_c - D_u is
    capped to norm_threshold per sample (a 2-norm over all of C, H, W)."""
    proc = reverie.VP.linear()
    x = torch.randn(3, 2, 4, 4, generator=gen(2), dtype=torch.float64)
    den = reverie.Denoiser(lambda x, t, c: x * (0.5 + c.reshape(-1, 1, 1, 1)), proc, "x0")
    c, null = torch.ones(3), {"c": torch.zeros(1)}
    capped = guide(den, "apg", 3.0, uncond=null, momentum=0.0, eta=1.0, norm_threshold=0.1)
    # D_c = 1.5 x, D_u = 0.5 x: the update x is capped to 0.1 x / |x|, eta = 1 keeps all of it
    want = 1.5 * x + 2.0 * 0.1 * x / x.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(capped(x, 300.0, c=c), want)


@pytest.mark.parametrize("lam", [0.6, 1.0])
def test_cfg_pp_is_ddim_renoised_with_the_unconditional_noise(setup, lam):
    """CFG++ through reverie's DDIM and its step hook equals the paper's update written out:
    x' = alpha' x0_w + sigma' eps_u (also at lambda = 1, which is not the conditional model);
    plain CFG at the same scale does not."""
    lm, proc, base, _, _, _, _ = setup
    n = 16
    labels, null = torch.zeros(n, dtype=torch.long), torch.full((n,), lm.null_class)
    noise = torch.randn(n, 2, generator=gen(8), dtype=torch.float64)
    grid = reverie.samplers.resolve_grid(reverie.SAMPLERS["ddim"], proc, 8, None)
    den = guide(base, "cfg_pp", lam, uncond={"class_labels": null})
    x = noise * float(proc.sigma(grid[0]))
    ours = reverie.samplers.run("ddim", den, x, grid, cond={"class_labels": labels}).x0
    ref = x.clone()
    for i in range(len(grid) - 1):
        t, t2 = grid[i], grid[i + 1]
        d_c, d_u = base(ref, t, class_labels=labels), base(ref, t, class_labels=null)
        x0_w = d_u + lam * (d_c - d_u)
        eps_u = (ref - proc.alpha(t) * d_u) / proc.sigma(t)
        ref = proc.alpha(t2) * x0_w + proc.sigma(t2) * eps_u
    assert torch.allclose(ours, ref, atol=1e-8)
    plain = guide(base, "cfg", lam, uncond={"class_labels": null})
    other = reverie.samplers.run("ddim", plain, x, grid, cond={"class_labels": labels}).x0
    assert (other - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match="works with ddim, not 'heun'"):
        reverie.samplers.run("heun", den, x, grid, cond={"class_labels": labels})


def test_cfg_pp_in_float32_on_a_grid_float32_rounds(setup):
    """The CFG++ hook finds its step's call when the state is float32 (times rounded): the
    float32 walk on an EDM grid equals the float64 one, and differs from plain CFG."""
    lm, _, _, _, _, _, _ = setup
    proc = reverie.EDM()
    base = lm.denoiser(proc)
    labels, null = torch.zeros(16, dtype=torch.long), {"class_labels": torch.tensor([2])}
    noise = torch.randn(16, 2, generator=gen(8), dtype=torch.float64)
    out = {}
    for method, dtype in (("cfg_pp", torch.float64), ("cfg_pp", torch.float32),
                          ("cfg", torch.float32)):
        den = guide(base, method, 0.6, uncond=null)
        out[method, dtype] = reverie.sample(den, noise.to(dtype), sampler="ddim", steps=8,
                                            cond={"class_labels": labels}).double()
    assert torch.allclose(out["cfg_pp", torch.float32], out["cfg_pp", torch.float64], atol=1e-4)
    assert (out["cfg", torch.float32] - out["cfg_pp", torch.float64]).abs().max() > 1e-2


def test_schedules_and_interval(setup):
    """Each schedule averages to the scale over the walk (in log-SNR), rises from the noisy to
    the clean end, and the interval switches guidance off outside it."""
    lm, proc, base, _, _, _, _ = setup
    null = {"class_labels": torch.full((4,), lm.null_class)}
    lo, hi = proc.log_snr(torch.tensor([proc.t_max, proc.t_min], dtype=torch.float64)).tolist()
    lams = torch.linspace(lo, hi, 2001, dtype=torch.float64)
    ts = proc.t_from_log_snr(lams)
    for schedule in ("constant", "linear", "cosine", "power"):
        g = guide(base, "cfg", 3.0, uncond=null, schedule=schedule)
        scales = torch.tensor([g.scale_at(t.reshape(1)) for t in ts])
        assert abs(float(scales.mean()) - 3.0) < 0.02, schedule
        if schedule != "constant":
            assert scales[0] < 1.1 and scales[-1] > 3.0, schedule
    g = guide(base, "cfg", 3.0, uncond=null, interval=(100.0, 500.0))
    assert g.scale_at(torch.tensor([50.0])) == 1.0 == g.scale_at(torch.tensor([600.0]))
    assert g.scale_at(torch.tensor([300.0])) == 3.0


def test_tilted_reference_is_exact_at_the_ends(setup):
    """The grid sampler of p(x|c)^w p(x)^(1-w): at w = 1 it samples p(x | c) (sliced W1 at the
    floor), at w = 1.5 it does not. (The tilted law moves less with w than CFG's samples do:
    CFG does not sample it, which the guidance benchmark measures.)"""
    lm, _, _, _, sw, tol, _ = setup
    assert sw(lm.tilted_sample(0, 1.0, N, gen(11))) < tol
    assert sw(lm.tilted_sample(0, 1.5, N, gen(11))) > 1.5 * tol


def test_gradient_guidance_reward_moves_the_mean(setup):
    """Reward guidance with a linear reward raises the mean reward over the unguided model;
    a negated reward lowers it (the sign is right)."""
    lm, proc, _, uncond, _, _, _ = setup
    noise = torch.randn(500, 2, generator=gen(4), dtype=torch.float64)
    r = lambda x0: x0[:, 0]  # noqa: E731
    plain = reverie.sample(uncond, noise, sampler="heun", steps=15)[:, 0].mean()
    up = reverie.sample(guide(uncond, "reward", 1.0, reward=r), noise, sampler="heun",
                        steps=15)[:, 0].mean()
    down = reverie.sample(guide(uncond, "reward", 1.0, loss=r), noise, sampler="heun",
                          steps=15)[:, 0].mean()
    assert up > plain + 0.2 and down < plain - 0.2


def test_bad_input(setup):
    lm, proc, base, uncond, _, _, _ = setup
    null = {"class_labels": torch.full((4,), lm.null_class)}
    with pytest.raises(ValueError, match="unknown guidance method 'cfgg'.*expected one of cfg"):
        guide(base, "cfgg", 2.0, uncond=null)
    with pytest.raises(ValueError, match=r"cfg_pp takes a scale in \[0, 1\], got 1.5"):
        guide(base, "cfg_pp", 1.5, uncond=null)
    with pytest.raises(ValueError, match="'cfg' needs uncond="):
        guide(base, "cfg", 2.0)
    with pytest.raises(ValueError, match="needs loss= or classifier="):
        guide(uncond, "universal", 2.0)
    with pytest.raises(ValueError, match="has no option"):
        guide(base, "cfg", 2.0, uncond=null, momentum=0.5)
    with pytest.raises(ValueError, match="cfg_pp takes no schedule or interval"):
        guide(base, "cfg_pp", 0.5, uncond=null, schedule="linear")
    with pytest.raises(ValueError, match="unknown schedule"):
        guide(base, "cfg", 2.0, uncond=null, schedule="exp")
    with pytest.raises(TypeError, match="autoguidance needs uncond= a weaker denoiser"):
        guide(base, "autoguidance", 2.0, uncond=null)
    x = torch.randn(4, 2, dtype=torch.float64)
    bad = guide(uncond, "classifier", 1.0, classifier=lambda x, t: torch.zeros(3))
    with pytest.raises(ValueError, match=r"one value per row, shape \(4,\); got \(3,\)"):
        bad(x, 300.0)
    frozen = reverie.Denoiser(lambda x, t: uncond(x, t).detach(), proc, "x0")
    with pytest.raises(ValueError, match="carries no gradient"):
        guide(frozen, "universal", 1.0, loss=lambda x0: x0.sum(1))(x, 300.0)


def test_every_method_registered_runs_with_a_sampler(setup):
    """Every name in METHODS samples finite values on the mixture with its defaults."""
    lm, proc, base, uncond, _, _, _ = setup
    n = 64
    labels, null = torch.zeros(n, dtype=torch.long), torch.full((n,), lm.null_class)
    noise = torch.randn(n, 2, generator=gen(9), dtype=torch.float64)
    weak = lm.conditional(0)  # stands in for "a weaker model of the same data"
    for name, info in METHODS.items():
        if name == "fdg":  # images [B, C, H, W] only: sampled in test_guidance_peers.py
            continue
        if name == "coherence_cfg":  # a coherence-conditioned model only: in its own test file
            continue
        kw: dict = {"log_density": -2.5} if "log_density" in info.options else {}
        if info.family == "perturbed":  # a perturbation that changes nothing: D_p = D_c
            den, cond = base, {"class_labels": labels}
            kw.update(uncond={"class_labels": null}, perturb=contextlib.nullcontext)
        elif info.family == "cfg" or "uncond" in info.needs:
            den, cond = base, {"class_labels": labels}
            kw["uncond"] = ({"class_labels": null} if name != "autoguidance"
                            else _ignore_labels(weak.denoiser(proc)))
        else:
            den, cond = uncond, None
            kw["classifier" if name == "classifier" else "loss"] = (
                lm.classifier(proc, 0) if name == "classifier" else (lambda x0: x0.sum(1)))
        scale = 0.5 if info.scale_range[1] <= 1 else 2.0
        sampler = info.samplers[0] if info.samplers else "dpmpp_2m"
        x = reverie.sample(guide(den, name, scale, **kw), noise, sampler=sampler, steps=6,
                           cond=cond)
        assert x.shape == (n, 2) and bool(torch.isfinite(x).all()), name


def _ignore_labels(den):
    class Weak(reverie.DenoiserBase):
        process = den.process

        def __call__(self, x, t, **cond):
            return den(x, t)

    return Weak()


def test_cli_guidance_on_digits(tmp_path, capsys):
    """``reverie sample --guidance apg --option momentum=...`` gives the samples of the Python
    API with the same method and options; plain CFG at the same scale gives others; methods
    the command line cannot feed and ambiguous options are one-line errors."""
    import numpy as np

    from reverie.cli import main

    base = ["sample", "--model", "digits", "--label", "3", "--cfg", "3", "--n", "4",
            "--steps", "4", "--quiet", "--seed", "1"]
    assert main([*base, "--guidance", "apg", "--option", "momentum=-0.5", "--out",
                 str(tmp_path / "apg.npy")]) == 0
    model = reverie.load("digits")
    api = model.sample(4, steps=4, seed=1, labels=3, cfg_scale=3.0, guidance="apg",
                       guidance_options={"momentum": -0.5})
    cli = np.load(tmp_path / "apg.npy")
    assert np.allclose(cli, api.numpy(), atol=1e-5)
    assert main([*base, "--out", str(tmp_path / "cfg.npy")]) == 0
    assert not np.allclose(np.load(tmp_path / "cfg.npy"), cli, atol=1e-3)
    capsys.readouterr()
    assert main([*base, "--guidance", "classifier", "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot give" in capsys.readouterr().err
    assert main([*base, "--guidance", "apg", "--sampler", "ddim", "--option", "eta=1",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "write sampler.eta=... or guidance.eta=..." in capsys.readouterr().err
    assert main([*base, "--guidance", "cfg_pp", "--out", str(tmp_path / "x.png")]) == 2
    assert "cfg_pp takes a scale in [0, 1], got 3" in capsys.readouterr().err
    assert main([*base, "--guidance", "cfg_pp", "--cfg", "0.5", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "works with ddim, not 'dpmpp_2m'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_gradient_guidance_on_a_flow_from_pure_noise():
    """On a rectified flow the walk starts at alpha = 0, where a score term has no data
    prediction: the gradient methods return the plain prediction there and guide afterwards
    (finite samples, and a reward still moves the mean)."""
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], 0.2)
    proc = reverie.RectifiedFlow()
    den = mix.denoiser(proc)
    noise = torch.randn(400, 2, generator=gen(2), dtype=torch.float64)
    plain = reverie.sample(den, noise, sampler="euler", steps=20)
    up = reverie.sample(guide(den, "reward", 0.5, reward=lambda x0: x0[:, 0]), noise,
                        sampler="euler", steps=20)
    assert bool(torch.isfinite(up).all()) and up[:, 0].mean() > plain[:, 0].mean() + 0.2

"""Model adapters: prediction-type conversions, the same model in every parameterisation,
classifier-free guidance, dtypes and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import all_processes, gen
from torch import nn

import reverie
from reverie.denoisers import PREDICTIONS, from_x0, to_x0
from reverie.samplers import run

PROCS = all_processes()


def _times(proc, n):
    return torch.linspace(proc.t_min, proc.t_max * 0.999, n, dtype=torch.float64)


@pytest.mark.parametrize("proc", PROCS, ids=repr)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_round_trip(proc, prediction):
    x = torch.randn(8, 3, generator=gen(0), dtype=torch.float64)
    x0 = torch.randn(8, 3, generator=gen(1), dtype=torch.float64)
    t = _times(proc, 8)
    out = from_x0(x0, prediction, x, t, proc)
    torch.testing.assert_close(to_x0(out, prediction, x, t, proc), x0, rtol=1e-9, atol=1e-9)


def test_conversions_agree_with_their_definitions():
    proc = reverie.VPLinear()
    x0 = torch.randn(5, 2, dtype=torch.float64)
    eps = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    a, s = proc.alpha(t)[:, None], proc.sigma(t)[:, None]
    x = a * x0 + s * eps
    torch.testing.assert_close(from_x0(x0, "eps", x, t, proc), eps)
    torch.testing.assert_close(from_x0(x0, "v", x, t, proc), a * eps - s * x0)
    torch.testing.assert_close(from_x0(x0, "score", x, t, proc), -eps / s)
    da, ds = proc.d_alpha(t)[:, None], proc.d_sigma(t)[:, None]
    torch.testing.assert_close(from_x0(x0, "flow", x, t, proc), da * x0 + ds * eps)


@pytest.mark.parametrize(
    "proc", [reverie.VP.linear(), reverie.EDM(), reverie.RectifiedFlow(t_max=0.995)], ids=repr
)
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "unipc", "ddpm"])
def test_same_model_in_every_parameterisation_gives_the_same_trajectory(mixture, proc, sampler):
    exact = mixture.denoiser(proc)

    def as_prediction(kind):
        def fn(x, t):
            return from_x0(exact(x, t), kind, x, t, proc)

        return reverie.Denoiser(fn, proc, prediction=kind)

    noise = torch.randn(64, 2, generator=gen(3), dtype=torch.float64)
    outs = {
        kind: reverie.sample(as_prediction(kind), noise, sampler, steps=12, generator=gen(4))
        for kind in PREDICTIONS
    }
    for kind in PREDICTIONS:
        torch.testing.assert_close(outs[kind], outs["x0"], rtol=1e-7, atol=1e-7)


class _Cond(nn.Module):
    """A toy conditional x0-predictor: shrinks towards a class mean."""

    def __init__(self):
        super().__init__()
        self.means = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))

    def forward(self, x, t, class_labels):
        return 0.5 * x + self.means[class_labels]


def test_classifier_free_guidance():
    proc = reverie.VPLinear()
    den = reverie.Denoiser(_Cond().double(), proc, prediction="x0")
    x = torch.randn(6, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    null = torch.full((6,), 2)
    cond = den(x, 0.5, class_labels=labels)
    uncond = den(x, 0.5, class_labels=null)
    for scale in [0.0, 1.0, 3.0]:
        cfg = reverie.ClassifierFreeGuidance(den, scale, {"class_labels": null})
        torch.testing.assert_close(
            cfg(x, 0.5, class_labels=labels), uncond + scale * (cond - uncond)
        )
    # scale 1 is the conditional model exactly (no second evaluation)
    calls = []
    counting = reverie.Denoiser(
        lambda x, t, class_labels: calls.append(1) or _Cond().double()(x, t, class_labels),
        proc,
        "x0",
    )
    reverie.ClassifierFreeGuidance(counting, 1.0, {"class_labels": null})(
        x, 0.5, class_labels=labels
    )
    assert len(calls) == 1
    # the batched path equals two separate calls
    cfg = reverie.ClassifierFreeGuidance(den, 2.0, {"class_labels": null})
    unbatched = reverie.ClassifierFreeGuidance(den, 2.0, {"class_labels": 2})  # not batchable
    torch.testing.assert_close(
        cfg(x, 0.5, class_labels=labels), unbatched(x, 0.5, class_labels=labels)
    )
    # limited interval: outside it the conditional model is used
    lim = reverie.ClassifierFreeGuidance(den, 3.0, {"class_labels": null}, interval=(0.6, 0.9))
    torch.testing.assert_close(lim(x, 0.5, class_labels=labels), cond)


def _class_conditional_mixture(gm, proc):
    """An exact class-conditional denoiser: label k is the mixture's component k, label K
    (the null class) the whole mixture."""
    from reverie.reference import Gaussian

    parts = [Gaussian(m, c).denoiser(proc) for m, c in zip(gm.means, gm.covariances)]
    parts.append(gm.denoiser(proc))

    def fn(x, t, class_labels):
        out = torch.stack([d(x, t) for d in parts])  # [K + 1, n, D]
        return out[class_labels, torch.arange(x.shape[0])]

    return reverie.Denoiser(fn, proc, prediction="x0")


def rows_follow_labels(gm, x, labels) -> float:
    """Fraction of rows whose most probable mixture component is their own label."""
    return float((gm.classify(x) == labels).double().mean())


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_per_sample_labels_reach_their_own_component(mixture, scale):
    """Guidance with one label per row (a batched null branch): every row lands in its own
    label's component (measured 300 of 300); the same rows scored against the labels shuffled
    agree only by chance (0.32), and a single label for the whole batch fails the check."""
    proc = reverie.VP.linear()
    den = _class_conditional_mixture(mixture, proc)
    n = 300
    labels = torch.arange(n) % 3
    cfg = reverie.ClassifierFreeGuidance(den, scale, {"class_labels": torch.full((n,), 3)})
    noise = torch.randn(n, 2, generator=gen(0), dtype=torch.float64)
    x = reverie.sample(cfg, noise, "dpmpp_2m", 20, cond={"class_labels": labels})
    assert rows_follow_labels(mixture, x, labels) >= 0.99
    shuffled = labels[torch.randperm(n, generator=gen(1))]
    assert rows_follow_labels(mixture, x, shuffled) < 0.6
    one = reverie.sample(cfg, noise, "dpmpp_2m", 20, cond={"class_labels": torch.zeros(n).long()})
    assert rows_follow_labels(mixture, one, labels) < 0.6


@pytest.mark.parametrize("model_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float64])
def test_low_precision_model_under_high_precision_state(model_dtype, state_dtype):
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).to(model_dtype)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            assert x.dtype == model_dtype
            h = torch.cat([x, t[:, None].to(x.dtype) / 1000], dim=1)
            return self.net(h)

    den = reverie.Denoiser(Net(), reverie.VP.linear(), prediction="eps")
    noise = torch.randn(16, 2, dtype=state_dtype, generator=gen(0))
    out = reverie.sample(den, noise, "dpmpp_2m", steps=8)
    assert out.dtype == state_dtype
    # against the same weights in float64 throughout, the relative error is below half the
    # model dtype's epsilon (measured 1.5e-4 for float16, 7.5e-4 for bfloat16), while keeping
    # the solver state in the model's dtype is 20x worse (3.7e-3, 1.9e-2) and fails the check
    ref_net = copy.deepcopy(net).double()
    ref = reverie.sample(
        reverie.Denoiser(lambda x, t: ref_net(torch.cat([x, t[:, None] / 1000], dim=1)),
                         reverie.VP.linear(), prediction="eps"),
        noise.double(), "dpmpp_2m", steps=8)

    def accurate(x) -> bool:
        rel = float((x.double() - ref).abs().max() / ref.abs().max())
        return rel < 0.5 * torch.finfo(model_dtype).eps

    assert accurate(out)
    assert not accurate(reverie.sample(den, noise.to(model_dtype), "dpmpp_2m", steps=8))


def test_bad_denoiser_input():
    flow = reverie.RectifiedFlow()
    with pytest.raises(ValueError, match="does not determine x0 where alpha"):
        reverie.Denoiser(lambda x, t: x, flow, prediction="eps")(torch.zeros(2, 2), 1.0)
    proc = reverie.EDM()
    with pytest.raises(ValueError, match="prediction type 'noise'.*eps, x0, v, score, flow"):
        reverie.Denoiser(lambda x, t: x, proc, prediction="noise")
    with pytest.raises(TypeError, match="callable"):
        reverie.Denoiser(3, proc)
    with pytest.raises(TypeError, match="GaussianProcess"):
        reverie.Denoiser(lambda x, t: x, "edm")
    bad = reverie.Denoiser(lambda x, t: x[:, :1], proc, prediction="x0")
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        bad(torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        reverie.Denoiser(lambda x, t: x, proc, "x0")(torch.zeros(4, 2), torch.ones(3))


def test_eps_score_velocity_of_exact_mixture(mixture):
    proc = reverie.VPLinear()
    den = mixture.denoiser(proc)
    x = torch.randn(10, 2, dtype=torch.float64, generator=gen(0))
    t = 0.3
    torch.testing.assert_close(den.score(x, t), mixture.score(x, t, proc), rtol=1e-9, atol=1e-9)
    # velocity is the probability-flow drift f x - g^2/2 score
    f, g2 = proc.drift_diffusion(t)
    torch.testing.assert_close(
        den.velocity(x, t), f * x - 0.5 * g2 * mixture.score(x, t, proc), rtol=1e-9, atol=1e-9
    )
    # and run() accepts only denoisers
    with pytest.raises(TypeError, match="reverie denoiser"):
        run("ddim", lambda x, t: x, x, reverie.make_grid(proc, 3))

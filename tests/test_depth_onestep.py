"""reverie.depth.onestep (Garcia Martin et al. 2025, one-step image-conditional diffusion): the
fixed pipeline's one step is the data prediction at t_max (trailing) and the leading one is not,
against the exact conditional Gaussian denoiser; the affine-invariant loss; end-to-end
fine-tuning of the one-step estimate; each check with a deliberately wrong sibling."""

import copy

import pytest
import torch

from reverie.depth import LogDepth, PlaneLogDepth, render_photos, render_scenes
from reverie.depth.onestep import (
    ConcatNet,
    conditional_denoiser,
    ensemble,
    finetune_one_step,
    fixed_pipeline,
    one_step,
    photo_dataset,
    ssi_l1,
    train_conditional,
)
from reverie.grids import make_grid
from reverie.process import VP

PROCESS = VP.scaled_linear()  # Stable Diffusion's (Marigold's) discrete VP, t in 0 .. 999


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return ConcatNet(hidden=8, dilations=(1, 2, 4))


def test_trailing_one_step_is_the_data_prediction_at_t_max_and_leading_is_not():
    den = conditional_denoiser(_tiny_net(), PROCESS)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    image = torch.rand(3, 8, 8, generator=g)
    # the trailing grid's first point IS t_max; the leading one's is t_min
    assert float(make_grid(PROCESS, 1, "trailing")[0]) == PROCESS.t_max
    assert float(make_grid(PROCESS, 1, "leading")[0]) == PROCESS.t_min
    with torch.no_grad():
        at_t_max = den(noise, PROCESS.t_max, image=image)
        fixed = fixed_pipeline(den, noise, 1, "trailing", cond={"image": image})
        broken = fixed_pipeline(den, noise, 1, "leading", cond={"image": image})
        assert torch.allclose(fixed, at_t_max, atol=1e-6)
        assert torch.allclose(one_step(den, noise.shape, noise=noise, image=image), at_t_max)
        # sibling: the leading one-step run is the prediction at t_min, not at t_max
        assert torch.allclose(broken, den(noise, PROCESS.t_min, image=image), atol=1e-6)
        assert (broken - at_t_max).abs().mean() > 0.3


def _plane_scene(prior, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(1, k, 2, generator=g, dtype=torch.float64) * 1.8 - 0.9
    theta = prior.mean + prior.cov.diagonal().sqrt() * torch.randn(3, generator=g,
                                                                    dtype=torch.float64)
    return {"points": uv, "values": prior._features(uv) @ theta}


def test_one_step_and_ensemble_reach_the_exact_posterior_mean_leading_does_not():
    # PlaneLogDepth: an exact conditional Gaussian and its exact denoiser on the same VP
    prior = PlaneLogDepth(PROCESS, 6)
    cond = _plane_scene(prior)
    law = prior.posterior(cond["points"][0], cond["values"][0])
    truth, spread = law.mean(), law.covariance().diagonal().sqrt().mean()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(200, 1, 6, 6, generator=g, dtype=torch.float64)

    def err(x):  # mean distance to the posterior mean, in posterior standard deviations
        return float((x.reshape(-1) - truth).abs().mean() / spread)

    assert err(one_step(prior, (1, 6, 6), **cond)) < 0.01  # zeros at t_max: one call
    assert err(fixed_pipeline(prior, noise[0], 1, "trailing", cond=cond)) < 0.05
    # 200 members of a 5-step DDIM run average to the mean (Monte-Carlo floor ~0.06)
    assert err(ensemble(prior, noise, 5, "trailing", cond=cond)) < 0.15
    # siblings: one leading step (noise labelled clean) and a prediction 15% off are rejected
    assert err(fixed_pipeline(prior, noise[0], 1, "leading", cond=cond)) > 3
    assert err(1.15 * one_step(prior, (1, 6, 6), **cond)) > 0.3


def test_ssi_loss_is_affine_invariant_and_matches_least_squares():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(4, 5, 5, generator=g), torch.randn(4, 5, 5, generator=g)
    value = ssi_l1(pred, target)
    assert torch.allclose(ssi_l1(3.0 * pred - 0.7, target), value, atol=1e-5)
    assert float(ssi_l1(2.0 * target + 1.0, target)) < 1e-5
    # brute force: each map's least-squares (scale, shift) by lstsq, then the L1
    ref = []
    for p, y in zip(pred.flatten(1), target.flatten(1)):
        a = torch.stack([p, torch.ones_like(p)], 1)
        sol = torch.linalg.lstsq(a, y[:, None]).solution
        ref.append((a @ sol)[:, 0] - y)
    assert torch.allclose(value, torch.stack(ref).abs().mean(), atol=1e-5)
    # sibling: plain L1 is not affine invariant
    l1 = (pred - target).abs().mean()
    assert abs(float((3.0 * pred - 0.7 - target).abs().mean() - l1)) > 0.1


def test_finetuning_the_one_step_estimate_lowers_the_held_out_task_loss():
    kw = {"batch": 16, "size": 8, "scenes": 256, "lr": 3e-3}
    net, _ = train_conditional(PROCESS, steps=30, net=_tiny_net(), **kw)  # the frozen baseline
    images, target = photo_dataset(64, 8, seed=10_000)  # held-out scenes

    def held_out(model):  # the task error (L1 on encoded depth) of the one-step estimate
        with torch.no_grad():
            pred = one_step(conditional_denoiser(model, PROCESS), target.shape,
                            dtype=torch.float32, image=images)
            return float((pred - target).abs().mean())

    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    base = held_out(net)
    tuned, record = finetune_one_step(net, PROCESS, steps=30, loss="l1", **kw)
    assert record["final_loss"] < record["first_loss"]
    assert held_out(tuned) < 0.8 * base, (held_out(tuned), base)
    assert all(torch.equal(frozen[k], v) for k, v in net.state_dict().items())  # tunes a copy
    # sibling: as many more steps of the diffusion objective (all t) do not get there
    more, _ = train_conditional(PROCESS, steps=30, net=copy.deepcopy(net), seed=1, **kw)
    assert held_out(more) > 1.1 * held_out(tuned), (held_out(more), held_out(tuned))


def test_photos_share_the_scenes_depth():
    depth, image = render_photos(6, 10, seed=3)
    assert torch.equal(depth, render_scenes(6, 10, seed=3))
    assert image.shape == depth.shape and 0 < float(image.min()) and float(image.max()) <= 0.9
    assert LogDepth().encode(depth).abs().max() <= 1


def test_bad_input():
    den = conditional_denoiser(_tiny_net(), PROCESS)
    x = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="image must be shaped"):
        den(x, 10.0, image=torch.zeros(2, 6, 6))
    with pytest.raises(ValueError, match="unknown grid"):
        fixed_pipeline(den, x.double(), 1, "middle", cond={"image": x})
    with pytest.raises(ValueError, match="members"):
        ensemble(den, torch.zeros(8), 1)
    with pytest.raises(ValueError, match="loss must be"):
        finetune_one_step(_tiny_net(), PROCESS, steps=1, loss="l2")
    with pytest.raises(ValueError, match="one shape"):
        ssi_l1(torch.zeros(2, 4), torch.zeros(2, 5))

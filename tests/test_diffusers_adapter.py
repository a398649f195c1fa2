"""diffusers checkpoints load through reverie.hub.load and sample exactly like diffusers."""

from __future__ import annotations

import json

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import pytest
import torch
from tests.conftest import tiny_unet

import reverie
from reverie.diffusers_adapter import alphas_cumprod_from_config, scheduler_spec
from reverie.hub import load


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers_pipeline(tmp_path, spacing):
    """A random UNet2DModel saved as a DDIMPipeline folder loads through reverie.load, and
    reverie's DDIM on diffusers' timesteps, from the same noise, gives diffusers' images."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(
        beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing
    )
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)

    model = load(tmp_path)
    assert isinstance(model.process, reverie.VP) and model.prediction == "eps"
    assert model.sample_shape == (1, 8, 8) and model.num_classes is None

    steps, n = 10, 3
    ref = pipe(
        batch_size=n,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=steps,
        eta=0.0,
        output_type="np",
    ).images  # [n, 8, 8, 1] in [0, 1]
    sched.set_timesteps(steps)
    grid = torch.cat([sched.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    out = reverie.run("ddim", model.denoiser, noise, grid).x0
    ours = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(ours - ref).max() < 2e-5
    assert abs(ref - 0.5).max() > 0.05  # the comparison is not between two constant images


def test_trailing_ddim_equals_reverie_trailing_grid(tmp_path):
    """diffusers' trailing DDIM timesteps are reverie's 'trailing' grid on VP (t_clean = -1)."""
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)
    sched.set_timesteps(10)
    proc = scheduler_spec(dict(sched.config)).process
    grid = reverie.make_grid(proc, 10, "trailing")
    assert torch.equal(grid[:-1], sched.timesteps.double()) and grid[-1] == -1


def test_flow_matching_matches_diffusers_euler(tmp_path):
    """A FlowMatchEulerDiscreteScheduler model: reverie's DDIM on the flow (== Euler in t on
    the velocity) from the scheduler's sigmas reproduces diffusers' loop."""
    unet = tiny_unet(1)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    model = load(tmp_path / "unet")  # finds ../scheduler/scheduler_config.json
    assert isinstance(model.process, reverie.RectifiedFlow) and model.prediction == "flow"

    n, steps = 2, 8
    x = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    sched.set_timesteps(steps)
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            v = unet(ref, t.expand(n)).sample
            ref = sched.step(v, t, ref).prev_sample
    grid = sched.sigmas.double()
    ours = reverie.run("ddim", model.denoiser, x, grid).x0
    assert (ours - ref).abs().max() < 2e-5


def test_edm_matches_diffusers_edm_euler(tmp_path):
    """An EDMEulerScheduler model (the bundled digits layout): reverie's Euler on the same
    Karras sigmas reproduces diffusers' preconditioned loop."""
    unet = tiny_unet(2)
    sched = diffusers.EDMEulerScheduler(sigma_data=0.75, prediction_type="epsilon")
    unet.save_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(
        json.dumps(dict(sched.config) | {"_class_name": "EDMEulerScheduler"})
    )
    model = load(tmp_path)
    assert isinstance(model.process, reverie.EDM) and model.prediction == "x0"

    n, steps = 2, 6
    sched.set_timesteps(steps)
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    ref = noise * sched.sigmas[0]
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(ref, t), t.expand(n)).sample
            ref = sched.step(out, t, ref).prev_sample
    ours = reverie.run("euler", model.denoiser, noise * sched.sigmas[0], sched.sigmas.double()).x0
    assert (ours - ref).abs().max() < 1e-4 * ref.abs().max()


@pytest.mark.parametrize(
    "schedule,extra",
    [
        ("linear", {}),
        ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        ("squaredcos_cap_v2", {}),
        ("sigmoid", {}),
        ("linear", {"rescale_betas_zero_snr": True}),
    ],
)
def test_alphas_cumprod_match_diffusers(schedule, extra):
    # EulerDiscrete, like reverie, pins the last zero-SNR value to 2**-24; DDPM has "sigmoid"
    cls = diffusers.DDPMScheduler if schedule == "sigmoid" else diffusers.EulerDiscreteScheduler
    sched = cls(beta_schedule=schedule, **extra)
    ours = alphas_cumprod_from_config(dict(sched.config))
    theirs = sched.alphas_cumprod.double()
    assert torch.allclose(ours, theirs, rtol=2e-5, atol=1e-9)


def test_prediction_types_and_unknown_scheduler():
    for ptype, ours in [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")]:
        assert (
            scheduler_spec({"_class_name": "DDPMScheduler", "prediction_type": ptype}).prediction
            == ours
        )
    spec = scheduler_spec(
        {
            "_class_name": "DPMSolverMultistepScheduler",
            "use_flow_sigmas": True,
            "flow_shift": 2.0,
            "prediction_type": "flow_prediction",
        }
    )
    assert isinstance(spec.process, reverie.RectifiedFlow) and spec.process.shift == 2.0
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler_spec({"_class_name": "DDPMScheduler", "prediction_type": "banana"})
    with pytest.raises(ValueError, match="unsupported scheduler"):
        scheduler_spec({"_class_name": "VQDiffusionScheduler", "num_vec_classes": 4})
    with pytest.raises(ValueError, match="dynamic"):
        scheduler_spec(
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
        )


def test_learned_variance_keeps_the_mean_channels(tmp_path):
    unet = tiny_unet(out_channels=2)
    unet.save_pretrained(tmp_path)
    model = load(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    assert model.denoiser(x, 500.0).shape == x.shape


def test_class_conditional_diffusers_unet_without_null_class(tmp_path):
    unet = tiny_unet(num_class_embeds=3)
    unet.save_pretrained(tmp_path)
    model = load(tmp_path)
    assert model.num_classes == 3 and not model.has_null_class
    x = torch.randn(2, 1, 8, 8)
    d = model.conditional(2)(x, 300.0)
    ref = model.denoiser(x, 300.0, class_labels=torch.tensor([2, 2]))
    assert torch.equal(d, ref)
    with pytest.raises(ValueError, match="null class"):
        model.conditional(1, cfg_scale=2.0)


def test_bad_checkpoints(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "ok")
    # config that does not match the weights
    bad = tmp_path / "mismatch"
    unet.save_pretrained(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["block_out_channels"] = [8, 32]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load(bad)
    # corrupt weights
    corrupt = tmp_path / "corrupt"
    unet.save_pretrained(corrupt)
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load(corrupt)
    # missing weights
    missing = tmp_path / "missing"
    unet.save_pretrained(missing)
    (missing / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load(missing)
    # a folder with no model at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model"):
        load(tmp_path / "empty")


def test_scheduler_spec_reads_live_configs_without_a_class_name():
    """A live ``scheduler.config`` has no ``_class_name`` (diffusers adds it on saving): the
    family is recognised from its keys, so a flow or EDM config is not read as DDPM."""
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    from reverie.diffusers_adapter import scheduler_spec

    flow = scheduler_spec(dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config))
    assert isinstance(flow.process, reverie.RectifiedFlow) and flow.process.shift == 3.0
    edm = scheduler_spec(dict(EDMEulerScheduler().config))
    assert isinstance(edm.process, reverie.EDM)
    ddpm = scheduler_spec(dict(diffusers.DDPMScheduler().config))
    assert isinstance(ddpm.process, reverie.VP)

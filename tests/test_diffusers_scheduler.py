"""reverie.diffusers.Scheduler: any reverie sampler inside a real diffusers pipeline."""

from __future__ import annotations

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import pytest
import torch
from tests.conftest import tiny_unet

import reverie
from reverie.diffusers_adapter import unet_function
from reverie.samplers import SAMPLERS, resolve_grid

ONE_CALL = ["ddim", "ddpm", "euler", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "dpmpp_2m_sde",
            "dpmpp_3m_sde", "euler_maruyama"]
TWO_CALL = ["heun", "dpmpp_2s"]


@pytest.fixture(scope="module")
def pipe():
    p = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler())
    p.set_progress_bar_config(disable=True)
    return p


def pipeline_images(pipe, scheduler, steps: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """The pipeline's final sample before its clamp to [0, 1] ([n, 1, 8, 8]) with
    ``scheduler`` swapped in (read from the last ``step``; the clamped image must agree)."""
    last = {}
    step = scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        last["x"] = out.prev_sample
        return out

    scheduler.step = recording_step  # an instance attribute: the pipeline calls this one
    pipe.scheduler = scheduler
    images = pipe(
        batch_size=n,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="pt",
    ).images
    del scheduler.step
    assert torch.equal(images, (last["x"] / 2 + 0.5).clamp(0, 1))
    return last["x"]


def reverie_run(pipe, config, sampler, steps, grid=None, n=2, seed=0, **options):
    """reverie's own loop on the same UNet from the pipeline's initial noise, with the same
    generator continuing into the sampler's noise draws (the SampleOutput)."""
    spec = reverie.diffusers.Scheduler("ddim", config).spec  # scheduler_spec, class inferred
    den = reverie.Denoiser(unet_function(pipe.unet, spec), spec.process, spec.prediction)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g)  # DDPMPipeline's randn_tensor draw
    grid = resolve_grid(SAMPLERS[sampler], spec.process, steps, grid)
    return reverie.run(sampler, den, x, grid, generator=g, **options)


def reverie_images(pipe, config, sampler, steps, grid=None, n=2, seed=0, **options):
    return reverie_run(pipe, config, sampler, steps, grid, n, seed, **options).x0


@pytest.mark.parametrize("sampler", ONE_CALL + TWO_CALL)
def test_pipeline_equals_reverie_run(pipe, sampler):
    """In DDPMPipeline, Scheduler(sampler) gives exactly reverie.run(sampler) on the same model,
    noise and default grid (stochastic samplers: the pipeline's generator)."""
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    ours = pipeline_images(pipe, reverie.diffusers.Scheduler(sampler=sampler, config=config), 6)
    ref = reverie_images(pipe, config, sampler, 6)
    assert (ours - ref).abs().max() < 1e-5 * ref.abs().max()
    assert ref.std() > 0.1  # not two constant images


def test_siblings_are_rejected(pipe):
    """The equality above can fail: another sampler, another grid, another prediction type or
    other noise each move the output far beyond rounding."""
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    ours = pipeline_images(pipe, reverie.diffusers.Scheduler(sampler="ipndm", config=config), 6)
    scale = ours.abs().max()
    assert (ours - reverie_images(pipe, config, "ipndm", 6)).abs().max() < 1e-5 * scale
    for sampler in ("dpmpp_2m", "unipc", "ddim"):  # another sampler
        assert (ours - reverie_images(pipe, config, sampler, 6)).abs().max() > 1e-3 * scale
    other_grid = reverie_images(pipe, config, "ipndm", 6, grid="logsnr")
    assert (ours - other_grid).abs().max() > 1e-3 * scale
    assert (ours - reverie_images(pipe, config, "ipndm", 6, seed=1)).abs().max() > 1e-3 * scale
    v_config = diffusers.DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction")
    wrong = pipeline_images(pipe, reverie.diffusers.Scheduler("ipndm", v_config.config), 6)
    assert (ours - wrong).abs().max() > 1e-3 * scale
    # the grid option is honoured: a named grid equals reverie's run on that grid
    logsnr = reverie.diffusers.Scheduler("ipndm", config, grid="logsnr")
    ref = reverie_images(pipe, config, "ipndm", 6, grid="logsnr")
    assert (pipeline_images(pipe, logsnr, 6) - ref).abs().max() < 1e-5 * ref.abs().max()


def test_dpmpp_2m_on_diffusers_grid_equals_dpm_solver(pipe):
    """dpmpp_2m on the timesteps DPMSolverMultistepScheduler uses reproduces that scheduler in
    the same pipeline (float32 vs float64 coefficients: close, not bitwise); 2M on another
    grid (log-SNR) or DPM-Solver++(3M) on this one does not."""
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear")
    steps = 10
    ref = pipeline_images(pipe, dpm, steps)
    dpm.set_timesteps(steps)
    ours = pipeline_images(
        pipe, reverie.diffusers.Scheduler("dpmpp_2m", dpm.config, grid=dpm.timesteps), steps
    )
    assert (ours - ref).abs().max() < 1e-5 * ref.abs().max()
    logsnr = reverie.diffusers.Scheduler("dpmpp_2m", dpm.config, grid="logsnr")
    other_grid = pipeline_images(pipe, logsnr, steps)
    assert (other_grid - ref).abs().max() > 1e-3 * ref.abs().max()
    other = reverie.diffusers.Scheduler("dpmpp_3m", dpm.config, grid=dpm.timesteps.tolist())
    assert (pipeline_images(pipe, other, steps) - ref).abs().max() > 1e-3 * ref.abs().max()


def test_flow_matching_config_with_euler(pipe):
    """A FlowMatchEulerDiscreteScheduler config (shift 3): Scheduler("euler") on that
    scheduler's timesteps equals diffusers' FlowMatch Euler in the same pipeline, and on
    reverie's default grid equals reverie.run."""
    fm = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    steps = 8
    ref = pipeline_images(pipe, fm, steps)
    fm.set_timesteps(steps)
    sched = reverie.diffusers.Scheduler("euler", fm.config, grid=fm.timesteps)
    ours = pipeline_images(pipe, sched, steps)
    assert torch.allclose(sched.timesteps, fm.timesteps)  # the model sees the same times
    assert (ours - ref).abs().max() < 1e-4
    default = pipeline_images(pipe, reverie.diffusers.Scheduler("euler", fm.config), steps)
    assert (default - ref).abs().max() > 1e-3  # reverie's flow grid is not diffusers' here
    for sampler in ("euler", "dpmpp_2m", "unipc"):  # reverie's default grid on the flow
        sched = reverie.diffusers.Scheduler(sampler, fm.config)
        ours = pipeline_images(pipe, sched, steps)
        assert (ours - reverie_images(pipe, fm.config, sampler, steps)).abs().max() < 1e-6
        assert sampler == "euler" or (ours - default).abs().max() > 1e-3


def test_saved_pipeline_reloads_the_scheduler(pipe, tmp_path):
    """pipe.save_pretrained records reverie.diffusers_scheduler.Scheduler with its sampler and
    options; from_pretrained (with reverie imported) gives the same images."""
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    sched = reverie.diffusers.Scheduler("dpmpp_2m_sde", config, eta=0.5)
    ours = pipeline_images(pipe, sched, 5)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, reverie.diffusers.Scheduler)
    assert loaded.scheduler.sampler == "dpmpp_2m_sde" and loaded.scheduler.options == {"eta": 0.5}
    again = pipeline_images(loaded, loaded.scheduler, 5)
    assert torch.equal(ours, again)
    other = pipeline_images(loaded, reverie.diffusers.Scheduler("dpmpp_2m_sde", config), 5)
    assert (other - ours).abs().max() > 1e-3 * ours.abs().max()  # eta matters


def test_edm_config_scales_the_model_input():
    """An EDMEulerScheduler config in an SD-style loop (init_noise_sigma, scale_model_input):
    Scheduler("euler") on the same sigmas equals diffusers' EDM Euler."""
    unet = tiny_unet(2)
    edm = diffusers.EDMEulerScheduler(sigma_data=0.75, prediction_type="epsilon")
    steps, n = 6, 2
    edm.set_timesteps(steps)
    sched = reverie.diffusers.Scheduler("euler", edm.config, grid=edm.timesteps)
    sched.set_timesteps(steps)
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(4))

    def loop(s):
        x = noise * s.init_noise_sigma
        with torch.no_grad():
            for t in s.timesteps:
                out = unet(s.scale_model_input(x, t), t.expand(n)).sample
                x = s.step(out, t, x).prev_sample
        return x

    ref = loop(edm)
    assert abs(sched.init_noise_sigma - edm.init_noise_sigma) < 1e-3
    assert (loop(sched) - ref).abs().max() < 1e-4 * ref.abs().max()
    sched.scale_model_input = lambda x, t: x  # sibling: without EDM's input scaling
    sched.set_timesteps(steps)
    assert (loop(sched) - ref).abs().max() > 1e-2 * ref.abs().max()


def test_contract_and_add_noise():
    """The attributes pipelines read, return_dict=False, add_noise, from_config and repr."""
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    s = reverie.diffusers.Scheduler.from_config(config, sampler="unipc")
    assert s.sampler == "unipc" and s.order == 1 and s.config.num_train_timesteps == 1000
    assert s.config["process_class"] == "DDPMScheduler" and len(s) == 1000
    s.set_timesteps(5)
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == 5
    assert s.init_noise_sigma == pytest.approx(1.0)
    x = torch.randn(2, 1, 4, 4)
    assert s.scale_model_input(x, s.timesteps[0]) is x
    prev, x0 = s.step(torch.zeros_like(x), s.timesteps[0], x, return_dict=False)
    assert prev.shape == x.shape and x0.shape == x.shape
    ref = diffusers.DDPMScheduler(beta_schedule="linear")
    t = torch.tensor([10, 500])
    assert torch.allclose(s.add_noise(x, x, t), ref.add_noise(x, x, t), atol=1e-6)
    # half precision: the step runs in float32 and returns the sample's dtype
    s.set_timesteps(5)
    s.step(x.half(), s.timesteps[0], x.half())
    half = s.step(x.half(), s.timesteps[1], x.half()).prev_sample
    s.set_timesteps(5)
    s.step(x.half().float(), s.timesteps[0], x.half().float())
    full = s.step(x.half().float(), s.timesteps[1], x.half().float()).prev_sample
    assert half.dtype == torch.float16 and torch.equal(half, full.half())
    again = reverie.diffusers.Scheduler.from_config(s.config)  # its own config round-trips
    assert again.sampler == "unipc" and "unipc" in repr(again)
    ddim = reverie.diffusers.Scheduler.from_config(config, sampler="ddim", eta=0.5)
    assert reverie.diffusers.Scheduler.from_config(ddim.config).options == {"eta": 0.5}
    assert reverie.diffusers.Scheduler.from_config(ddim.config, eta=0.0).options == {"eta": 0.0}
    assert reverie.diffusers.Scheduler.from_config(ddim.config, sampler="ipndm").options == {}


def test_bad_input():
    config = diffusers.DDPMScheduler().config
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        reverie.diffusers.Scheduler("nope", config)
    for sampler in ("euler", "heun"):
        with pytest.raises(ValueError, match="s_churn > 0 starts each step at a freshly"):
            reverie.diffusers.Scheduler(sampler, config, s_churn=1.0)
    with pytest.raises(ValueError, match="has no option"):
        reverie.diffusers.Scheduler("ipndm", config, eta=1.0)
    with pytest.raises(ValueError, match="config=pipe.scheduler.config"):
        reverie.diffusers.Scheduler("ipndm")
    with pytest.raises(ValueError, match="unknown grid"):
        reverie.diffusers.Scheduler("ipndm", config, grid="weird")
    s = reverie.diffusers.Scheduler("ipndm", config)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    s.step(x, s.timesteps[0], x)
    with pytest.raises(ValueError, match="expected"):
        s.step(x, s.timesteps[3], x)  # skipped a timestep
    fixed = reverie.diffusers.Scheduler("ipndm", config, grid=[999, 500, 0])
    with pytest.raises(ValueError, match="num_inference_steps=3"):
        fixed.set_timesteps(10)


def test_stable_diffusion_pipeline_with_cfg():
    """A tiny StableDiffusionPipeline (v-prediction, scaled_linear, CFG 3, given embeddings
    and latents): Scheduler("ddim") on DDIM's trailing timesteps equals diffusers' DDIM
    (set_alpha_to_one); DPM-Solver++(2M) or an eps reading of the v-model does not."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=2,
    ).eval()
    vae = diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16,
    ).eval()
    ddim = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=1,
        prediction_type="v_prediction",
    )
    sd = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=ddim,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    gen = [torch.Generator().manual_seed(k) for k in range(3)]
    emb, neg = torch.randn(2, 7, 16, generator=gen[0]), torch.randn(2, 7, 16, generator=gen[1])
    latents = torch.randn(2, 4, 8, 8, generator=gen[2])

    def run(scheduler):
        sd.scheduler = scheduler
        return sd(prompt_embeds=emb, negative_prompt_embeds=neg, latents=latents,
                  num_inference_steps=5, guidance_scale=3.0, height=16, width=16,
                  output_type="latent").images

    ref = run(ddim)
    ddim.set_timesteps(5)
    ours = run(reverie.diffusers.Scheduler("ddim", ddim.config, grid=ddim.timesteps))
    assert (ours - ref).abs().max() < 1e-5 * ref.abs().max()
    other = run(reverie.diffusers.Scheduler("dpmpp_2m", ddim.config, grid=ddim.timesteps))
    assert (other - ref).abs().max() > 1e-2 * ref.abs().max()
    eps = dict(ddim.config) | {"prediction_type": "epsilon"}
    wrong = run(reverie.diffusers.Scheduler("ddim", eps, grid=ddim.timesteps))
    assert (wrong - ref).abs().max() > 1e-2 * ref.abs().max()


def test_dynamic_shift_flow_as_flux_calls_it():
    """A Flux-like FlowMatch config (use_dynamic_shifting): set_timesteps(sigmas=..., mu=...)
    through diffusers' own retrieve_timesteps, then Euler, equals FlowMatch Euler; another mu
    does not, and without mu the error says what to pass."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    unet, n, steps = tiny_unet(1), 2, 6
    fm = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(5))

    def loop(s, mu):
        retrieve_timesteps(s, steps, "cpu", sigmas=sigmas, mu=mu)  # Flux's exact call
        x = noise.clone()
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(unet(x, t.expand(n)).sample, t, x).prev_sample
        return x

    mu = calculate_shift(256)  # Flux's mu for a 256-token image (0.5)
    ref = loop(fm, mu)
    ours = reverie.diffusers.Scheduler("euler", fm.config)
    assert (loop(ours, mu) - ref).abs().max() < 1e-5 * ref.abs().max()
    assert (loop(ours, 1.15) - ref).abs().max() > 1e-3 * ref.abs().max()
    with pytest.raises(ValueError, match="pass mu="):
        ours.set_timesteps(steps)
    with pytest.raises(ValueError, match="flow-matching configs only"):
        reverie.diffusers.Scheduler("euler", diffusers.DDPMScheduler().config).set_timesteps(
            sigmas=sigmas
        )


# -- samplers with two model calls per step -----------------------------------------------------


def count_calls(module: torch.nn.Module) -> list[int]:
    """A one-element list that counts ``module``'s forward calls."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("sampler", TWO_CALL)
def test_two_call_samplers_timesteps_and_nfe(sampler):
    """Heun and DPM-Solver++(2S) list every model evaluation in ``timesteps`` (order 2: Heun's
    corrector point repeated, 2S's log-SNR midpoint as an exact float time), and a pipeline
    calls the model exactly as often as reverie.run does; the equality with reverie.run is in
    test_pipeline_equals_reverie_run, its siblings in test_two_call_siblings_are_rejected."""
    unet = tiny_unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    steps = 5
    sched = reverie.diffusers.Scheduler(sampler, config)
    sched.set_timesteps(steps)
    ts = sched.timesteps
    assert sched.order == 2 and len(ts) == 2 * steps - 1 == SAMPLERS[sampler].nfe(steps)
    assert bool((ts[1:] <= ts[:-1]).all())
    if sampler == "heun":  # [t0, t1, t1, ..., t4]: the corrector runs at the next grid point
        assert torch.equal(ts[1::2], ts[2::2]) and torch.equal(ts, ts.round())
    else:  # [t0, m0, t1, m1, ...]: midpoints strictly inside, not rounded to training steps
        assert bool((ts[1::2] < ts[:-1:2]).all()) and bool((ts[1::2] > ts[2::2]).all())
        assert not torch.equal(ts[1::2], ts[1::2].round())
    calls = count_calls(unet)
    pipeline_images(pipe, sched, steps)
    assert calls[0] == reverie_run(pipe, config, sampler, steps).nfe == 2 * steps - 1


def test_two_call_siblings_are_rejected(pipe):
    """The pipeline equals reverie.run for Heun and 2S (above); the wrong variants do not:
    Heun with its corrector skipped (Euler on the same steps), 2S with its midpoint call
    replaced by the step's start (DPM-Solver++(2M) on the same steps) or made at the midpoint
    rounded to a training step (the model called at an integer time)."""
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    steps = 5
    heun = pipeline_images(pipe, reverie.diffusers.Scheduler("heun", config), steps)
    scale = heun.abs().max()
    assert (heun - reverie_images(pipe, config, "heun", steps)).abs().max() < 1e-5 * scale
    grid = resolve_grid(SAMPLERS["heun"], reverie.diffusers.Scheduler("heun", config).process,
                        steps, None)
    euler = pipeline_images(pipe, reverie.diffusers.Scheduler("euler", config, grid=grid[:-1]),
                            steps)
    assert (heun - euler).abs().max() > 1e-2 * scale

    two_s = reverie.diffusers.Scheduler("dpmpp_2s", config)
    ours = pipeline_images(pipe, two_s, steps)
    scale = ours.abs().max()
    assert (ours - reverie_images(pipe, config, "dpmpp_2s", steps)).abs().max() < 1e-5 * scale
    steps_grid = two_s.timesteps[::2]  # the step starts
    multistep = reverie.diffusers.Scheduler("dpmpp_2m", config, grid=steps_grid)
    assert (pipeline_images(pipe, multistep, steps) - ours).abs().max() > 1e-2 * scale
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, *a, **k: forward(x, t.round(), *a, **k)
    try:
        rounded = pipeline_images(pipe, reverie.diffusers.Scheduler("dpmpp_2s", config), steps)
    finally:
        del pipe.unet.forward
    assert (rounded - ours).abs().max() > 1e-4 * scale  # 7e-4 measured; equality: 0


def test_two_call_begin_index_and_half_precision():
    """img2img's ``set_begin_index(t_start * order)`` starts at a step (equal to reverie.run on
    the rest of the grid); an index inside a step is refused; a float16 sample steps in
    float32 and comes back float16."""
    unet, n = tiny_unet(1), 2
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    sched = reverie.diffusers.Scheduler("heun", config)
    sched.set_timesteps(4)
    x = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(3))

    def loop(s, x, start):
        s.set_begin_index(start)
        with torch.no_grad():
            for t in s.timesteps[start:]:
                x = s.step(unet(x, t.expand(n)).sample, t, x).prev_sample
        return x

    spec = sched.spec
    den = reverie.Denoiser(unet_function(unet, spec), spec.process, spec.prediction)
    grid = torch.tensor(sched._schedule.t, dtype=torch.float64)
    ref = reverie.run("heun", den, x, grid[2:]).x0
    ours = loop(sched, x, 2 * sched.order)
    assert (ours - ref).abs().max() < 1e-5 * ref.abs().max()
    assert (ours - reverie.run("heun", den, x, grid[1:]).x0).abs().max() > 1e-3 * ref.abs().max()
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="inner model call of a step.*multiple of.*order \\(2\\)"):
        loop(sched, x, 3)
    sched.set_timesteps(4)
    t0, t1 = sched.timesteps[:2]
    mid = sched.step(unet(x, t0.expand(n)).sample.half(), t0, x.half()).prev_sample
    assert mid.dtype == torch.float16
    assert sched.step(unet(mid.float(), t1.expand(n)).sample, t1, mid).prev_sample.dtype == (
        torch.float16
    )


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from tests.test_pipelines import tiny_sd

    folder = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_sd(folder)
    return folder


@pytest.mark.parametrize("sampler", TWO_CALL)
def test_two_call_samplers_in_stable_diffusion(sd_folder, sampler):
    """In a tiny StableDiffusionPipeline (prompt, CFG 7.5, given latents) with ``pipe.scheduler
    = Scheduler(sampler, config=pipe.scheduler.config)``, Heun and 2S give reverie's own
    ``reverie.load(folder).sample`` latents. Heun also equals diffusers' HeunDiscreteScheduler
    on the same (trailing) grid -- the same method, last step Euler included -- once its start
    is matched: with trailing / linspace spacing diffusers' Heun sets init_noise_sigma =
    sigma_max, not sqrt(sigma_max^2 + 1), so its x_T is a factor sigma / sqrt(sigma^2 + 1) off."""
    from tests.test_pipelines import PROMPT

    steps, w = 4, 7.5
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    sd = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    sd.set_progress_bar_config(disable=True)

    def run(scheduler, latents=latents):
        sd.scheduler = scheduler
        return sd(PROMPT, num_inference_steps=steps, guidance_scale=w, latents=latents,
                  output_type="latent").images

    config = sd.scheduler.config
    ours = run(reverie.diffusers.Scheduler(sampler, config=config))
    ref = reverie.load(sd_folder).sample(PROMPT, sampler=sampler, steps=steps, guidance_scale=w,
                                         latents=latents, output_type="latent")
    scale = ref.abs().max()
    assert (ours - ref).abs().max() < 1e-5 * scale
    other = run(reverie.diffusers.Scheduler(sampler, config=config, grid="uniform"))
    assert (other - ref).abs().max() > 1e-3 * scale  # another grid: the check can fail
    if sampler != "heun":
        return
    heun = diffusers.HeunDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    heun.set_timesteps(steps)
    s0 = float(heun.sigmas[0])
    diff = run(heun, latents * ((s0**2 + 1) ** 0.5 / s0))
    assert (diff - ref).abs().max() < 1e-4 * scale
    assert (run(heun) - ref).abs().max() > 1e-4 * scale  # diffusers' own start: a bit off

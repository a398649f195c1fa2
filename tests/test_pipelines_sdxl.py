"""SDXL folders load through reverie.load and sample exactly like StableDiffusionXLPipeline."""

from __future__ import annotations

import json
import shutil

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import numpy as np
import pytest
import torch
import transformers
from tests.test_pipelines import tiny_tokenizer

import reverie
from reverie.pipelines import StableDiffusionXL

PROMPT = "the red thing on a blue table"
NEG = "a blurry green cat"
STEPS, W = 6, 5.0


def tiny_clip(hidden: int, projection: bool) -> transformers.CLIPTextModel:
    """A 2-layer random CLIP text encoder (with a 16-wide projection for ``text_encoder_2``)."""
    config = transformers.CLIPTextConfig(
        vocab_size=520, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=16, bos_token_id=518,
        eos_token_id=519, pad_token_id=519,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(config).eval()


def tiny_sdxl(folder) -> None:
    """A random 16x16 StableDiffusionXLPipeline (latents 4x8x8) saved as safetensors: encoders
    of width 16 and 32 (cross-attention 48), the pooled projection 16 wide, 6 time ids of 4
    features each, SDXL's Euler / scaled-linear / leading scheduler."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=48,
        norm_num_groups=4, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16, transformer_layers_per_block=(1, 2),
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16, scaling_factor=0.13025,
    )
    tokenizer_2 = tiny_tokenizer(folder.parent / "tok2")
    tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!"
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="leading", steps_offset=1,
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=tiny_clip(16, False),
        text_encoder_2=tiny_clip(32, True), tokenizer=tiny_tokenizer(folder.parent / "tok1"),
        tokenizer_2=tokenizer_2, scheduler=scheduler, add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl") / "pipe"
    tiny_sdxl(path)
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    p = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def p(folder):
    return reverie.load(folder)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def diffusers_run(pipe, **kw):
    """diffusers' images and its Euler timesteps as a reverie grid (ending at -1: clean)."""
    images = pipe(PROMPT, num_inference_steps=STEPS, latents=latents(), output_type="np", **kw)
    grid = torch.cat([pipe.scheduler.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    return images.images, grid


def gap(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize(
    "negative, w", [(NEG, W), (None, W), (None, 1.0)], ids=["negative", "zeros", "no-cfg"]
)
def test_sample_matches_diffusers(pipe, p, negative, w):
    """reverie's Euler on diffusers' timesteps, from the same latents, gives
    StableDiffusionXLPipeline's images: CFG against a negative prompt, against zeros
    (``negative_prompt=None`` with ``force_zeros_for_empty_prompt``), and without CFG."""
    ref, grid = diffusers_run(pipe, negative_prompt=negative, guidance_scale=w)
    assert isinstance(p, StableDiffusionXL) and isinstance(p.process, reverie.VP)
    assert p.prediction == "eps" and p.default_guidance == 5.0 and p.sample_shape == (4, 8, 8)
    out = p.sample(PROMPT, negative, sampler="euler", grid=grid, guidance_scale=w,
                   latents=latents(), output_type="np")
    assert out.shape == ref.shape == (1, 16, 16, 3)
    assert gap(out, ref) < 1e-4, gap(out, ref)
    if w != 1.0:  # the sibling: the other negative ("" encoded instead of zeros, or zeros)
        other = p.sample(PROMPT, "" if negative is None else None, sampler="euler", grid=grid,
                         guidance_scale=w, latents=latents(), output_type="np")
        assert gap(other, ref) > 1e-3


def test_conditioning_and_siblings(pipe, p):
    """The conditioning keywords have SDXL's shapes (zeros for no negative prompt), the
    micro-conditioning reaches the UNet as in diffusers, and each deliberately wrong variant
    (pooled embedding zeroed, time ids of another size, 15%-off guidance, other latents) moves
    the images far beyond the rounding of the exact check."""
    pos, neg = p.encode_prompt([PROMPT, "a cat"], height=16, width=24)
    assert pos.keys() == neg.keys() == {"encoder_hidden_states", "text_embeds", "time_ids"}
    assert pos["encoder_hidden_states"].shape == (2, 77, 48) and pos["text_embeds"].shape == (2, 16)
    assert pos["time_ids"].tolist() == [[16, 24, 0, 0, 16, 24]] * 2
    assert not neg["encoder_hidden_states"].any() and not neg["text_embeds"].any()
    assert torch.equal(neg["time_ids"], pos["time_ids"])
    _, empty = p.encode_prompt(PROMPT, "")
    assert empty["text_embeds"].abs().min() > 0  # "" is encoded, not zeroed
    micro = dict(original_size=(24, 32), crops_coords_top_left=(2, 4), target_size=(8, 16))
    assert p.encode_prompt(PROMPT, **micro)[0]["time_ids"].tolist() == [[24, 32, 2, 4, 8, 16]]

    ref, grid = diffusers_run(pipe, negative_prompt=NEG, guidance_scale=W)
    args = dict(sampler="euler", grid=grid, guidance_scale=W, output_type="np")
    ref_micro, _ = diffusers_run(pipe, negative_prompt=NEG, guidance_scale=W, **micro)
    assert gap(p.sample(PROMPT, NEG, latents=latents(), **micro, **args), ref_micro) < 1e-4

    def run(cond, negative, w=W):  # reverie's loop on explicit conditioning, then the VAE
        x = reverie.run("euler", p.denoiser(cond, negative, w), latents(), grid).x0
        return p.decode(x).permute(0, 2, 3, 1).numpy()

    cond, negative = p.encode_prompt(PROMPT, NEG)
    assert gap(run(cond, negative), ref) < 1e-4  # the helper reproduces the reference
    siblings = {
        "pooled zeroed": run({**cond, "text_embeds": torch.zeros_like(cond["text_embeds"])},
                             negative),
        "other size": run({**cond, "time_ids": p.time_ids(32, 32)},
                          {**negative, "time_ids": p.time_ids(32, 32)}),
        "15% off guidance": run(cond, negative, 0.85 * W),
        "micro-conditioning": ref_micro,
        "other latents": p.sample(PROMPT, NEG, latents=latents(2), **args),
    }
    for what, image in siblings.items():
        assert gap(image, ref) > 1e-3, what


def test_reverie_scheduler_in_the_sdxl_pipeline(pipe, p):
    """reverie.diffusers.Scheduler(sampler) driving StableDiffusionXLPipeline gives reverie's
    own run of that sampler (same grid, latents, CFG); another sampler does not."""
    def in_diffusers(sampler):
        sdxl = diffusers.StableDiffusionXLPipeline(**{
            **pipe.components,
            "scheduler": reverie.diffusers.Scheduler(sampler=sampler, config=pipe.scheduler.config),
        })
        sdxl.set_progress_bar_config(disable=True)
        return sdxl(PROMPT, negative_prompt=NEG, num_inference_steps=STEPS, latents=latents(),
                    guidance_scale=W, output_type="np").images

    ours = in_diffusers("dpmpp_2m")
    ref = p.sample(PROMPT, NEG, sampler="dpmpp_2m", steps=STEPS, guidance_scale=W,
                   latents=latents(), output_type="np")
    assert gap(ours, ref) < 1e-4, gap(ours, ref)
    assert gap(in_diffusers("ddim"), ref) > 1e-3


def test_half_precision_weights(folder, p):
    """bfloat16 weights under a float32 solver state: finite images close to float32's; a
    float16 load keeps the VAE in float32 (``force_upcast``, as diffusers' SDXL pipeline)."""
    ref = p.sample(PROMPT, NEG, steps=4, latents=latents(), output_type="np")
    bf = reverie.load(folder, dtype=torch.bfloat16)
    assert bf.unet.dtype == bf.vae.dtype == bf.text_encoder_2.dtype == torch.bfloat16
    out = bf.sample(PROMPT, NEG, steps=4, latents=latents(), output_type="np")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < gap(out, ref) < 0.05, gap(out, ref)
    half = reverie.load(folder, dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32


def test_latents_mean_and_std(folder, pipe, p, tmp_path):
    """A VAE config with latents_mean / latents_std standardises the latents per channel in
    decode and encode_image, as diffusers' SDXL pipeline decodes."""
    std_folder = tmp_path / "std"
    shutil.copytree(folder, std_folder)
    config = json.loads((std_folder / "vae" / "config.json").read_text())
    config.update(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 2.0, 1.0, 1.5])
    (std_folder / "vae" / "config.json").write_text(json.dumps(config))
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(std_folder)
    ref.set_progress_bar_config(disable=True)
    ref_images, grid = diffusers_run(ref, negative_prompt=NEG, guidance_scale=W)
    q = reverie.load(std_folder)
    out = q.sample(PROMPT, NEG, sampler="euler", grid=grid, latents=latents(), output_type="np")
    assert gap(out, ref_images) < 1e-4
    plain = p.sample(PROMPT, NEG, sampler="euler", grid=grid, latents=latents(), output_type="np")
    assert gap(plain, ref_images) > 1e-3  # the check sees the standardisation
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    z, z_plain = q.encode_image(images), p.encode_image(images)
    mean, std = q.latents_mean, q.latents_std
    assert torch.allclose(z, (z_plain / p.scaling_factor - mean) * p.scaling_factor / std)
    assert torch.allclose(q.decode(z), p.decode(z_plain), atol=1e-5)


def test_bad_input(folder, p, tmp_path):
    with pytest.raises(ValueError, match="must be pairs"):
        p.sample(PROMPT, steps=2, original_size=(16,))
    with pytest.raises(ValueError, match=r"multiples of 2 \(the VAE factor\)"):
        p.sample(PROMPT, steps=2, height=15)

    def edited(name, edit):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        edit(copy)
        return copy

    def set_json(path, **values):
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))

    missing = edited("missing", lambda f: shutil.rmtree(f / "text_encoder_2"))
    with pytest.raises(FileNotFoundError, match="lacks the 'text_encoder_2' component.*needs unet"):
        reverie.load(missing)
    wrong_class = edited("wrong-class", lambda f: set_json(
        f / "model_index.json", text_encoder_2=["transformers", "CLIPTextModel"]))
    with pytest.raises(ValueError, match="'text_encoder_2' is a 'CLIPTextModel'; expected "
                       "CLIPTextModelWithProjection"):
        reverie.load(wrong_class)
    wrong_dims = edited("wrong-dims", lambda f: set_json(
        f / "unet" / "config.json", addition_time_embed_dim=8))
    with pytest.raises(ValueError, match=r"added embedding takes 40 features, but 6 time ids x 8"):
        reverie.load(wrong_dims)
    lcm = edited("lcm", lambda f: set_json(f / "unet" / "config.json", time_cond_proj_dim=8))
    with pytest.raises(ValueError, match="guidance embedding.*not supported"):
        reverie.load(lcm)

"""Stable Diffusion folders load through reverie.load and sample exactly like diffusers."""

from __future__ import annotations

import json
import shutil

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import numpy as np
import pytest
import torch
import transformers

import reverie
from reverie.discrete.constraints._vocabulary import _BYTE_LEVEL
from reverie.pipelines import StableDiffusion
from reverie.pipelines.tokenizers import write_clip_tokenizer

PROMPT = "the red thing on a blue table"


def tiny_tokenizer(folder) -> transformers.CLIPTokenizer:
    """A CLIP tokenizer from a written vocabulary: the 256 bytes, the same with ``</w>``, a few
    merges, then the start/end tokens (end last, as in CLIP): 520 tokens."""
    merges = ["t h", "th e</w>", "r e", "re d</w>", "o n</w>", "a n"]
    # GPT-2's byte-level characters are CLIP's BPE alphabet
    return write_clip_tokenizer(folder, list(_BYTE_LEVEL), merges)


def tiny_sd(folder, scheduler_kw: dict | None = None, seed: int = 0) -> None:
    """A random 16x16 StableDiffusionPipeline (latents 4x8x8) saved as safetensors."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.18215,
    )
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=520,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=518,
            eos_token_id=519,
            pad_token_id=519,
        )
    )
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              timestep_spacing="leading", steps_offset=1)
    kw.update(scheduler_kw or {})
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tiny_tokenizer(folder.parent / f"{folder.name}-tok"),
        scheduler=diffusers.DPMSolverMultistepScheduler(**kw),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_sd(folder)
    return folder


def diffusers_run(folder, steps, latents, **kw):
    """diffusers' own images and the timesteps its DPMSolverMultistepScheduler used."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=steps, latents=latents, output_type="np", **kw)
    grid = torch.cat([pipe.scheduler.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    return images.images, grid


@pytest.mark.parametrize("negative", [None, "a blurry green cat"])
def test_sample_matches_diffusers(sd_folder, negative):
    """reverie's DPM++(2M) on diffusers' timesteps, from the same latents, with CFG against the
    (negative or empty) prompt, gives diffusers' images; the siblings (15%-off guidance, other
    latents, the other negative prompt) do not, so the check can fail."""
    steps, w = 6, 7.5
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ref, grid = diffusers_run(
        sd_folder, steps, latents, guidance_scale=w, negative_prompt=negative
    )
    p = reverie.load(sd_folder)
    assert isinstance(p, StableDiffusion) and isinstance(p.process, reverie.VP)
    assert p.prediction == "eps" and p.vae_scale_factor == 2

    def ours(**kw):
        args = dict(negative_prompt=negative, sampler="dpmpp_2m", grid=grid, guidance_scale=w,
                    latents=latents, output_type="np")
        args.update(kw)
        return p.sample(PROMPT, **args)

    out = ours()
    assert out.shape == ref.shape == (1, 16, 16, 3)
    err = float(np.abs(out - ref).max())
    assert err < 1e-4, err
    other_neg = "a blurry green cat" if negative is None else None
    for sibling in (
        ours(guidance_scale=w * 0.85),
        ours(latents=torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))),
        ours(negative_prompt=other_neg),
    ):
        assert float(np.abs(sibling - ref).max()) > 1e-3


def test_v_prediction_zero_snr_latents_match(tmp_path):
    """An SD2-v-like folder (v prediction, zero-terminal-SNR betas, trailing spacing)."""
    folder = tmp_path / "sd2v"
    tiny_sd(folder, dict(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                         timestep_spacing="trailing"), seed=3)
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ref, grid = diffusers_run(folder, 5, latents, guidance_scale=3.0, num_images_per_prompt=2)
    p = reverie.load(folder)
    assert p.prediction == "v"
    out = p.sample(PROMPT, grid=grid, guidance_scale=3.0, latents=latents, n=2, output_type="np")
    assert float(np.abs(out - ref).max()) < 1e-4
    wrong = p.sample(PROMPT, grid=grid, guidance_scale=3.0, latents=latents.flip(0), n=2,
                     output_type="np")
    assert float(np.abs(wrong - ref).max()) > 1e-3


def test_denoiser_with_other_samplers_and_vae(sd_folder):
    p = reverie.load(sd_folder)
    pos, neg = p.encode_prompt([PROMPT, "a cat"], "ugly")
    assert pos.keys() == neg.keys() == {"encoder_hidden_states"}
    assert pos["encoder_hidden_states"].shape == neg["encoder_hidden_states"].shape == (2, 77, 32)
    den = p.denoiser((pos, neg), guidance_scale=5.0)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = reverie.sample(den, noise, sampler="ddim", steps=4)
    assert x.shape == (2, 4, 8, 8) and bool(torch.isfinite(x).all())
    # guidance scale 1 is the conditional model alone
    x_c = reverie.sample(p.denoiser(pos), noise, sampler="euler", steps=3)
    assert bool(torch.isfinite(x_c).all())
    images = p.decode(x)
    assert images.shape == (2, 3, 16, 16) and 0 <= float(images.min()) <= float(images.max()) <= 1
    z = p.encode_image(images)
    assert z.shape == (2, 4, 8, 8)
    pil = p.sample(PROMPT, steps=2, n=2, generator=torch.Generator().manual_seed(0))
    assert len(pil) == 2 and pil[0].size == (16, 16)
    z = p.sample([PROMPT, "a cat"], steps=2, n=3, height=8, width=12, output_type="latent")
    assert z.shape == (6, 4, 4, 6) and p.sample_shape == (4, 8, 8)


def test_bfloat16_model_under_float32_state(sd_folder):
    """A bfloat16 model (UNet, VAE, text encoder) samples finite images close to float32's."""
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ref = reverie.load(sd_folder).sample(PROMPT, steps=4, latents=latents, output_type="np")
    p = reverie.load(sd_folder, dtype=torch.bfloat16)
    assert p.unet.dtype == p.vae.dtype == p.text_encoder.dtype == torch.bfloat16
    out = p.sample(PROMPT, steps=4, latents=latents, output_type="np")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < float(np.abs(out - ref).max()) < 0.05


def test_bad_input(sd_folder, tmp_path):
    p = reverie.load(sd_folder)
    with pytest.raises(ValueError, match=r"multiples of 2 \(the VAE factor\)"):
        p.sample(PROMPT, height=15, steps=2)
    with pytest.raises(ValueError, match="latents must have shape"):
        p.sample(PROMPT, steps=2, latents=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="output_type"):
        p.sample(PROMPT, steps=2, output_type="jpeg")
    with pytest.raises(ValueError, match=r"multiples of 2 \(the VAE factor\), got 16x9"):
        p.encode_image(torch.zeros(1, 3, 16, 9))
    with pytest.raises(ValueError, match="needs negative conditioning"):
        p.denoiser(p.encode_prompt(PROMPT)[0], guidance_scale=2.0)
    with pytest.warns(UserWarning, match="truncated to 77 tokens"):
        long_pos, _ = p.encode_prompt("the red " * 60)
    assert long_pos["encoder_hidden_states"].shape == (1, 77, 32)

    # pickle-only weights: refused unless trusted
    pick = tmp_path / "pickled"
    shutil.copytree(sd_folder, pick)
    from safetensors.torch import load_file

    for part, stem in [("unet", "diffusion_pytorch_model"), ("text_encoder", "model")]:
        st = pick / part / f"{stem}.safetensors"
        bin_name = "pytorch_model.bin" if part == "text_encoder" else f"{stem}.bin"
        torch.save(load_file(str(st)), pick / part / bin_name)
        st.unlink()
    with pytest.raises(ValueError, match="only pickled weights.*trust_pickle=True"):
        reverie.load(pick)
    trusted = reverie.load(pick, trust_pickle=True)
    x = torch.randn(1, 4, 8, 8)
    emb = p.encode_prompt(PROMPT)[0]
    assert torch.equal(trusted.encode_prompt(PROMPT)[0]["encoder_hidden_states"],
                       emb["encoder_hidden_states"])
    assert torch.equal(trusted.denoiser(emb)(x, 500.0), p.denoiser(emb)(x, 500.0))

    # a missing component, an unknown component, an unsupported pipeline class
    missing = tmp_path / "missing"
    shutil.copytree(sd_folder, missing)
    shutil.rmtree(missing / "vae")
    with pytest.raises(FileNotFoundError, match="lacks the 'vae' component"):
        reverie.load(missing)
    unknown = tmp_path / "unknown"
    shutil.copytree(sd_folder, unknown)
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "controlnet": ["x", "Y"]}))
    with pytest.raises(ValueError, match="unknown component 'controlnet'"):
        reverie.load(unknown)
    (unknown / "model_index.json").write_text(
        json.dumps({**index, "unet": ["diffusers", "UNet2DModel"]})
    )
    with pytest.raises(ValueError, match="'unet' is a 'UNet2DModel'; expected UNet2DCondition"):
        reverie.load(unknown)
    (unknown / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "KandinskyV22Pipeline"})
    )
    with pytest.raises(ValueError, match="KandinskyV22Pipeline.*supported pipeline classes: "
                       "StableDiffusionPipeline"):
        reverie.load(unknown)


def test_cli_text_to_image(sd_folder, tmp_path, capsys):
    """``reverie sample --model FOLDER --prompt ...`` writes the images the Python API gives for
    the same seed and options (a picture and the raw tensor); another prompt gives other images;
    text-only flags on a non-text model and a text model without a prompt are user errors."""
    import numpy as np

    from reverie.cli import main

    out = tmp_path / "x.npy"
    args = ["sample", "--model", str(sd_folder), "--prompt", "a red circle", "--steps", "3",
            "--n", "2", "--seed", "5", "--cfg", "3", "--quiet"]
    assert main([*args, "--out", str(out), "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0
    p = reverie.load(sd_folder)
    api = p.sample("a red circle", steps=3, n=2, guidance_scale=3.0, output_type="pt",
                   generator=torch.Generator().manual_seed(5))
    cli = np.load(out)
    assert cli.shape == tuple(api.shape) and np.allclose(cli, api.numpy(), atol=1e-6)
    assert main([*args[:4], "a blue square", *args[5:], "--out", str(tmp_path / "y.npy")]) == 0
    assert not np.allclose(np.load(tmp_path / "y.npy"), cli, atol=1e-3)
    capsys.readouterr()
    assert main(["sample", "--model", str(sd_folder), "--out", str(tmp_path / "z.png")]) == 2
    assert "pass --prompt" in capsys.readouterr().err
    assert main(["sample", "--model", "two-moons", "--prompt", "x",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "text-to-image" in capsys.readouterr().err
    assert main([*args, "--size", "17x16", "--out", str(tmp_path / "w.png")]) == 2


def test_cli_dtype_and_device(sd_folder, tmp_path, capsys):
    """``--dtype bfloat16`` loads the networks in bfloat16 under a float32 state: finite images
    close to float32's but not equal (so the flag reached the weights); an unknown or absent
    device is a one-line user error, and nothing is written."""
    import numpy as np

    from reverie.cli import main

    base = ["sample", "--model", str(sd_folder), "--prompt", "a red circle", "--steps", "3",
            "--n", "1", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "f32.npy")]) == 0
    assert main([*base, "--dtype", "bfloat16", "--out", str(tmp_path / "bf16.npy")]) == 0
    f32, bf16 = np.load(tmp_path / "f32.npy"), np.load(tmp_path / "bf16.npy")
    assert np.isfinite(bf16).all() and 0 < float(np.abs(bf16 - f32).max()) < 0.05
    capsys.readouterr()
    for device, message in [("foo", "unknown device 'foo'"), ("cuda:7", "CUDA is not available")]:
        if device.startswith("cuda") and torch.cuda.is_available():
            continue
        out = tmp_path / f"{device}.npy"
        assert main([*base, "--device", device, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_decode_in_slices_and_nan_named(sd_folder):
    """Decoding in slices gives the images of decoding all at once; NaN latents raise
    NonFiniteError instead of writing black images."""
    p = reverie.load(sd_folder)
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = p.decode(z, batch_size=None)
    assert torch.allclose(p.decode(z, batch_size=2), whole, atol=1e-6)
    assert not torch.allclose(p.decode(z.flip(0), batch_size=2), whole, atol=1e-3)
    with pytest.raises(reverie.NonFiniteError, match="VAE decoder"):
        p.decode(torch.full_like(z, float("nan")))

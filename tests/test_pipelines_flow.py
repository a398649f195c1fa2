"""SD3 and Flux folders load through reverie.load and sample exactly like diffusers (flow
matching: static and resolution-dependent shifts, SD3's twice-shifted grid, Flux's packed
latents and embedded guidance), and reverie's Scheduler drives both diffusers pipelines."""

from __future__ import annotations

import json
import shutil
import string

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import numpy as np
import pytest
import torch
import transformers
from tests.test_pipelines import PROMPT, tiny_tokenizer

import reverie
from reverie.diffusers import Scheduler
from reverie.pipelines import Flux, StableDiffusion3
from reverie.samplers import run

NEG, STEPS = "a blurry green cat", 4


def t5_tokenizer() -> transformers.T5Tokenizer:
    """A T5 (Unigram) tokenizer from a written vocabulary, built without sentencepiece: the
    special tokens, a few words and the letters (38 pieces); saves as ``tokenizer.json``."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in "the red thing on a blue table cat".split()]
    pieces += [(c, -5.0) for c in string.ascii_lowercase]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_parts(folder, seed: int, projection: bool, clips: int, t5_width: int) -> dict:
    """A 16x16 VAE (4 latent channels, factor 2, SD3/Flux style), ``clips`` tiny CLIP text
    encoders (with projection for SD3) and a T5 encoder, randomly initialised."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False,
    )
    clip_cls = (transformers.CLIPTextModelWithProjection if projection
                else transformers.CLIPTextModel)
    clip_cfg = transformers.CLIPTextConfig(
        vocab_size=520, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
        bos_token_id=518, eos_token_id=519, pad_token_id=519,
    )
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=40, d_model=t5_width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))
    tok = folder.parent / f"{folder.name}-tok"
    parts = {"vae": vae.eval()}
    for i, suffix in enumerate(["", "_2"][:clips]):
        parts[f"text_encoder{suffix}"] = clip_cls(clip_cfg).eval()
        parts[f"tokenizer{suffix}"] = tiny_tokenizer(tok / str(i))
    parts[f"text_encoder_{clips + 1}"] = t5.eval()
    parts[f"tokenizer_{clips + 1}"] = t5_tokenizer()
    return parts


def tiny_sd3(folder) -> None:
    """A random StableDiffusion3Pipeline (16x16 images, 4x8x8 latents, patch 2; the CLIP
    features, 16 + 16, are zero-padded to T5's 48), FlowMatch shift 3."""
    parts = tiny_parts(folder, 0, projection=True, clips=2, t5_width=48)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=48,
        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16,
    )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer.eval(), **parts,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def tiny_flux(folder) -> None:
    """A random FluxPipeline with embedded guidance (dev-like): dynamic shifting."""
    parts = tiny_parts(folder, 1, projection=False, clips=1, t5_width=32)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = diffusers.FluxPipeline(transformer=transformer.eval(), **parts, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)


def edit_scheduler(src, dst, **changes) -> None:
    """A copy of a pipeline folder with scheduler_config.json changed."""
    shutil.copytree(src, dst)
    path = dst / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    tiny_sd3(root / "sd3")
    tiny_flux(root / "flux")
    edit_scheduler(root / "flux", root / "flux-static", use_dynamic_shifting=False)
    return root


def diffusers_pipe(folder):
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def gap(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def test_sd3_matches_diffusers(folders):
    """reverie's Euler on the grid diffusers' SD3 walks (shifted twice, diffusers #13243),
    from the same latents, with CFG against a negative prompt, gives the pipeline's latents and
    images; siblings (15%-off guidance, the pooled projections zeroed, the once-shifted grid, a
    grid of another shift) do not."""
    pipe = diffusers_pipe(folders / "sd3")
    z = latents()
    kw = dict(negative_prompt=NEG, num_inference_steps=STEPS, guidance_scale=5.0, latents=z)
    ref = pipe(PROMPT, output_type="latent", **kw).images
    grid = pipe.scheduler.sigmas.double()
    ref_np = pipe(PROMPT, output_type="np", **kw).images
    p = reverie.load(folders / "sd3")
    assert isinstance(p, StableDiffusion3) and p.prediction == "flow" and not p.dynamic
    assert p.process.shift == 3.0 and p.sample_shape == (4, 8, 8)
    assert torch.equal(p.diffusers_grid(STEPS), grid)  # read back, not re-derived

    def ours(**over):
        args = dict(sampler="euler", grid=grid, guidance_scale=5.0, latents=z,
                    output_type="latent")
        return p.sample(PROMPT, NEG, **{**args, **over})

    assert gap(ours(), ref) < 1e-4
    assert float(np.abs(ours(output_type="np") - ref_np).max()) < 1e-4
    cond, neg = p.encode_prompt(PROMPT, NEG)
    assert cond["encoder_hidden_states"].shape == (1, 77 + 256, 48)
    assert cond["pooled_projections"].shape == (1, 32)
    assert float(cond["encoder_hidden_states"][:, :77, 32:].abs().max()) == 0  # zero padding
    no_pool = p.denoiser({**cond, "pooled_projections": torch.zeros(1, 32)}, neg, 5.0)
    single = reverie.make_grid(p.process, STEPS, "trailing")  # shifted once (#13243's fix)
    other = reverie.make_grid(reverie.RectifiedFlow(1e-3, shift=2.0), STEPS, "trailing")
    for sibling in (
        ours(guidance_scale=5.0 * 0.85),
        run("euler", no_pool, z.clone(), grid).x0,
        ours(grid=single),
        ours(grid=other),
    ):
        assert gap(sibling, ref) > 1e-3


def test_sd3_without_t5(folders, tmp_path):
    """An SD3 folder without text_encoder_3 / tokenizer_3: the T5 part of the conditioning is
    zeros, as in diffusers, and the run still matches the pipeline's (and not the T5 run's)."""
    folder = tmp_path / "sd3-no-t5"
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
        folders / "sd3", text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and not (folder / "text_encoder_3").exists()
    z = latents()
    ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=3.0, latents=z,
               output_type="latent").images
    p = reverie.load(folder)
    assert p.text_encoder_3 is None
    cond, _ = p.encode_prompt(PROMPT)
    assert float(cond["encoder_hidden_states"][:, 77:].abs().max()) == 0
    kw = dict(sampler="euler", grid=pipe.scheduler.sigmas.double(), guidance_scale=3.0,
              latents=z, output_type="latent")
    assert gap(p.sample(PROMPT, **kw), ref) < 1e-4
    assert gap(reverie.load(folders / "sd3").sample(PROMPT, **kw), ref) > 1e-3


@pytest.mark.parametrize("name", ["flux", "flux-static"])
def test_flux_matches_diffusers(folders, name):
    """Flux with embedded guidance, dynamic (dev-like) or static shift: reverie's Euler on its
    default grid for 16x16 (the shift for 16 image tokens) equals diffusers' run from the same
    (packed) latents; diffusers' own grid is reproduced; true CFG with a negative prompt matches
    too. Siblings: 15%-off guidance, a grid of another shift, the pooled projection zeroed and
    mis-packed latents."""
    pipe = diffusers_pipe(folders / name)
    z = latents()
    packed = pipe._pack_latents(z, 1, 4, 8, 8)
    kw = dict(num_inference_steps=STEPS, height=16, width=16, output_type="latent")
    ref = pipe(PROMPT, latents=packed, **kw).images
    grid = pipe.scheduler.sigmas.double()
    p = reverie.load(folders / name)
    assert isinstance(p, Flux) and p.dynamic == (name == "flux")
    assert torch.equal(p._pack(z), packed)
    assert gap(p.diffusers_grid(STEPS, 16, 16), grid) < 1e-6

    def ours(**over):
        args = dict(sampler="euler", steps=STEPS, height=16, width=16, latents=z,
                    output_type="latent")
        return p._pack(p.sample(PROMPT, **{**args, **over}))

    assert gap(ours(), ref) < 1e-4
    assert gap(ours(grid=grid), ref) < 1e-4
    cond, _ = p.encode_prompt(PROMPT, height=16, width=16)
    no_pool = p.denoiser({**cond, "pooled_projections": torch.zeros(1, 16)})
    shift = p.shift_at(16, 16)
    other = reverie.make_grid(reverie.RectifiedFlow(1e-3, shift=shift * 1.5), STEPS, "trailing")
    mispacked = pipe._pack_latents(z.transpose(-1, -2), 1, 4, 8, 8)
    for sibling in (
        ours(guidance_scale=3.5 * 0.85),
        ours(grid=other),
        run("euler", no_pool, packed.clone(), grid).x0,
        pipe(PROMPT, latents=mispacked, **kw).images,
    ):
        assert gap(sibling, ref) > 1e-3
    if p.dynamic:  # the default-size shift is not the 16x16 one
        assert p.process.shift != shift and gap(ours(grid="trailing"), ref) < 1e-4
        assert gap(ours(grid=reverie.make_grid(p.process, STEPS, "trailing")), ref) > 1e-3
        true_cfg = pipe(PROMPT, negative_prompt=NEG, true_cfg_scale=4.0, latents=packed,
                        **kw).images
        assert gap(ours(negative_prompt=NEG, true_cfg_scale=4.0), true_cfg) < 1e-4
        assert gap(true_cfg, ref) > 1e-3


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_reverie_scheduler_inside_diffusers(folders, name):
    """``Scheduler("euler", config=pipe.scheduler.config)`` inside the diffusers pipeline (SD3:
    set_timesteps(N); Flux: set_timesteps(sigmas=..., mu=...)) gives reverie's run on its
    default grid; a Scheduler built from a config of another shift does not."""
    pipe = diffusers_pipe(folders / name)
    p = reverie.load(folders / name)
    z = latents(2)
    if name == "sd3":
        kw, x = dict(negative_prompt=NEG, guidance_scale=4.0), z
        ours = p.sample(PROMPT, NEG, guidance_scale=4.0, sampler="euler", steps=STEPS,
                        latents=z, output_type="latent")
    else:
        kw, x = dict(height=16, width=16), p._pack(z)
        ours = p._pack(p.sample(PROMPT, sampler="euler", steps=STEPS, latents=z, height=16,
                                width=16, output_type="latent"))
    config = pipe.scheduler.config
    pipe.scheduler = Scheduler(sampler="euler", config=config)
    theirs = pipe(PROMPT, num_inference_steps=STEPS, latents=x, output_type="latent", **kw)
    assert gap(theirs.images, ours) < 1e-4
    pipe.scheduler = Scheduler(sampler="euler", config={**config, "shift": 2.0,
                                                        "max_shift": 2.0})
    wrong = pipe(PROMPT, num_inference_steps=STEPS, latents=x, output_type="latent", **kw)
    assert gap(wrong.images, ours) > 1e-3


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_bfloat16_weights_under_float32_state(folders, name):
    """bfloat16 networks (transformer, VAE, text encoders) sample finite images close to
    float32's; the state stays float32."""
    kw = dict(steps=3, latents=latents(), output_type="np", height=16, width=16)
    ref = reverie.load(folders / name).sample(PROMPT, **kw)
    p = reverie.load(folders / name, dtype=torch.bfloat16)
    assert p.transformer.dtype == p.vae.dtype == p.text_encoder_2.dtype == torch.bfloat16
    out = p.sample(PROMPT, **kw)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < float(np.abs(out - ref).max()) < 0.05


def test_bad_input(folders, tmp_path):
    f = reverie.load(folders / "flux")
    with pytest.raises(ValueError, match=r"multiples of 4 \(the VAE factor times the patch"):
        f.sample(PROMPT, height=18, width=16, steps=2)
    with pytest.raises(ValueError, match="latents must have shape"):  # packed latents
        f.sample(PROMPT, height=16, width=16, steps=2, latents=torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="negative prompt only with true_cfg_scale"):
        f.sample(PROMPT, NEG, height=16, width=16, steps=2)
    with pytest.raises(ValueError, match="true_cfg_scale != 1 needs negative"):
        f.denoiser(f.encode_prompt(PROMPT)[0], true_cfg_scale=3.0)
    cond, _ = f.encode_prompt(PROMPT, height=32, width=32)
    with pytest.raises(ValueError, match="encoded for 64 image tokens but the latents have 16"):
        f.denoiser(cond)(torch.zeros(1, 16, 16), 0.5)
    with pytest.warns(UserWarning, match="truncated to 77 tokens"):
        f.encode_prompt("the red " * 60, height=16, width=16)

    missing = tmp_path / "missing"
    shutil.copytree(folders / "flux", missing)
    shutil.rmtree(missing / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="lacks the 'text_encoder_2' component"):
        reverie.load(missing)
    half = tmp_path / "half"  # a T5 without its tokenizer
    shutil.copytree(folders / "sd3", half)
    shutil.rmtree(half / "tokenizer_3")
    with pytest.raises(ValueError, match="text_encoder_3 and tokenizer_3 come together"):
        reverie.load(half)
    ddim = tmp_path / "ddim"
    edit_scheduler(folders / "sd3", ddim, _class_name="DDIMScheduler", beta_schedule="linear")
    with pytest.raises(ValueError, match="needs a FlowMatchEulerDiscreteScheduler config"):
        reverie.load(ddim)
    # a given process is used as it is: no resolution-dependent shift
    fixed = reverie.load(folders / "flux", process=reverie.RectifiedFlow(1e-3, shift=2.0))
    assert not fixed.dynamic and fixed.shift_at(64, 64) == 2.0

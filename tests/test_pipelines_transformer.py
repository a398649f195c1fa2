"""PixArt-alpha/sigma and DiT folders load through reverie.load and sample exactly like diffusers
(tiny random pipelines built from configs, saved as safetensors)."""

from __future__ import annotations

import json
import shutil

import diffusers  # noqa: E402 -- a dev dependency: a missing install fails, not skips
import numpy as np
import pytest
import torch
import transformers

import reverie
from reverie.pipelines import DiT, PixArt

PROMPT = " The Red thing on a blue table "  # diffusers lower-cases and strips it
NEGATIVE = "a cat"
ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish", "207": "golden retriever"}


def tiny_t5_tokenizer() -> transformers.T5Tokenizer:
    """A T5 (unigram) tokenizer from a written vocabulary: pad, eos, unk, the word marker,
    the letters and a few whole words."""
    words = ["▁" + w for w in "the red thing on a blue table cat".split()]
    pieces = ["<pad>", "</s>", "<unk>", "▁", *"abcdefghijklmnopqrstuvwxyz", *words]
    vocab = [(piece, -1.0 - 0.01 * i) for i, piece in enumerate(pieces)]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_vae(blocks: int = 2) -> diffusers.AutoencoderKL:
    """A random AutoencoderKL with 4 latent channels and spatial factor ``2 ** (blocks - 1)``
    (one block: no mid-block attention, which would span all 128x128 latents)."""
    return diffusers.AutoencoderKL(mid_block_add_attention=blocks > 1,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=(8, 16)[:blocks], layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16, scaling_factor=0.18215,
    ).eval()


def tiny_pixart(folder, kind: str = "PixArtAlphaPipeline", sample_size: int = 8,
                patch_size: int = 2, seed: int = 0) -> None:
    """A random PixArt pipeline (learned variance, T5 with 2 layers) saved as safetensors;
    ``sample_size=128`` makes a transformer with size micro-conditions (PixArt-alpha 1024)."""
    torch.manual_seed(seed)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=patch_size, attention_head_dim=12,
        num_attention_heads=2, caption_channels=32, in_channels=4, out_channels=8,  # inner 24:
        cross_attention_dim=24, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6,  # (size micro-conditions take a third of the inner width each)
    ).eval()
    tokenizer = tiny_t5_tokenizer()
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )).eval()
    pipe = getattr(diffusers, kind)(
        tokenizer=tokenizer, text_encoder=t5, transformer=transformer,
        vae=tiny_vae(1 if sample_size > 16 else 2),  # 128 latents: a factor-1 VAE
        scheduler=diffusers.DPMSolverMultistepScheduler(beta_schedule="linear"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def tiny_dit(folder, seed: int = 0) -> None:
    """A random DiT pipeline (learned variance, 1000 classes + the null class) with an
    ``id2label`` table in model_index.json, as hub DiT folders have."""
    torch.manual_seed(seed)
    transformer = diffusers.DiTTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        in_channels=4, out_channels=8, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    ).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=tiny_vae(),
                                 scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": ID2LABEL}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformer-pipes")
    tiny_pixart(root / "alpha")
    tiny_pixart(root / "sigma", "PixArtSigmaPipeline", seed=1)
    tiny_pixart(root / "alpha1024", sample_size=128, patch_size=16, seed=2)
    tiny_dit(root / "dit")
    return root


def _grid(scheduler) -> torch.Tensor:
    """diffusers' timesteps then the clean end, as reverie process times."""
    return torch.cat([scheduler.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])


def _err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _diffusers(folder):
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# PixArt
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha", "sigma", "alpha1024"])
def test_pixart_matches_diffusers(folders, name):
    """reverie's DPM++(2M) on diffusers' timesteps, from the same latents, with CFG against a
    negative prompt, gives diffusers' images (alpha, sigma, alpha at 1024 with size
    micro-conditions); the siblings (15%-off guidance, the attention mask dropped, the
    learned-variance half read as the noise, other latents, no lower-casing, and for 1024 other
    size micro-conditions) do not."""
    folder, w, steps = folders / name, 4.5, 4
    pipe = _diffusers(folder)
    p = reverie.load(folder)
    assert isinstance(p, PixArt) and p.prediction == "eps" and isinstance(p.process, reverie.VP)
    assert p.max_sequence_length == (300 if name == "sigma" else 120)
    c, h = p.sample_shape[0], p.sample_shape[1]
    size = h * p.vae_scale_factor
    latents = torch.randn((1, c, h, h), generator=torch.Generator().manual_seed(1))
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=w,
               latents=latents, output_type="np", use_resolution_binning=False,
               clean_caption=False).images
    grid = _grid(pipe.scheduler)

    def ours(prompt=PROMPT, **kw):
        args = dict(sampler="dpmpp_2m", grid=grid, guidance_scale=w, latents=latents,
                    output_type="np") | kw
        return p.sample(prompt, NEGATIVE, **args)

    out = ours()
    assert out.shape == ref.shape == (1, size, size, 3)
    assert _err(out, ref) < 1e-4, _err(out, ref)
    siblings = [ours(guidance_scale=0.85 * w), ours(prompt=PROMPT.replace("Red", "Cat"))]
    conditioning = p._conditioning
    if name == "alpha1024":  # the micro-conditions matter: another resolution
        p._conditioning = lambda *a: tuple(
            {**d, "resolution": 2 * d["resolution"]} for d in conditioning(*a))
        siblings.append(ours())
    elif name == "alpha":
        siblings.append(ours(latents=latents.flip(-1)))
        # the attention mask dropped: cross-attention sees the padding
        p._conditioning = lambda *a: tuple(
            {k: v for k, v in d.items() if k != "encoder_attention_mask"}
            for d in conditioning(*a))
        siblings.append(ours())
        p._conditioning = conditioning
        p.base_denoiser.output_transform = lambda out: out[:, c:]  # the variance half
        siblings.append(ours())
    for sibling in siblings:
        assert _err(sibling, ref) > 1e-3


def test_pixart_conditioning(folders):
    """encode_prompt: T5 states and masks padded to 120 (alpha) / 300 (sigma) tokens, the same
    as diffusers' encode_prompt; micro-conditions only for the 1024 transformer; a prompt past
    the limit is truncated with a warning."""
    for name, length in [("alpha", 120), ("sigma", 300)]:
        p, pipe = reverie.load(folders / name), _diffusers(folders / name)
        cond, neg = p.encode_prompt([PROMPT, "a red table"], NEGATIVE)
        assert set(cond) == set(neg) == {"encoder_hidden_states", "encoder_attention_mask"}
        assert cond["encoder_hidden_states"].shape == (2, length, 32)
        with torch.no_grad():
            emb, mask, nemb, nmask = pipe.encode_prompt([PROMPT, "a red table"],
                                                        negative_prompt=NEGATIVE)
        assert torch.equal(cond["encoder_attention_mask"], mask)
        assert torch.equal(neg["encoder_attention_mask"], nmask)
        assert int(mask[0].sum()) == 8 and int(nmask[0].sum()) == 3  # tokens + </s>
        assert _err(cond["encoder_hidden_states"], emb) < 1e-6
        assert _err(neg["encoder_hidden_states"], nemb) < 1e-6
    big = reverie.load(folders / "alpha1024")
    cond, neg = big.encode_prompt(PROMPT, height=128, width=64)
    assert cond["resolution"].tolist() == neg["resolution"].tolist() == [[128.0, 64.0]]
    assert cond["aspect_ratio"].tolist() == [[2.0]]
    with pytest.warns(UserWarning, match="truncated to 120 tokens"):
        long, _ = reverie.load(folders / "alpha").encode_prompt("the red " * 80)
    assert long["encoder_hidden_states"].shape == (1, 120, 32)


def test_scheduler_inside_pixart_pipeline(folders):
    """reverie.diffusers.Scheduler driving diffusers' PixArtAlphaPipeline equals reverie's own
    run with the same sampler and steps (another sampler or a 15%-off guidance scale does not);
    with one step the pipeline reads step(...)[1], which is the data prediction."""
    folder = folders / "alpha"
    pipe, p = _diffusers(folder), reverie.load(folder)
    config = pipe.scheduler.config
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))

    def theirs(sampler, steps, w=3.0):
        pipe.scheduler = reverie.diffusers.Scheduler(sampler, config=config)
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                    guidance_scale=w, latents=latents, output_type="latent",
                    use_resolution_binning=False, clean_caption=False).images

    def ours(sampler, steps):
        return p.sample(PROMPT, NEGATIVE, sampler=sampler, steps=steps, guidance_scale=3.0,
                        latents=latents, output_type="latent")

    for sampler, steps in [("dpmpp_2m", 4), ("ddim", 1)]:
        ref = ours(sampler, steps)  # latents far from unit scale: a relative tolerance
        assert _err(theirs(sampler, steps), ref) < 1e-6 * float(ref.abs().max())
    ref = ours("dpmpp_2m", 4)
    for sibling in (theirs("ddim", 4), theirs("dpmpp_2m", 4, w=0.85 * 3.0)):
        assert _err(sibling, ref) > 1e-3 * float(ref.abs().max())
    # step(..., return_dict=False) is (prev_sample, pred_original_sample): x0 of the eps given
    s = reverie.diffusers.Scheduler("ddim", config=config)
    s.set_timesteps(1)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    out = s.step(eps, s.timesteps[0], x, return_dict=False)
    t = s.timesteps[0].double()
    a, sig = float(p.process.alpha(t)), float(p.process.sigma(t))
    assert isinstance(out, tuple) and len(out) == 2
    assert _err(out[1], (x - sig * eps) / a) < 1e-4


# ---------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------


def test_dit_matches_diffusers(folders):
    """reverie's DDIM on diffusers' timesteps with the same initial latents and CFG against the
    null class gives DiTPipeline's images; labels may be ids or id2label words. The siblings
    (a wrong null class, 15%-off guidance, the variance half, other labels) do not."""
    folder, w, steps = folders / "dit", 4.0, 4
    pipe = _diffusers(folder)
    ref = pipe([207, 1], guidance_scale=w, num_inference_steps=steps, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    grid = _grid(pipe.scheduler)
    p = reverie.load(folder)
    assert isinstance(p, DiT) and p.null_class == 1000 and p.labels["tench"] == 0
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # DiT's

    def ours(labels=("golden retriever", 1), **kw):
        args = dict(sampler="ddim", grid=grid, guidance_scale=w, latents=latents,
                    output_type="np") | kw
        return p.sample(class_labels=list(labels), **args)

    out = ours()
    assert out.shape == ref.shape == (2, 16, 16, 3)
    assert _err(out, ref) < 1e-4, _err(out, ref)
    assert _err(ours(labels=["207", "goldfish"], n=1), ref) < 1e-4
    siblings = [ours(guidance_scale=0.85 * w), ours(labels=[207, 0])]
    p.null_class = 999
    siblings.append(ours())
    p.null_class = 1000
    p.base_denoiser.output_transform = lambda out: out[:, 4:]
    siblings.append(ours())
    for sibling in siblings:
        assert _err(sibling, ref) > 1e-3


def test_scheduler_inside_dit_pipeline(folders):
    """DiTPipeline driven by reverie.diffusers.Scheduler (cond-first CFG batch, both halves
    stepped) equals reverie's own run from the same generator; another sampler does not."""
    folder = folders / "dit"
    pipe, p = _diffusers(folder), reverie.load(folder)
    config = pipe.scheduler.config

    def theirs(sampler):
        pipe.scheduler = reverie.diffusers.Scheduler(sampler, config=config)
        return pipe([207, 0], num_inference_steps=5, output_type="np",
                    generator=torch.Generator().manual_seed(4)).images

    ours = p.sample([207, 0], sampler="ipndm", steps=5, output_type="np",
                    generator=torch.Generator().manual_seed(4))
    assert _err(theirs("ipndm"), ours) < 1e-4
    assert _err(theirs("ddim"), ours) > 1e-3
    cond, neg = p.encode_prompt(["tench", 1])
    assert cond["class_labels"].tolist() == [0, 1] and neg["class_labels"].tolist() == [1000] * 2
    assert p.encode_prompt([3, 4], 5)[1]["class_labels"].tolist() == [5, 5]


# ---------------------------------------------------------------------------------------------
# Half precision, bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha", "dit"])
def test_bfloat16_model_under_float32_state(folders, name):
    """bfloat16 networks (transformer, VAE, T5) under a float32 state: finite images close to
    float32's."""
    args = [[PROMPT, "a red table"] if name == "alpha" else [207, 1]]
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ref = reverie.load(folders / name).sample(*args, steps=4, latents=latents, output_type="np")
    p = reverie.load(folders / name, dtype=torch.bfloat16)
    assert p.transformer.dtype == p.vae.dtype == torch.bfloat16
    out = p.sample(*args, steps=4, latents=latents, output_type="np")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < _err(out, ref) < 0.05, _err(out, ref)


def test_float16_t5_keeps_float32_output_layers(folders):
    """A float16 load keeps T5's feed-forward output layers (``wo``) in float32, as diffusers'
    loader does (T5 overflows float16 there), and encodes finite states."""
    p = reverie.load(folders / "alpha", dtype=torch.float16)
    wo = {n: w.dtype for n, w in p.text_encoder.named_parameters() if n.endswith("wo.weight")}
    assert wo and set(wo.values()) == {torch.float32}
    assert p.transformer.dtype == p.text_encoder.dtype == torch.float16
    cond, _ = p.encode_prompt(PROMPT)
    assert bool(torch.isfinite(cond["encoder_hidden_states"]).all())


def test_bad_input(folders, tmp_path):
    dit, pixart = reverie.load(folders / "dit"), reverie.load(folders / "alpha")
    with pytest.raises(ValueError, match="unknown class label 'dog'; expected one of the 4"):
        dit.sample(["dog"], steps=2)
    with pytest.raises(ValueError, match=r"ids in \[0, 1000\) or label words, got 1000"):
        dit.encode_prompt([1000])
    assert dit.label_ids(np.array([3, 207])).tolist() == [3, 207]  # numpy ints are ids too
    with pytest.raises(TypeError, match="class labels must be"):
        dit.encode_prompt([])
    with pytest.raises(ValueError, match="2 negative labels for 3 labels"):
        dit.encode_prompt([1, 2, 3], [4, 5])
    with pytest.raises(ValueError, match=r"multiples of 4 \(the VAE factor times the patch"):
        pixart.sample(PROMPT, height=18, steps=2)

    # a legacy Transformer2DModel entry loads; a missing component is named
    legacy = tmp_path / "legacy"
    shutil.copytree(folders / "dit", legacy)
    index = json.loads((legacy / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    (legacy / "model_index.json").write_text(json.dumps(index))
    config = json.loads((legacy / "transformer" / "config.json").read_text())
    (legacy / "transformer" / "config.json").write_text(
        json.dumps({**config, "_class_name": "Transformer2DModel"}))
    assert isinstance(reverie.load(legacy).transformer, diffusers.DiTTransformer2DModel)
    shutil.rmtree(legacy / "vae")
    with pytest.raises(FileNotFoundError, match="lacks the 'vae' component.*transformer, vae"):
        reverie.load(legacy)
    missing = tmp_path / "no-tokenizer"
    shutil.copytree(folders / "alpha", missing)
    shutil.rmtree(missing / "tokenizer")
    with pytest.raises(FileNotFoundError, match="lacks the 'tokenizer' component"):
        reverie.load(missing)
    # a DiT transformer in a PixArt folder
    wrong = tmp_path / "wrong"
    shutil.copytree(folders / "alpha", wrong)
    shutil.rmtree(wrong / "transformer")
    shutil.copytree(folders / "dit" / "transformer", wrong / "transformer")
    index = json.loads((wrong / "model_index.json").read_text())
    (wrong / "model_index.json").write_text(
        json.dumps({**index, "transformer": ["diffusers", "Transformer2DModel"]}))
    with pytest.raises(ValueError, match="loads as a DiTTransformer2DModel; a PixArtAlpha"):
        reverie.load(wrong)

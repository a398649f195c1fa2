"""Attention-perturbation guidance (PAG, SLG, SEG) against diffusers' pipelines and hooks."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from tests.test_pipelines import PROMPT, tiny_sd
from tests.test_pipelines_flow import tiny_sd3

import reverie
from reverie.guidance import guide
from reverie.guidance.attention import perturbation, self_attention_layers


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdpag") / "pipe"
    tiny_sd(folder)
    return folder


def diffusers_pag(folder, latents, layers, **kw):
    """diffusers' PAG images and the timesteps its scheduler used."""
    pipe = diffusers.StableDiffusionPAGPipeline.from_pretrained(folder, pag_applied_layers=layers)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=5, latents=latents, output_type="np", **kw).images
    grid = torch.cat([pipe.scheduler.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    return images, grid


@pytest.mark.parametrize("w", [1.0, 5.0])
def test_pag_matches_diffusers(sd_folder, w):
    """reverie's DPM++(2M) with guidance="pag" (mid-block self-attention, pag_scale 3, with and
    without CFG) gives diffusers' PAG images; the siblings (another layer, no perturbation, a
    15%-off pag scale) do not."""
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ref, grid = diffusers_pag(sd_folder, latents, ["mid"], guidance_scale=w, pag_scale=3.0)
    p = reverie.load(sd_folder)

    def ours(layers="mid", pag_scale=3.0, guidance="pag"):
        options = {"layers": layers, "pag_scale": pag_scale} if guidance == "pag" else {}
        return p.sample(PROMPT, sampler="dpmpp_2m", grid=grid, guidance_scale=w, latents=latents,
                        output_type="np", guidance=guidance, guidance_options=options)

    err = float(np.abs(ours() - ref).max())
    assert err < 1e-4, err
    for sibling in (ours(layers="up_blocks.0"), ours(guidance="cfg"), ours(pag_scale=3.0 * 0.85)):
        assert float(np.abs(sibling - ref).max()) > 1e-3


def test_perturbation_restores_and_rejects(sd_folder):
    """The processors come back after the context; unknown layers, kinds and a missing
    perturbation or unconditional branch are clear errors."""
    p = reverie.load(sd_folder)
    unet = p.network
    assert self_attention_layers(unet, "mid") == [
        "mid_block.attentions.0.transformer_blocks.0.attn1"]
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    perturb = perturbation(unet, "pag", ["mid", "up_blocks.0"])
    with perturb():
        changed = [k for k, v in unet.attn_processors.items() if type(v) is not before[k]]
    assert len(changed) == 3 and all("attn1" in k for k in changed)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    with pytest.raises(ValueError, match="selects no self-attention"):
        perturbation(unet, "pag", "down_blocks.0")
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        perturbation(unet, "blur")
    cond, neg = p.encode_prompt(PROMPT)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="needs perturb="):
        guide(p.denoiser(cond), "pag", 1.0)(x, 500.0)
    with pytest.raises(ValueError, match="needs uncond="):
        guide(p.denoiser(cond), "pag", 3.0, perturb=perturb)(x, 500.0)


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3slg") / "pipe"
    tiny_sd3(folder)
    return folder


def test_slg_matches_sd3_pipeline(sd3_folder):
    """reverie's Euler with guidance="slg" (block 0 skipped, scale 2.8, CFG 5, the perturbed
    term at steps 1 and 2 of 4 as diffusers' window start 0.01 / stop 0.6 selects) gives the
    latents of StableDiffusion3Pipeline(skip_guidance_layers=[0]); siblings (block 1, no
    skipping, a 15%-off slg scale, the term at every step) do not."""
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(sd3_folder)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ref = pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0, latents=z,
               output_type="latent", skip_guidance_layers=[0], skip_layer_guidance_scale=2.8,
               skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.6).images
    grid = pipe.scheduler.sigmas.double()
    window = (float(grid[2] + grid[3]) / 2, float(grid[0] + grid[1]) / 2)  # steps 1 and 2
    p = reverie.load(sd3_folder)

    def ours(layers=(0,), slg_scale=2.8, interval=window, guidance="slg"):
        options = {"layers": list(layers), "slg_scale": slg_scale,
                   "perturb_interval": interval} if guidance == "slg" else {}
        return p.sample(PROMPT, sampler="euler", grid=grid, guidance_scale=5.0, latents=z,
                        output_type="latent", guidance=guidance, guidance_options=options)

    err = float((ours() - ref).abs().max())
    assert err < 1e-4, err
    for sibling in (ours(layers=(1,)), ours(guidance="cfg"), ours(slg_scale=2.8 * 0.85),
                    ours(interval=None)):
        assert float((sibling - ref).abs().max()) > 1e-3
    with pytest.raises(TypeError, match="block indices"):
        perturbation(p.network, "slg", "mid")
    with pytest.raises(ValueError):
        perturbation(p.network, "slg", [5])


def test_seg_blur_and_perturbed_prediction_match_diffusers(sd_folder):
    """SEG's query blur equals diffusers' ``_gaussian_blur_2d`` (its blur branch at a finite
    sigma, its mean branch at infinity: diffusers 0.42 swaps which sigma takes which); the
    guided prediction with guidance="seg" equals D_u + w (D_c - D_u) + s (D_c - D_p) with D_p
    from the UNet under diffusers' SEG hook; another sigma or layer gives another D_p."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.smoothed_energy_guidance_utils import (
        SmoothedEnergyGuidanceConfig,
        _apply_smoothed_energy_guidance_hook,
        _gaussian_blur_2d,
    )

    from reverie.guidance.attention import blur_queries

    q = torch.randn(2, 16 + 3, 6, generator=torch.Generator().manual_seed(0))
    for sigma, k in ((0.7, 5), (1.0, 7), (30.0, 181)):
        ref = _gaussian_blur_2d(q.clone(), k, sigma, -1.0)  # threshold -1: its blur branch
        assert float((blur_queries(q, sigma) - ref).abs().max()) < 1e-6
    mean = _gaussian_blur_2d(q.clone(), 7, 1.0, float("inf"))  # its mean branch
    assert float((blur_queries(q, float("inf")) - mean).abs().max()) < 1e-6
    assert float((blur_queries(q, 1.0) - mean).abs().max()) > 1e-2

    p = reverie.load(sd_folder)
    cond, neg = p.encode_prompt(PROMPT)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t, sigma, w, s = torch.tensor([500.0]), 2.0, 5.0, 3.0
    config = SmoothedEnergyGuidanceConfig([0], fqn="mid_block.attentions.0.transformer_blocks")
    _apply_smoothed_energy_guidance_hook(p.network, config, 1e5 * sigma, name="ref")  # blur
    with torch.no_grad():
        d_p_big = p.denoiser(cond)(x, t)
    HookRegistry.check_if_exists_or_initialize(p.network).remove_hook("ref", recurse=True)
    with torch.no_grad():
        d_c, d_u = p.denoiser(cond)(x, t), p.denoiser(neg)(x, t)
        ref = d_u + w * (d_c - d_u) + s * (d_c - d_p_big)

        def ours(**over):
            opts = {"layers": "mid", "seg_scale": s, "blur_sigma": 1e5 * sigma, **over}
            return p.denoiser(cond, neg, w, guidance="seg", guidance_options=opts)(x, t)

        err = float((ours() - ref).abs().max())  # |ref| ~ 6: float32 rounding
        assert err < 5e-5, err
        for sibling in (ours(blur_sigma=sigma), ours(layers="up_blocks.0"),
                        ours(seg_scale=0.85 * s)):
            assert float((sibling - ref).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="blur_sigma must be > 0"):
        perturbation(p.network, "seg", "mid", blur_sigma=0.0)
    with pytest.raises(ValueError, match="blur_sigma"):
        p.denoiser(cond, neg, w, guidance="pag", guidance_options={"blur_sigma": 1.0})


def test_cli_pag_on_the_shapes_pipeline(tmp_path, capsys):
    """``reverie sample --model shapes --guidance pag --option layers=[...]`` gives the images of
    ``p.sample(..., guidance="pag", guidance_options=...)``; plain CFG gives others; PAG on a
    model without attention layers to perturb is a one-line error."""
    from reverie.cli import main

    base = ["sample", "--model", "shapes", "--prompt", "a red circle on the right", "--n", "2",
            "--steps", "4", "--quiet", "--seed", "3"]
    opts = ["--guidance", "pag", "--option", "layers=['up_blocks.0']", "--option", "pag_scale=2"]
    assert main([*base, *opts, "--out", str(tmp_path / "pag.npy")]) == 0
    p = reverie.load("shapes")
    api = p.sample("a red circle on the right", steps=4, n=2, output_type="pt",
                   generator=torch.Generator().manual_seed(3), guidance="pag",
                   guidance_options={"layers": ["up_blocks.0"], "pag_scale": 2.0})
    cli = np.load(tmp_path / "pag.npy")
    assert np.allclose(cli, api.numpy(), atol=1e-6)
    assert main([*base, "--out", str(tmp_path / "cfg.npy")]) == 0
    assert not np.allclose(np.load(tmp_path / "cfg.npy"), cli, atol=1e-3)
    capsys.readouterr()
    assert main(["sample", "--model", "digits", "--label", "3", "--guidance", "pag",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "is not one" in capsys.readouterr().err

"""reverie's classifier-free guidance methods against diffusers' guiders (``diffusers.guiders``).

Both are fed the same conditional / unconditional model outputs (random latents-shaped tensors,
a new pair at each of several steps, so stateful methods -- APG's momentum, CFG-Zero*'s
zero-init -- are compared over a walk) and must agree to rounding. diffusers' guiders act on
the model's own prediction (eps, v or flow); reverie's methods are written on the data
prediction x0 unless ``space=`` says otherwise, so each check names the space it matches in.
Each parity check has a sibling with another option value that the check must reject.

Options mapped (reverie -> diffusers): scale ``w`` -> ``guidance_scale`` (diffusers' default
formulation ``u + w (c - u)``), except APG: reverie follows the paper, ``c + (w - 1) update``,
= diffusers' ``use_original_formulation=True`` with ``guidance_scale = w - 1``; APG ``eta`` ->
``eta``, ``momentum`` -> ``adaptive_projected_guidance_momentum`` (0 -> None),
``norm_threshold`` -> ``adaptive_projected_guidance_rescale``; cfg_rescale ``rescale`` ->
``guidance_rescale``; cfg_zero_star ``zero_steps`` -> ``zero_init_steps`` (reverie counts model
calls, = steps for a one-call-per-step sampler); mambo_g ``alpha`` -> ``alpha``; fdg ``scale``,
``low_scales`` -> ``guidance_scales`` (finest level first), ``parallel`` -> ``parallel_weights``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    AutoGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    MagnitudeAwareGuidance,
    TangentialClassifierFreeGuidance,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

import reverie
from reverie.denoisers import from_x0
from reverie.guidance import guide
from reverie.guidance.cfg import from_pyramid, laplacian_pyramid

SHAPE = (2, 4, 8, 8)  # image latents [B, C, H, W]
TOL = 1e-4  # float64 here; diffusers computes some factors in float32 (TCFG: 8e-6 apart)
VP_TIMES = [900.0, 700.0, 500.0, 300.0, 100.0]  # VP training-step units
FLOW_TIMES = [0.9, 0.7, 0.5, 0.3, 0.1]


def _walk(seed: int, n: int = 5, shape: tuple[int, ...] = SHAPE) -> tuple[list, list, list]:
    """States x and conditional / unconditional model outputs for n steps (the unconditional
    one near the conditional one, as a real model's are)."""
    g = torch.Generator().manual_seed(seed)
    x, c, u = ([torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
               for _ in range(3))
    return x, c, [ci + 0.5 * ui for ci, ui in zip(c, u)]


def reverie_outputs(method, scale, walk, *, prediction="eps", **options):
    """reverie's guided prediction at each step of the walk, as the model's prediction type."""
    xs, cs, us = walk
    proc, times = (reverie.RectifiedFlow(), FLOW_TIMES) if prediction == "flow" else (
        reverie.VP.linear(), VP_TIMES)
    step = {"i": 0}
    den = reverie.Denoiser(lambda x, t: cs[step["i"]], proc, prediction)
    unc = reverie.Denoiser(lambda x, t: us[step["i"]], proc, prediction)
    guided = guide(den, method, scale, uncond=unc, **options)
    out = []
    for i, x in enumerate(xs):
        step["i"] = i
        t = torch.full((x.shape[0],), times[i], dtype=x.dtype)
        out.append(from_x0(guided(x, t), prediction, x, t, proc))
    return out


def diffusers_outputs(guider, walk, momentum=None):
    """diffusers' guider over the same walk (its step counter set as a pipeline sets it)."""
    xs, cs, us = walk
    out = []
    for i, (c, u) in enumerate(zip(cs, us)):
        guider.set_state(step=i, num_inference_steps=len(cs), timestep=torch.tensor(i))
        if i == 0 and momentum is not None:  # what AdaptiveProjectedGuidance.prepare_inputs does
            guider.momentum_buffer = MomentumBuffer(momentum)
        out.append(guider.forward(c, u).pred)
    return out


def gap(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


def test_cfg_autoguidance_and_rescale_equal_diffusers():
    """cfg = ClassifierFreeGuidance, autoguidance = AutoGuidance fed the weak prediction as its
    second (diffusers makes it by skipping layers of the same network, reverie takes any weak
    denoiser); cfg_rescale (space eps) = guidance_rescale; a scale 15% off, another rescale, or
    the rescale taken on x0, is rejected."""
    walk = _walk(0)
    ref = diffusers_outputs(ClassifierFreeGuidance(guidance_scale=5.0), walk)
    assert gap(reverie_outputs("cfg", 5.0, walk), ref) < TOL
    assert gap(reverie_outputs("cfg", 5.0 * 0.85, walk), ref) > 0.1
    auto = AutoGuidance(guidance_scale=5.0, auto_guidance_layers=[0], dropout=0.1)
    assert gap(reverie_outputs("autoguidance", 5.0, walk), diffusers_outputs(auto, walk)) < TOL
    ref = diffusers_outputs(ClassifierFreeGuidance(guidance_scale=5.0, guidance_rescale=0.7), walk)
    assert gap(reverie_outputs("cfg_rescale", 5.0, walk, rescale=0.7, space="eps"), ref) < TOL
    assert gap(reverie_outputs("cfg_rescale", 5.0, walk, rescale=0.5, space="eps"), ref) > 0.01
    assert gap(reverie_outputs("cfg_rescale", 5.0, walk, rescale=0.7, space="x0"), ref) > 0.01


@pytest.mark.parametrize("momentum", [0.0, -0.75])
def test_apg_equals_diffusers_original_formulation(momentum):
    """APG over five steps (momentum, norm cap, eta) on an x0 model (reverie's default space)
    and on an eps model with space="eps" = diffusers' use_original_formulation=True at scale
    w - 1; diffusers' default formulation (u + w update), another momentum and the x0 space on
    an eps model are rejected."""
    opts = dict(eta=0.3, momentum=momentum, norm_threshold=12.0)
    walk = _walk(1)

    def ref(scale, original=True, m=momentum):
        guider = AdaptiveProjectedGuidance(
            guidance_scale=scale, eta=0.3, adaptive_projected_guidance_rescale=12.0,
            adaptive_projected_guidance_momentum=m or None, use_original_formulation=original)
        return diffusers_outputs(guider, walk, momentum=m or None)

    assert gap(reverie_outputs("apg", 5.0, walk, prediction="x0", **opts), ref(4.0)) < TOL
    assert gap(reverie_outputs("apg", 5.0, walk, space="eps", **opts), ref(4.0)) < TOL
    assert gap(reverie_outputs("apg", 5.0, walk, space="eps", **opts), ref(5.0, False)) > 0.05
    assert gap(reverie_outputs("apg", 5.0, walk, space="eps", **opts), ref(4.0, m=-0.5)) > 0.05
    assert gap(reverie_outputs("apg", 5.0, walk, **opts), ref(4.0)) > 0.05  # x0 vs eps


def test_cfg_zero_star_equals_diffusers():
    """CFG-Zero* with zero-init on a flow model (reverie's default velocity space) and without
    on an eps model (space="eps") = ClassifierFreeZeroStarGuidance; one zero-init step more is
    rejected. Deliberate difference: zero-init gives reverie a zero *velocity* in every space
    (no motion), diffusers a zero model output (for an eps model x0 = x / alpha)."""
    walk = _walk(2)
    ref = diffusers_outputs(ClassifierFreeZeroStarGuidance(guidance_scale=4.0,
                                                           zero_init_steps=1), walk)
    assert gap(reverie_outputs("cfg_zero_star", 4.0, walk, prediction="flow",
                               zero_steps=1), ref) < TOL
    assert gap(reverie_outputs("cfg_zero_star", 4.0, walk, prediction="flow",
                               zero_steps=2), ref) > 0.1
    ref0 = diffusers_outputs(ClassifierFreeZeroStarGuidance(guidance_scale=4.0,
                                                            zero_init_steps=0), walk)
    assert gap(reverie_outputs("cfg_zero_star", 4.0, walk, space="eps"), ref0) < TOL
    assert gap(reverie_outputs("cfg_zero_star", 4.0, walk), ref0) > 0.01  # flow vs eps space
    eps_zero = reverie_outputs("cfg_zero_star", 4.0, walk, space="eps", zero_steps=1)
    assert gap(eps_zero[1:], ref[1:]) < TOL and gap(eps_zero[:1], ref[:1]) > 0.1


def test_tcfg_equals_diffusers():
    """tcfg (space eps) = TangentialClassifierFreeGuidance; plain CFG and TCFG on x0 rejected."""
    walk = _walk(3)
    ref = diffusers_outputs(TangentialClassifierFreeGuidance(guidance_scale=5.0), walk)
    assert gap(reverie_outputs("tcfg", 5.0, walk), ref) < TOL
    assert gap(reverie_outputs("cfg", 5.0, walk), ref) > 0.1
    assert gap(reverie_outputs("tcfg", 5.0, walk, space="x0"), ref) > 0.1


def test_mambo_g_equals_diffusers():
    """mambo_g on a flow model (its default space) = MagnitudeAwareGuidance; another alpha is
    rejected, and so is the method on an eps model with norms taken in the velocity space.
    Packed latents [B, N, C] (Flux / Qwen-Image style): diffusers' mambo_guidance calls
    torch.norm with three dims, which torch 2.13 refuses for [B, C, H, W]."""
    walk = _walk(4, shape=(2, 16, 8))
    ref = diffusers_outputs(MagnitudeAwareGuidance(guidance_scale=10.0, alpha=2.0), walk)
    assert gap(reverie_outputs("mambo_g", 10.0, walk, prediction="flow", alpha=2.0), ref) < TOL
    assert gap(reverie_outputs("mambo_g", 10.0, walk, prediction="flow", alpha=1.7), ref) > 0.01
    assert gap(reverie_outputs("mambo_g", 10.0, walk, alpha=2.0, space="eps"), ref) < TOL
    assert gap(reverie_outputs("mambo_g", 10.0, walk, alpha=2.0), ref) > 0.01


@pytest.fixture
def fdg_guider(monkeypatch):
    """diffusers' FrequencyDecoupledGuidance needs kornia for its Laplacian pyramid; without
    kornia it runs on reverie's pyramid (then the pyramid itself is checked against kornia in
    test_laplacian_pyramid_equals_kornia where kornia is installed)."""
    import diffusers.guiders.frequency_decoupled_guidance as fd

    if not fd._CAN_USE_KORNIA:
        from reverie.guidance.cfg import _up

        monkeypatch.setattr(fd, "_CAN_USE_KORNIA", True)
        monkeypatch.setattr(fd, "build_laplacian_pyramid_func", laplacian_pyramid)
        monkeypatch.setattr(fd, "upsample_and_blur_func", _up)
    return fd.FrequencyDecoupledGuidance


def test_fdg_equals_diffusers(fdg_guider):
    """fdg = FrequencyDecoupledGuidance with 2 and 3 levels; without parallel weights it is
    affine, so any space matches diffusers' eps; with parallel weights space="eps" does and x0
    does not; swapped level scales are rejected."""
    walk = _walk(5)
    ref = diffusers_outputs(fdg_guider(guidance_scales=[10.0, 5.0]), walk)
    assert gap(reverie_outputs("fdg", 10.0, walk, low_scales=5.0), ref) < TOL
    assert gap(reverie_outputs("fdg", 5.0, walk, low_scales=10.0), ref) > 0.1
    ref = diffusers_outputs(fdg_guider(guidance_scales=[8.0, 4.0, 2.0],
                                       parallel_weights=[0.5, 0.8, 1.0]), walk)
    opts = dict(low_scales=(4.0, 2.0), parallel=(0.5, 0.8, 1.0))
    assert gap(reverie_outputs("fdg", 8.0, walk, space="eps", **opts), ref) < TOL
    assert gap(reverie_outputs("fdg", 8.0, walk, **opts), ref) > 0.01
    # scale 1 is not the conditional model when the coarser level has its own scale (diffusers
    # itself fails on a level at scale 1: it appends an unbound pred_cond_freq)
    near = reverie_outputs("fdg", 1.0 + 1e-9, walk, low_scales=3.0)
    assert gap(reverie_outputs("fdg", 1.0, walk, low_scales=3.0), near) < TOL
    assert gap(reverie_outputs("cfg", 1.0, walk), near) > 0.1


def test_fdg_samples_images_and_refuses_points():
    """fdg runs under a sampler on latents [B, 4, 8, 8] (finite, and not CFG's samples); on
    points [B, 2] it is a one-line error naming the shapes it takes."""
    proc = reverie.VP.linear()
    net = reverie.Denoiser(lambda x, t, label: 0.1 * x + label.view(-1, *[1] * (x.ndim - 1)),
                           proc)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cond, null = {"label": torch.ones(SHAPE[0])}, {"label": torch.zeros(1)}
    x = reverie.sample(guide(net, "fdg", 4.0, uncond=null, low_scales=1.5), noise, steps=5,
                       cond=cond)
    plain = reverie.sample(guide(net, "cfg", 4.0, uncond=null), noise, steps=5, cond=cond)
    assert bool(torch.isfinite(x).all()) and float((x - plain).abs().max()) > 0.01
    with pytest.raises(ValueError, match=r"images \[B, C, H, W\]"):
        guide(net, "fdg", 4.0, uncond=null)(torch.zeros(3, 2), 500.0, label=torch.ones(3))


def test_laplacian_pyramid_equals_kornia():
    """reverie's pyramid inverts exactly and equals kornia's (measured: 0.0 difference with
    kornia 0.9.0 at 8x8 and 16x16; kornia pads sides that are not powers of two, reverie
    needs only sides divisible by 2^(levels-1))."""
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for levels in (2, 3, 4):
        pyr = laplacian_pyramid(x, levels)
        assert [p.shape[-1] for p in pyr] == [16 // 2**k for k in range(levels)]
        assert float((from_pyramid(pyr) - x).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="multiples of 4"):
        laplacian_pyramid(torch.zeros(1, 4, 10, 10), 3)
    kornia = pytest.importorskip("kornia")
    for levels in (2, 3):
        ref = kornia.geometry.transform.build_laplacian_pyramid(x, levels)
        assert max(float((p - q).abs().max()) for p, q in zip(laplacian_pyramid(x, levels),
                                                               ref)) < 1e-12

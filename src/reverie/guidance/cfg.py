"""The classifier-free family: each method combines the conditional prediction ``D_c`` and the
unconditional (or weak) one ``D_u`` at scale ``w``; ``w = 1`` is the conditional model.

Combinations on the data prediction equal the same combination of eps / v / velocity
predictions (all affine in ``x0`` at fixed ``x, t``); methods that are not affine (rescale,
projections, optimised scales) work in the space their paper defines them in, chosen with
``space``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from reverie.guidance import Call, register

__all__ = ["cfg", "cfg_rescale", "apg", "cfg_zero_star", "cfg_pp", "autoguidance", "tcfg",
           "mambo_g", "fdg", "laplacian_pyramid", "from_pyramid"]

SPACES = ("x0", "eps", "v", "flow")


def _dims(x: Tensor) -> list[int]:
    return list(range(1, x.ndim))


def _space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    return space


@register("cfg", family="cfg", needs=("uncond",), paper="Ho & Salimans 2022",
          description="classifier-free guidance: D_u + w (D_c - D_u)")
def cfg(call: Call, w: float) -> Tensor:
    d_c, d_u = call.pair()
    return d_u + w * (d_c - d_u)


@register("autoguidance", family="cfg", needs=("uncond",), weak_model=True,
          paper="Karras et al. 2024",
          description="guide with a weaker model of the same data, given as uncond=: "
          "D_weak + w (D - D_weak), both with the caller's conditioning")
def autoguidance(call: Call, w: float) -> Tensor:
    d_c, d_weak = call.pair()
    return d_weak + w * (d_c - d_weak)


@register("cfg_rescale", family="cfg", needs=("uncond",), options={"rescale": 0.7,
          "space": "eps"}, paper="Lin et al. 2024 (Common diffusion noise schedules and "
          "sample steps are flawed), sec. 3.4",
          description="CFG whose prediction is rescaled to the conditional one's standard "
          "deviation per sample, mixed with plain CFG by rescale (diffusers' guidance_rescale)")
def cfg_rescale(call: Call, w: float, rescale: float, space: str) -> Tensor:
    space = _space(space)
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    guided = d_u + w * (d_c - d_u)
    dims = _dims(guided)
    ratio = d_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return call.back(rescale * guided * ratio + (1 - rescale) * guided, space)


def _parallel(v: Tensor, d: Tensor) -> Tensor:
    """The part of ``v`` along ``d``, per sample (in float64, as APG's Algorithm 1)."""
    unit = torch.nn.functional.normalize(d.double().flatten(1), dim=1).view_as(d)
    return ((v.double() * unit).sum(dim=_dims(v), keepdim=True) * unit).to(v.dtype)


@register("apg", family="cfg", needs=("uncond",), options={"eta": 0.0, "momentum": -0.75,
          "norm_threshold": 0.0, "space": "x0"}, paper="Sadat et al. 2025 (Eliminating "
          "oversaturation and artifacts of high guidance scales), Alg. 1",
          description="adaptive projected guidance: the update D_c - D_u, averaged with "
          "(negative) momentum over the walk and capped in norm, keeps eta times its part "
          "parallel to D_c and all of its orthogonal part: D_c + (w - 1) (perp + eta par), in "
          "the data prediction (the paper's) or space= eps / v / flow (diffusers': the model's)")
def apg(call: Call, w: float, eta: float, momentum: float, norm_threshold: float,
        space: str) -> Tensor:
    space = _space(space)
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    diff = d_c - d_u
    if momentum != 0.0:  # running average over the walk's steps (reset for each walk)
        diff = diff + momentum * call.memory.get("apg_average", 0.0)
        call.memory["apg_average"] = diff
    dims = _dims(diff)
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)  # any number of dims
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    parallel = _parallel(diff, d_c)
    return call.back(d_c + (w - 1.0) * (diff - parallel + eta * parallel), space)


@register("cfg_zero_star", family="cfg", needs=("uncond",), options={"zero_steps": 0,
          "space": "flow"}, conditional_at_one=False,  # its zero-init applies at w = 1 too
          paper="Fan et al. 2025 (CFG-Zero*)",
          description="CFG with the unconditional prediction scaled by its optimal factor "
          "s* = <D_c, D_u> / |D_u|^2 (per sample, in the velocity space by default): "
          "s* D_u + w (D_c - s* D_u); zero_steps: the first model calls return a zero "
          "velocity (zero-init)")
def cfg_zero_star(call: Call, w: float, zero_steps: int, space: str) -> Tensor:
    space = _space(space)
    calls = call.memory.get("zero_calls", 0)
    call.memory["zero_calls"] = calls + 1
    if calls < zero_steps:  # zero-init: no motion at the first calls
        return call.back(torch.zeros_like(call.x), "flow")
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    dims = _dims(d_c)
    s = (d_c * d_u).sum(dim=dims, keepdim=True) / (d_u * d_u).sum(dim=dims, keepdim=True)
    return call.back(s * d_u + w * (d_c - s * d_u), space)


def _cfg_pp_hook(guided):
    """After a DDIM step from ``t`` to ``t'`` taken with the guided ``x0_w`` (whose implied
    noise is ``eps_w``), renoise with the unconditional noise instead:
    ``x' += sigma' (eps_u - eps_w) = sigma' alpha (x0_w - x0_u) / sigma``."""

    def hook(state, schedule):
        last = guided.memory.get("cfg_pp_last")
        i = state.i - 1  # the step just taken went from grid index i to i + 1
        # the step's own call (its time was cast to the state's dtype: float32 rounds it)
        if last is None or not math.isclose(last[0], float(schedule.t[i]), rel_tol=1e-6):
            return None
        _, x0_w, x0_u = last
        a, s, s_next = schedule.alpha[i], schedule.sigma[i], schedule.sigma[i + 1]
        return replace(state, x=state.x + (s_next * a / s) * (x0_w - x0_u).to(state.x.dtype))

    return hook


@register("cfg_pp", family="cfg", needs=("uncond",), scale_range=(0.0, 1.0),
          hook=_cfg_pp_hook, samplers=("ddim",), schedulable=False,
          conditional_at_one=False,  # lambda = 1 still renoises with the unconditional noise
          paper="Chung et al. 2025 (CFG++)",
          description="CFG++: the data prediction is guided at a scale lambda in [0, 1], the "
          "update renoises with the unconditional noise (a step hook; exact for deterministic "
          "ddim)")
def cfg_pp(call: Call, w: float) -> Tensor:
    d_c, d_u = call.pair()
    guided = d_u + w * (d_c - d_u)
    call.memory["cfg_pp_last"] = (float(call.t.reshape(-1)[0]), guided, d_u)
    return guided


@register("tcfg", family="cfg", needs=("uncond",), options={"space": "eps"},
          paper="Kwon et al. 2025 (TCFG: Tangential damping classifier-free guidance), CVPR",
          description="tangential damping CFG: the unconditional prediction keeps only its part "
          "along the top right singular vector of the per-sample matrix [D_c; D_u] (its "
          "tangential part is dropped), then CFG (diffusers' TangentialClassifierFreeGuidance)")
def tcfg(call: Call, w: float, space: str) -> Tensor:
    space = _space(space)
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    rows = torch.stack([d_c, d_u], dim=1).flatten(2).double()  # [B, 2, N] per sample
    top = torch.linalg.svd(rows, full_matrices=False).Vh[:, :1]  # [B, 1, N]: top direction
    flat = d_u.flatten(1).double().unsqueeze(1)  # [B, 1, N]
    d_u = ((flat @ top.transpose(1, 2)) @ top).view_as(d_u).to(d_c.dtype)  # projected on it
    return call.back(d_u + w * (d_c - d_u), space)


@register("mambo_g", family="cfg", needs=("uncond",), options={"alpha": 8.0, "space": "flow"},
          paper="Zhu et al. 2025 (MAMBO-G: Magnitude-aware mitigation for boosted guidance)",
          description="magnitude-aware CFG: the excess scale w - 1 is damped by "
          "exp(-alpha |D_c - D_u| / |D_u|) per sample (norms in the velocity space by default; "
          "diffusers' MagnitudeAwareGuidance)")
def mambo_g(call: Call, w: float, alpha: float, space: str) -> Tensor:
    space = _space(space)
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    dims = _dims(d_c)
    diff = d_c - d_u
    ratio = torch.linalg.vector_norm(diff, dim=dims, keepdim=True) / torch.linalg.vector_norm(
        d_u, dim=dims, keepdim=True)  # the update's size relative to the prediction's
    return call.back(d_u + (1.0 + (w - 1.0) * torch.exp(-alpha * ratio)) * diff, space)


def _pyramid_kernel(x: Tensor) -> Tensor:
    """The 5x5 binomial kernel (1 4 6 4 1)^2 / 256, one per channel for a grouped conv."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device)
    return torch.outer(k, k).div(256.0).expand(x.shape[1], 1, 5, 5)


def _blur(x: Tensor) -> Tensor:
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")  # 'same' size, reflected
    return torch.nn.functional.conv2d(pad, _pyramid_kernel(x), groups=x.shape[1])


def _down(x: Tensor) -> Tensor:
    """Blur, then halve (bilinear at exact halves: the mean of each 2x2 block)."""
    return torch.nn.functional.interpolate(_blur(x), scale_factor=0.5, mode="bilinear",
                                           align_corners=False)


def _up(x: Tensor) -> Tensor:
    """Double (bilinear), then blur."""
    return _blur(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                 align_corners=False))


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """The Laplacian pyramid of images ``[B, C, H, W]``, finest level first: each level the
    Gaussian level minus the upsampled next one, the last the coarsest Gaussian level (as
    kornia's ``build_laplacian_pyramid``, reflect borders); :func:`from_pyramid` inverts it."""
    step, least = 2 ** (levels - 1), 3 * 2 ** max(levels - 2, 0)  # reflect pads need >= 3
    if x.ndim != 4 or any(n % step or n < least for n in x.shape[-2:]):
        raise ValueError(f"a {levels}-level pyramid needs images [B, C, H, W] with H and W "
                         f"multiples of {step}, at least {least}; got {tuple(x.shape)}")
    gauss = [x]
    for _ in range(levels - 1):
        gauss.append(_down(gauss[-1]))
    return [g - _up(h) for g, h in zip(gauss, gauss[1:])] + [gauss[-1]]


def from_pyramid(pyramid: list[Tensor]) -> Tensor:
    """The image a :func:`laplacian_pyramid` came from (exact up to rounding)."""
    x = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        x = _up(x) + level
    return x


@register("fdg", family="cfg", needs=("uncond",), schedulable=False,
          conditional_at_one=False,  # its coarser levels have their own scales
          options={"low_scales": None, "parallel": 1.0, "space": "x0"},
          paper="Sadat et al. 2025 (Guidance in the frequency domain enables high-fidelity "
          "sampling at low CFG scales)",
          description="frequency-decoupled guidance: CFG on each level of a Laplacian pyramid of "
          "the images [B, C, H, W], the scale for the finest level, low_scales (a number or one "
          "per coarser level; default: scale, i.e. CFG) for the coarser ones; parallel: the "
          "weight of each level's update along D_c (1: plain CFG per level; diffusers' "
          "FrequencyDecoupledGuidance)")
def fdg(call: Call, w: float, low_scales, parallel, space: str) -> Tensor:
    space = _space(space)
    low = [w] if low_scales is None else [float(v) for v in (
        low_scales if isinstance(low_scales, (list, tuple)) else [low_scales])]
    scales = [w, *low]  # finest level first
    weights = list(parallel) if isinstance(parallel, (list, tuple)) else [parallel] * len(scales)
    if len(weights) != len(scales):
        raise ValueError(f"parallel needs one weight per level ({len(scales)}), got {parallel!r}")
    d_c, d_u = (call.convert(d, space) for d in call.pair())
    levels = []
    for c, u, s, p in zip(laplacian_pyramid(d_c, len(scales)),
                          laplacian_pyramid(d_u, len(scales)), scales, weights):
        diff = c - u
        if p != 1.0:  # keep p times the update's part along this level of D_c
            diff = diff - (1.0 - p) * _parallel(diff, c)
        levels.append(u + s * diff)
    return call.back(from_pyramid(levels), space)

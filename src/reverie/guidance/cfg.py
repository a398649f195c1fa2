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

__all__ = ["cfg", "cfg_rescale", "apg", "cfg_zero_star", "cfg_pp", "autoguidance"]

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


@register("autoguidance", family="cfg", needs=("uncond",), paper="Karras et al. 2024",
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


@register("apg", family="cfg", needs=("uncond",), options={"eta": 0.0, "momentum": -0.75,
          "norm_threshold": 0.0}, paper="Sadat et al. 2025 (Eliminating oversaturation and "
          "artifacts of high guidance scales), Alg. 1",
          description="adaptive projected guidance: the update D_c - D_u, averaged with "
          "(negative) momentum over the walk and capped in norm, keeps eta times its part "
          "parallel to D_c and all of its orthogonal part: D_c + (w - 1) (perp + eta par)")
def apg(call: Call, w: float, eta: float, momentum: float, norm_threshold: float) -> Tensor:
    d_c, d_u = call.pair()
    diff = d_c - d_u
    if momentum != 0.0:  # running average over the walk's steps (reset for each walk)
        diff = diff + momentum * call.memory.get("apg_average", 0.0)
        call.memory["apg_average"] = diff
    dims = _dims(diff)
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)  # any number of dims
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    unit = torch.nn.functional.normalize(d_c.double().flatten(1), dim=1).view_as(d_c)
    parallel = ((diff.double() * unit).sum(dim=dims, keepdim=True) * unit).to(diff.dtype)
    return d_c + (w - 1.0) * (diff - parallel + eta * parallel)


@register("cfg_zero_star", family="cfg", needs=("uncond",), options={"zero_steps": 0,
          "space": "flow"}, paper="Fan et al. 2025 (CFG-Zero*)",
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
          paper="Chung et al. 2025 (CFG++)",
          description="CFG++: the data prediction is guided at a scale lambda in [0, 1], the "
          "update renoises with the unconditional noise (a step hook; exact for deterministic "
          "ddim)")
def cfg_pp(call: Call, w: float) -> Tensor:
    d_c, d_u = call.pair()
    guided = d_u + w * (d_c - d_u)
    call.memory["cfg_pp_last"] = (float(call.t.reshape(-1)[0]), guided, d_u)
    return guided

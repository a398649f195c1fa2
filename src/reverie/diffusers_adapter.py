"""Plug diffusers checkpoints into reverie: a scheduler config becomes a process, a
``UNet2DModel`` becomes a denoiser, so any pixel-space diffusers checkpoint samples with every
reverie sampler.

A diffusers scheduler config describes two things reverie keeps apart: the *noising process*
(the betas / sigmas the model was trained with, and how the model's time input is written)
and the *sampler* (the scheduler's own stepping rule). Only the first is read here:

==========================================  ===============================================
scheduler config                            reverie process, model time input
==========================================  ===============================================
DDPM family (DDPM, DDIM, PNDM, DPMSolver*,  ``VP.from_betas`` of ``beta_schedule`` (linear,
Euler*, Heun, LMS, UniPC, DEIS, KDPM2, LCM,  scaled_linear, squaredcos_cap_v2, sigmoid,
TCD, SASolver, ...)                          laplace) or ``trained_betas``, with
                                            ``rescale_betas_zero_snr``; time = the step index
                                            (``timestep_type="continuous"``: ``log(sigma)/4``)
FlowMatchEuler / FlowMatchHeun /            ``RectifiedFlow(shift=...)``; time = ``1000 t``
DPMSolver/UniPC ``use_flow_sigmas``
EDMEuler / EDMDPMSolverMultistep            ``EDM(sigma_min, sigma_max, sigma_data)`` with
                                            EDM preconditioning; time = ``log(sigma)/4``
ScoreSdeVe                                  ``VE(sigma_min, sigma_max)``; time = sigma
==========================================  ===============================================

``prediction_type`` maps ``epsilon -> eps``, ``sample -> x0``, ``v_prediction -> v``,
``flow_prediction -> flow`` (flow schedulers always predict the velocity ``eps - x0``).
Sampler-side options of a scheduler (``clip_sample``, ``thresholding``, timestep spacing,
Karras sigmas, ...) are not part of the model and are ignored: choose a reverie grid instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.nets.function import ModelFunction
from reverie.process import EDM, VE, VP, GaussianProcess, RectifiedFlow

__all__ = [
    "SchedulerSpec",
    "scheduler_spec",
    "alphas_cumprod_from_config",
    "load_unet",
    "unet_function",
    "PREDICTION_TYPES",
    "DEFAULT_SCHEDULER_CONFIG",
]

#: diffusers ``prediction_type`` -> reverie prediction.
PREDICTION_TYPES = {
    "epsilon": "eps",
    "sample": "x0",
    "v_prediction": "v",
    "flow_prediction": "flow",
}

_FLOW = {
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
}
_EDM = {"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
_VE = {"ScoreSdeVeScheduler"}

#: What a lone ``UNet2DModel`` folder without any scheduler config is assumed to use:
#: diffusers' ``DDPMScheduler()`` defaults (DDPM's linear betas, eps prediction).
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class SchedulerSpec:
    """What a scheduler config says about the model: its process, prediction type and how
    the network's time input (and EDM preconditioning) is written."""

    process: GaussianProcess
    prediction: str
    time_input: str = "process"  # see reverie.nets.function.TIME_INPUTS
    time_scale: float = 1.0
    precondition: str | None = None
    sigma_data: float = 0.5
    output_sign: float = 1.0


def _rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(alpha_bar) so the last step has
    zero SNR, keeping the first. The last value is then set to 2**-24 as diffusers does, so the
    first model time has a finite noise level."""
    s = alphas_cumprod.sqrt()
    s0, s_last = s[0].clone(), s[-1].clone()
    s = (s - s_last) * (s0 / (s0 - s_last))
    ac = s**2
    ac[-1] = 2.0**-24
    return ac


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> Tensor:
    """``alphas_cumprod`` (float64) of a DDPM-family scheduler config, as diffusers builds it."""
    n = int(config.get("num_train_timesteps", 1000))
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    trained = config.get("trained_betas")
    if trained is not None:
        process = VP.from_betas(torch.tensor(trained, dtype=torch.float64))
    elif schedule == "linear":
        process = VP.linear(n, start, end)
    elif schedule == "scaled_linear":
        process = VP.scaled_linear(n, start, end)
    elif schedule == "squaredcos_cap_v2":
        process = VP.squaredcos_cap_v2(n)
    elif schedule == "sigmoid":  # GeoDiff
        b = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (end - start) + start
        process = VP.from_betas(b)
    elif schedule == "laplace":  # diffusers' betas_for_alpha_bar(alpha_transform_type="laplace")

        def abar(u: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * abs(0.5 - u) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

        b = [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]
        process = VP.from_betas(torch.tensor(b, dtype=torch.float64))
    else:
        raise ValueError(
            f"unknown beta_schedule {schedule!r}; expected linear, scaled_linear, "
            "squaredcos_cap_v2, sigmoid, laplace or trained_betas"
        )
    ac = process.alphas_cumprod.clone()
    if config.get("rescale_betas_zero_snr", False):
        ac = _rescale_zero_terminal_snr(ac)
    return ac


def _prediction(config: Mapping[str, Any], default: str = "epsilon") -> str:
    ptype = config.get("prediction_type") or default
    if ptype not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {ptype!r} in the scheduler config; expected one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return PREDICTION_TYPES[ptype]


def guess_scheduler_class(config: Mapping[str, Any]) -> str:
    """The scheduler family of a config without ``_class_name`` (a live ``scheduler.config``:
    diffusers adds the name only on saving), from the keys each family's config always has."""
    if "beta_schedule" in config or "trained_betas" in config:
        return "DDPMScheduler"
    if "sigma_data" in config:
        return "EDMEulerScheduler"
    if "shift" in config or "use_dynamic_shifting" in config:
        return "FlowMatchEulerDiscreteScheduler"
    if "snr" in config and "sigma_max" in config:
        return "ScoreSdeVeScheduler"
    return ""


def scheduler_spec(config: Mapping[str, Any]) -> SchedulerSpec:
    """Turn a diffusers scheduler config (a dict, e.g. ``scheduler_config.json``) into the
    process, prediction type and time input of the model it belongs to (table above)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a scheduler config must be a mapping, got {type(config).__name__}")
    name = str(config.get("_class_name", "") or guess_scheduler_class(config))
    n_train = float(config.get("num_train_timesteps", 1000))
    if (
        name in _FLOW
        or config.get("use_flow_sigmas")
        or config.get("prediction_type") == "flow_prediction"
    ):
        if config.get("use_dynamic_shifting"):
            raise ValueError(
                "this flow scheduler uses resolution-dependent (dynamic) shifting; pass "
                "process=reverie.RectifiedFlow(shift=...) with the shift for your resolution"
            )
        shift = float(config.get("shift", config.get("flow_shift", 1.0)) or 1.0)
        return SchedulerSpec(
            RectifiedFlow(t_min=1.0 / n_train, shift=shift),
            "flow",
            time_input="scaled",
            time_scale=n_train,
        )
    if name in _EDM:
        sd = float(config.get("sigma_data", 0.5))
        process = EDM(
            float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0)), sd
        )
        ptype = config.get("prediction_type", "epsilon")
        if ptype not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"EDM schedulers take prediction_type epsilon or v_prediction, got {ptype!r}"
            )
        return SchedulerSpec(
            process,
            "x0",
            time_input="c_noise",
            precondition="edm",
            sigma_data=sd,
            output_sign=1.0 if ptype == "epsilon" else -1.0,
        )
    if name in _VE:
        process = VE(float(config.get("sigma_min", 0.01)), float(config.get("sigma_max", 1348.0)))
        return SchedulerSpec(process, "score", time_input="process")
    if (
        "beta_schedule" not in config
        and "trained_betas" not in config
        and name not in ("", "DDPMScheduler")
    ):
        raise ValueError(
            f"unsupported scheduler {name!r}: reverie reads DDPM-family (beta) schedulers, flow "
            "matching, EDM and ScoreSdeVe configs; pass process=... and prediction=... to load()"
        )
    process = VP(alphas_cumprod_from_config(config))
    prediction = _prediction(config)
    if config.get("timestep_type") == "continuous":  # EulerDiscrete: the model takes log(sigma)/4
        return SchedulerSpec(process, prediction, time_input="c_noise")
    return SchedulerSpec(process, prediction)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def load_unet(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """A diffusers ``UNet2DModel`` from a folder with ``config.json`` and weights.

    A single ``diffusion_pytorch_model.safetensors`` is read directly (strictly: every tensor
    must match the config); other layouts go through ``UNet2DModel.from_pretrained``.
    Errors say which file is missing, unreadable or does not match.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = _read_json(cfg_path)
    cls_name = config.get("_class_name")
    if cls_name != "UNet2DModel":
        raise ValueError(
            f"{cfg_path} describes a {cls_name!r}; a lone model folder must be a pixel-space "
            "UNet2DModel (load a text-conditioned UNet through its whole "
            "StableDiffusionPipeline folder)"
        )
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading diffusers checkpoints needs diffusers (pip install diffusers)"
        ) from err
    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        try:
            unet = UNet2DModel.from_config(config)
        except Exception as err:
            raise ValueError(f"invalid UNet2DModel config {cfg_path}: {err}") from err
        state = _read_safetensors(weights)
        _load_state_strict(unet, state, weights, cfg_path)
    else:
        others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        if not others:
            raise FileNotFoundError(
                f"no weights in {folder}: expected diffusion_pytorch_model.safetensors"
            )
        try:
            unet = UNet2DModel.from_pretrained(folder)
        except Exception as err:
            raise ValueError(f"could not load the UNet2DModel in {folder}: {err}") from err
    unet.eval().requires_grad_(False)
    if dtype is not None:  # nn.Module.to: a UNet2DModel keeps no module in float32, so
        unet = nn.Module.to(unet, dtype)  # diffusers' warning about such modules is moot
    return unet


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise ValueError(
            f"could not read the weights file {path}: corrupt or not safetensors ({err})"
        ) from None


def _load_state_strict(
    net: nn.Module, state: Mapping[str, Tensor], weights: Path, config: Path
) -> None:
    """``load_state_dict(strict=True)`` with a short error naming both files."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: weights {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise ValueError(
            f"the weights {weights} do not match the config {config}: " + "; ".join(parts)
        )
    net.load_state_dict(state, strict=True)


def unet_function(
    unet: nn.Module, spec: SchedulerSpec, null_label: int | None = None
) -> ModelFunction:
    """The :class:`~reverie.nets.function.ModelFunction` calling ``unet`` at process times.

    Learned-variance UNets (twice the output channels) keep the first half (the mean part).
    """
    cfg = getattr(unet, "config", {})
    out_ch = cfg.get("out_channels") if hasattr(cfg, "get") else None
    in_ch = cfg.get("in_channels") if hasattr(cfg, "get") else None
    keep = in_ch if out_ch is not None and in_ch is not None and out_ch == 2 * in_ch else None
    return ModelFunction(
        unet,
        spec.process,
        time_input=spec.time_input,
        time_scale=spec.time_scale,
        precondition=spec.precondition,
        sigma_data=spec.sigma_data,
        output_sign=spec.output_sign,
        null_label=null_label,
        out_channels=keep,
    )


def find_pipeline_parts(folder: Path) -> tuple[Path, dict[str, Any]]:
    """``(unet folder, scheduler config)`` of a ``DiffusionPipeline`` folder."""
    index = _read_json(folder / "model_index.json")
    unet_key = None
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if key in ("vae", "vqvae", "text_encoder", "transformer") and value[1] is not None:
            raise ValueError(
                f"{folder} is a {index.get('_class_name', 'pipeline')} with a {key!r}: reverie "
                "loads pixel-space pipelines whose denoiser is a UNet2DModel"
            )
        if value[1] == "UNet2DModel":
            unet_key = key
        elif value[1] == "UNet2DConditionModel":
            raise ValueError(
                f"{folder} holds a UNet2DConditionModel (text-conditioned); reverie loads "
                "UNet2DModel pipelines"
            )
    if unet_key is None:
        raise ValueError(f"{folder}/model_index.json names no UNet2DModel component")
    sched = folder / "scheduler" / "scheduler_config.json"
    config = _read_json(sched) if sched.is_file() else dict(DEFAULT_SCHEDULER_CONFIG)
    return folder / unet_key, config


def find_unet_scheduler(folder: Path) -> dict[str, Any]:
    """The scheduler config for a lone ``UNet2DModel`` folder: ``scheduler_config.json`` beside
    it, or ``../scheduler/scheduler_config.json`` (a pipeline's ``unet`` folder), else
    :data:`DEFAULT_SCHEDULER_CONFIG`."""
    for cand in (
        folder / "scheduler_config.json",
        folder.parent / "scheduler" / "scheduler_config.json",
    ):
        if cand.is_file():
            return _read_json(cand)
    return dict(DEFAULT_SCHEDULER_CONFIG)

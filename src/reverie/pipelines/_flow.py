"""What the flow-matching families (SD3, Flux) share: the scheduler config read as reverie's
:class:`~reverie.process.RectifiedFlow` (time ``t`` = diffusers' sigma, the network predicts
the velocity ``eps - x0``), the resolution-dependent ("dynamic") shift, and the grid diffusers'
own pipeline walks.

A ``FlowMatchEulerDiscreteScheduler`` config has either a static ``shift`` ``s`` (sigmas
``t -> s t / (1 + (s - 1) t)``) or ``use_dynamic_shifting`` with the shift ``e^mu`` (``mu`` for
``time_shift_type="linear"``), ``mu`` interpolated linearly in the number of image tokens
between ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)``
(diffusers' ``calculate_shift``). :meth:`FlowPipeline.process_at` is the flow with the shift for
an image size; ``sample`` builds named grids on it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reverie.pipelines._base import LatentPipeline
from reverie.process import GaussianProcess, RectifiedFlow

__all__ = ["FlowPipeline", "calculate_shift", "read_flow"]


def calculate_shift(
    seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float
) -> float:
    """diffusers' ``mu`` for ``seq_len`` image tokens: the line through ``(base_seq_len,
    base_shift)`` and ``(max_seq_len, max_shift)``."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (seq_len - base_seq_len)


def read_flow(
    folder: Path,
    config: dict[str, Any],
    process: GaussianProcess | None = None,
    prediction: str | None = None,
) -> dict[str, Any]:
    """The flow-matching settings of a pipeline's scheduler config as :class:`FlowPipeline`
    keywords (``process``, ``prediction``, ``dynamic``, ``time_scale``, ``scheduler_config``);
    ``process`` / ``prediction`` override the config (a given process is used as it is, never
    re-shifted)."""
    from reverie.diffusers_adapter import scheduler_spec

    # the dynamic shift depends on the image size: read the config as static here
    spec = scheduler_spec({**config, "use_dynamic_shifting": False})
    if not isinstance(spec.process, RectifiedFlow):
        raise ValueError(f"{folder}/scheduler: a {config.get('_class_name')!r} config; a "
                         "flow-matching pipeline needs a FlowMatchEulerDiscreteScheduler config")
    return {
        "process": process or spec.process,
        "prediction": prediction or spec.prediction,
        "dynamic": process is None and bool(config.get("use_dynamic_shifting")),
        "time_scale": spec.time_scale,  # num_train_timesteps: diffusers' timestep = 1000 sigma
        "scheduler_config": config,
    }


class FlowPipeline(LatentPipeline):
    """A :class:`~reverie.pipelines._base.LatentPipeline` on a flow-matching scheduler.

    ``dynamic``: the config shifts with the image size (``use_dynamic_shifting``); ``process``
    is then the flow shifted for :meth:`default_size`, and :meth:`process_at` /
    :meth:`sample` follow the size asked for.
    """

    #: diffusers' ``max_shift`` when the config has none (Flux 1.15, SD3 1.16).
    _max_shift = 1.15

    def __init__(self, *, dynamic: bool = False, time_scale: float = 1000.0, **kw: Any):
        self.dynamic, self.time_scale = bool(dynamic), float(time_scale)
        super().__init__(**kw)
        if self.dynamic:  # the shift diffusers applies at the default size
            self.process = self.base_denoiser.process = self.process_at(*self.default_size())

    def shift_at(self, height: int, width: int) -> float:
        """The shift diffusers' pipeline applies to its sigmas at ``height x width``: the
        config's static ``shift``, or ``e^mu`` with ``mu`` from the number of image tokens
        (``mu`` itself for ``time_shift_type="linear"``)."""
        if not self.dynamic:
            return float(getattr(self.process, "shift", 1.0))
        cfg = self.scheduler_config
        f = self.vae_scale_factor * self._patch
        mu = calculate_shift(
            (height // f) * (width // f),  # image tokens (patches of the latent)
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", self._max_shift),
        )
        return mu if cfg.get("time_shift_type") == "linear" else math.exp(mu)

    def process_at(self, height: int, width: int) -> GaussianProcess:
        """The flow whose named grids (``trailing``, ``uniform``, ...) are shifted as diffusers
        shifts at this size (:attr:`process` itself for a static config)."""
        if not self.dynamic:
            return self.process
        p = self.process
        return RectifiedFlow(p.t_min, p.t_max, shift=self.shift_at(height, width))

    def sample(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        sampler: Any = "dpmpp_2m",
        steps: int = 20,
        grid: str | Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        **kw: Any,
    ) -> Any:
        """:meth:`LatentPipeline.sample`; with a dynamic-shift config a named grid (or the
        sampler's default) is built on :meth:`process_at` ``(height, width)``, so the shift
        follows the image size as in diffusers. A grid tensor (sigmas ending at 0) is used as
        given, e.g. :meth:`diffusers_grid`."""
        from reverie.samplers import SAMPLERS, resolve_grid

        if self.dynamic and not isinstance(grid, Tensor):
            dh, dw = self.default_size()
            height, width = height or dh, width or dw
            self.check_size(height, width)
            info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
            grid = resolve_grid(info, self.process_at(height, width), steps, grid)
        return super().sample(prompt, negative_prompt, sampler=sampler, steps=steps, grid=grid,
                              height=height, width=width, **kw)

    def _set_timesteps_args(self, steps: int, mu: float | None) -> dict[str, Any]:
        """What diffusers' pipeline passes to ``scheduler.set_timesteps`` (SD3: the step count,
        ``mu`` only for a dynamic config)."""
        return {"num_inference_steps": steps, "mu": mu if self.dynamic else None}

    def diffusers_grid(
        self, steps: int, height: int | None = None, width: int | None = None
    ) -> Tensor:
        """The sigmas (ending at 0; float64 of diffusers' float32) that diffusers' pipeline
        walks with its ``FlowMatchEulerDiscreteScheduler`` for ``steps`` steps at this size,
        read back from that scheduler (for SD3 the twice-shifted grid of diffusers issue
        #13243). ``sample(grid=p.diffusers_grid(steps, h, w))`` reproduces the pipeline."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        dh, dw = self.default_size()
        height, width = height or dh, width or dw
        self.check_size(height, width)
        shift = self.shift_at(height, width)
        linear = self.scheduler_config.get("time_shift_type") == "linear"
        mu = shift if linear else math.log(shift)
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(**self._set_timesteps_args(steps, mu))
        return sched.sigmas.to(torch.float64)

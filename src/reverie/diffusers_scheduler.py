"""Any reverie sampler as a diffusers scheduler: ``pipe.scheduler = Scheduler(sampler, config)``.

A diffusers pipeline owns the loop: it calls ``set_timesteps``, then for each ``t`` in
``scheduler.timesteps`` runs the model on ``scale_model_input(sample, t)`` and hands the output
to ``step``. :class:`Scheduler` keeps reverie's pieces behind that contract: the process and
prediction type read from the pipeline's own scheduler config
(:func:`reverie.diffusers_adapter.scheduler_spec`), a reverie grid (the sampler's default
spacing for that process unless given), a :class:`~reverie.samplers.Schedule` and the sampler's
:class:`~reverie.samplers.State` memory between calls. Each ``step`` turns the model output into
the data prediction ``x0`` exactly as :class:`reverie.Denoiser` does and runs the sampler's
transition with a denoiser that *replays* that prediction, so the pipeline computes what
``reverie.samplers.run(sampler, denoiser, x, grid)`` computes from the same start.

Conventions: the pipeline's ``sample`` *is* reverie's ``x_t`` (``scale_model_input`` is the
identity except for EDM configs, where it is EDM's ``c_in x``); ``timesteps`` are the model's
time inputs (the training-step index on a DDPM-family VP, ``1000 t`` on flow matching, EDM's
``log(sigma) / 4``), float32.

Samplers with two model calls per step (``heun``, ``dpmpp_2s``) work as diffusers'
``HeunDiscreteScheduler`` does: ``timesteps`` lists every model evaluation (``order = 2``: a
step's inner point follows its start, e.g. ``[t0, t1, t1, t2, t2, ..., t_{N-1}]`` for Heun, the
log-SNR midpoints for DPM-Solver++(2S)), ``step`` is called once per model call and returns the
next point to evaluate at as ``prev_sample``. No sampler is rewritten for this: each ``step``
re-runs the sampler's transition from the step's start with a denoiser that *replays* the data
predictions the pipeline's calls gave so far and stops (:class:`_Pending`) at the first point
it has no prediction for; that point is the next model input. The same replay with a zero
model lists the evaluation times in ``set_timesteps``. Euler / Heun with churn (``s_churn >
0``) are refused: a churned step's first model call is at a freshly re-noised point, not at the
pipeline's latents (its very first input is the pipeline's own draw), and replaying such a step
would redraw its noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from reverie._checks import check_options, positive_int
from reverie._tensor import bcast, time_tensor
from reverie.denoisers import DenoiserBase, to_x0
from reverie.diffusers_adapter import SchedulerSpec, guess_scheduler_class, scheduler_spec
from reverie.grids import GRIDS, _shift, check_grid
from reverie.process import GaussianProcess, RectifiedFlow
from reverie.samplers import SAMPLERS, Sampler, Schedule, State, resolve_grid

# SchedulerMixin is re-exported: diffusers looks a saved component's base classes up by name
# in the module that defines it (DiffusionPipeline.from_pretrained)
__all__ = ["Scheduler", "SchedulerOutput", "ONE_CALL_SAMPLERS", "SchedulerMixin"]

#: The samplers with one model call per step (all registered samplers work in a pipeline; the
#: others take ``order`` entries of ``timesteps`` per step).
ONE_CALL_SAMPLERS = tuple(n for n, s in SAMPLERS.items() if s.nfe_per_step == 1)


@dataclass
class SchedulerOutput(BaseOutput):
    """``step``'s result: the next sample and the data prediction made at this step."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class _Pending(Exception):
    """Raised by :class:`_Replay` at the first model call it has no prediction for: the point
    ``(x, t)`` the pipeline must evaluate next."""

    def __init__(self, x: Tensor, t: float):
        super().__init__(t)
        self.x, self.t = x, t


class _Replay(DenoiserBase):
    """A denoiser that answers a step's model calls, in order, with the data predictions
    ``calls = [(t, x0), ...]`` the pipeline's calls gave, and raises :class:`_Pending` at the
    first call beyond them."""

    def __init__(self, process: GaussianProcess, calls: list[tuple[float, Tensor]]):
        self.process, self.calls, self.n = process, calls, 0

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t0 = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        if self.n == len(self.calls):
            raise _Pending(x, t0)
        t_made, x0 = self.calls[self.n]
        if t0 != t_made:  # a step that is not a function of its start (never for a registered
            raise RuntimeError(  # sampler without churn)
                f"the sampler's model call {self.n + 1} of this step is at t = {t0:.6g}, the "
                f"pipeline's was at t = {t_made:.6g}"
            )
        self.n += 1
        return x0


def _source_config(config: Any) -> dict[str, Any]:
    """The scheduler config as a dict with its ``_class_name``, which ``scheduler_spec`` reads
    to tell flow matching and EDM from the DDPM family. A live ``scheduler.config`` has no
    ``_class_name`` (diffusers adds it only on saving), so it is taken from a scheduler object,
    from ``process_class`` (a config saved by :class:`Scheduler`), or from the config's keys."""
    if isinstance(config, SchedulerMixin) and not isinstance(config, Scheduler):
        return {**dict(config.config), "_class_name": type(config).__name__}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a scheduler config (pipe.scheduler.config), got "
            f"{type(config).__name__}"
        )
    source = dict(config)
    name = source.pop("process_class", None) or source.get("_class_name")
    source["_class_name"] = name or guess_scheduler_class(source)
    for key in ("sampler", "steps", "grid", "sampler_options"):  # this class's own keys
        source.pop(key, None)
    return source


class Scheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that steps with a reverie sampler.

    ``Scheduler(sampler="ipndm", config=pipe.scheduler.config, steps=None, grid=None,
    **options)``: ``config`` is the pipeline's scheduler config (it says the noising process
    and prediction type, e.g. a DDPM-family config with any beta schedule and
    ``prediction_type``, flow matching with a static or dynamic shift, or EDM); ``grid`` is a name
    from :data:`reverie.GRIDS` (default: the sampler's own spacing on that process) or a
    decreasing sequence of model timesteps in the pipeline's units (the clean end is appended);
    ``steps`` is used when ``set_timesteps`` gets no step count; ``options`` go to the sampler
    (e.g. ``eta`` for DDIM). Then ``pipe.scheduler = Scheduler(...)`` and call the pipeline as
    usual; a stochastic sampler draws from the ``generator`` the pipeline passes to ``step``.
    Two-call samplers (``heun``, ``dpmpp_2s``) have ``order = 2``: ``timesteps`` holds
    ``2 N - 1`` model calls for ``N`` steps (module docstring); ``s_churn > 0`` is refused.
    """

    config_name = "scheduler_config.json"
    order = 1  # entries of `timesteps` per step (the sampler's model calls per step)

    def __init__(
        self,
        sampler: str = "ipndm",
        config: Mapping[str, Any] | SchedulerMixin | None = None,
        steps: int | None = None,
        grid: str | Tensor | list[float] | None = None,
        **options: Any,
    ):
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
        info: Sampler = SAMPLERS[sampler]
        check_options("sampler", sampler, options, info.options)
        if float(options.get("s_churn", 0.0)) != 0.0:
            raise ValueError(
                "s_churn > 0 starts each step at a freshly re-noised point, which a diffusers "
                "pipeline cannot hand to its model (its first input is its own latents); use "
                "s_churn=0 or a stochastic sampler (ddpm, dpmpp_2m_sde, euler_maruyama, ...)"
            )
        if info.stochastic and info.nfe_per_step > 1:  # replaying its step would redraw noise
            raise ValueError(f"sampler {sampler!r} is stochastic with two model calls per step")
        if config is None:
            raise ValueError("pass config=pipe.scheduler.config (the pipeline's scheduler config)")
        source = _source_config(config)
        # a flow config with dynamic (resolution-dependent) shifting: the shift comes with
        # set_timesteps(mu=...) (Flux); until then the process is the unshifted flow
        self._dynamic = bool(source.get("use_dynamic_shifting"))
        static = {**source, "use_dynamic_shifting": False} if self._dynamic else source
        self.spec: SchedulerSpec = scheduler_spec(static)  # raises on unsupported configs
        if steps is not None:
            positive_int("steps", steps)
        if isinstance(grid, str) and grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; expected one of {', '.join(GRIDS)}")
        if grid is not None and not isinstance(grid, str):
            grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        self.sampler, self.info, self.steps, self.grid, self.options = (
            sampler, info, steps, grid, dict(options),
        )
        self.order = info.nfe_per_step
        # the pipeline-facing config: the source's keys (pipelines read e.g.
        # num_train_timesteps, use_dynamic_shifting) plus this scheduler's own settings
        own = {
            "process_class": source["_class_name"],
            "sampler": sampler,
            "steps": steps,
            "grid": grid.tolist() if isinstance(grid, Tensor) else grid,
            "sampler_options": {k: v for k, v in options.items() if not callable(v)},
        }
        self._internal_dict = FrozenDict({**source, **own})
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self.init_noise_sigma = 1.0
        self._schedule: Schedule | None = None
        # per entry of `timesteps`: (grid index of its step, model call within the step,
        # process time)
        self._plan: list[tuple[int, int, float]] = []
        self._begin_index: int | None = None
        self._reset()

    # -- construction from a config -----------------------------------------------------------

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):  # type: ignore[override]
        """``Scheduler.from_config(pipe.scheduler.config, sampler="unipc")`` (diffusers' swap
        idiom); a config saved by this class restores its sampler, steps, grid and options."""
        cfg = dict(config or {})
        sampler = kwargs.pop("sampler", cfg.get("sampler") or "ipndm")
        # saved options belong to the saved sampler; keyword options override them
        saved = (cfg.get("sampler_options") or {}) if sampler == cfg.get("sampler") else {}
        opts = {**saved, **kwargs.pop("sampler_options", {})}
        steps, grid = kwargs.pop("steps", cfg.get("steps")), kwargs.pop("grid", cfg.get("grid"))
        sched = cls(sampler=sampler, config=cfg, steps=steps, grid=grid, **{**opts, **kwargs})
        return (sched, {}) if return_unused_kwargs else sched

    # -- time conversions ---------------------------------------------------------------------

    @property
    def process(self) -> GaussianProcess:
        return self.spec.process

    def _model_time(self, t: Tensor) -> Tensor:
        """Process times -> the model's time input, as reverie's ``Denoiser`` over a
        ``ModelFunction`` computes it for a float32 state (``t`` rounded to float32 first)."""
        t64 = t.to(torch.float32).to(torch.float64)
        if self.spec.time_input == "process":
            out = t64
        elif self.spec.time_input == "scaled":
            out = self.spec.time_scale * t64
        else:  # EDM's c_noise = log(sigma) / 4
            out = 0.25 * torch.log(self.process.sigma_ve(t64))
        return out.to(torch.float32)

    def _process_time(self, timesteps: Tensor) -> Tensor:
        """The model's time input -> process times (inverse of :meth:`_model_time`)."""
        ts = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
        if self.spec.time_input == "process":
            return ts
        if self.spec.time_input == "scaled":
            return ts / self.spec.time_scale
        return self.process.t_from_sigma_ve(torch.exp(4 * ts))

    # -- the scheduler contract ---------------------------------------------------------------

    def _reset(self) -> None:
        self._step_index: int | None = None  # the entry of `timesteps` the next call is at
        self._memory: tuple[Tensor, ...] = ()  # the sampler's memory between steps
        self._x: Tensor | None = None  # the current step's start (float32 for half pipelines)
        self._calls: list[tuple[float, Tensor]] = []  # (t, x0) of the step's calls so far
        self._pending: Tensor | None = None  # the point the next call of the step evaluates

    def _advance(
        self, state: State, calls: list[tuple[float, Tensor]], generator: Any = None
    ) -> State | _Pending:
        """The sampler's step from ``state`` with the step's model calls so far (``calls``)
        replayed: the next state, or the next point the model must be evaluated at."""
        try:
            with torch.no_grad():
                return self.info.step(_Replay(self.process, calls), state, self._schedule,
                                      generator=generator, **self.options)
        except _Pending as pending:
            return pending

    def _evaluation_plan(self) -> list[tuple[int, int, float]]:
        """Every model call of a run, in order, as ``(step, call within the step, t)``: for a
        two-call sampler, its steps replayed with a zero model on a one-element state (the
        evaluation times depend on the grid only)."""
        if self.info.nfe_per_step == 1:  # its one call is at the step's start (no churn)
            return [(i, 0, t) for i, t in enumerate(self._schedule.t[:-1])]
        plan: list[tuple[int, int, float]] = []
        memory: tuple[Tensor, ...] = ()
        probe = torch.Generator().manual_seed(0)  # stochastic samplers: not the global RNG
        for i in range(self._schedule.steps):
            state, calls = State(torch.zeros(1, 1), i, memory), []
            while isinstance(out := self._advance(state, calls, probe), _Pending):
                if not calls and out.t != self._schedule.t[i]:
                    raise RuntimeError(f"sampler {self.sampler!r} does not start its step at "
                                       "the grid point (churn?)")
                plan.append((i, len(calls), out.t))
                calls.append((out.t, torch.zeros_like(out.x)))
            memory = out.memory
        return plan

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (img2img pipelines skip the first steps)."""
        self._begin_index = int(begin_index)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | Tensor | None = None,
        sigmas: list[float] | Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the grid: ``timesteps`` (model time inputs, decreasing) if given, else the
        constructor's grid, with ``num_inference_steps`` (or the constructor's ``steps``).

        Flow-matching configs also take diffusers' FlowMatch arguments: ``mu`` (required with
        ``use_dynamic_shifting``: the shift is ``e^mu``, or ``mu`` for
        ``time_shift_type="linear"``) and ``sigmas`` (unshifted, without the final 0, as Flux
        passes them; they are shifted like diffusers does)."""
        if self._dynamic:
            if mu is None:
                raise ValueError(
                    "this flow config uses dynamic shifting (use_dynamic_shifting=True); pass "
                    "mu= to set_timesteps, as Flux and SD3 pipelines do"
                )
            linear = self.config.get("time_shift_type", "exponential") == "linear"
            shift = float(mu) if linear else math.exp(float(mu))
            n_train = float(self.config.get("num_train_timesteps", 1000))
            self.spec = replace(self.spec, process=RectifiedFlow(1.0 / n_train, shift=shift))
        elif mu is not None:
            raise ValueError("mu= is for flow configs with use_dynamic_shifting=True")
        grid = self.grid if timesteps is None else torch.as_tensor(timesteps).flatten()
        t: Tensor | None = None  # the grid's process times, without the clean end
        if sigmas is not None:
            if not isinstance(self.process, RectifiedFlow) or timesteps is not None:
                raise ValueError(
                    "sigmas= is taken for flow-matching configs only (and not with timesteps=)"
                )
            t = _shift(self.process, torch.as_tensor(sigmas, dtype=torch.float64).flatten())
        elif isinstance(grid, Tensor):
            if num_inference_steps is not None and timesteps is None and (
                int(num_inference_steps) != grid.numel()
            ):
                raise ValueError(
                    f"this scheduler's grid has {grid.numel()} steps but the pipeline asked for "
                    f"{num_inference_steps}; call the pipeline with num_inference_steps="
                    f"{grid.numel()}"
                )
            t = self._process_time(grid)
            t_max = self.process.t_max  # float32 timesteps may land a rounding above t_max
            t = torch.where((t > t_max) & (t < t_max + 1e-5 * max(1.0, abs(t_max))), t_max, t)
        if t is not None:
            full = check_grid(torch.cat([t, t.new_tensor([self.process.t_clean])]), self.process)
        else:
            n = num_inference_steps if num_inference_steps is not None else self.steps
            if n is None:
                raise ValueError("set_timesteps needs num_inference_steps (or steps=... above)")
            positive_int("num_inference_steps", int(n))
            full = resolve_grid(self.info, self.process, int(n), grid)
        self._schedule = Schedule.build(self.process, full)
        self.num_inference_steps = self._schedule.steps
        self._plan = self._evaluation_plan()
        times = torch.tensor([t for _, _, t in self._plan], dtype=torch.float64)
        self.timesteps = self._model_time(times).to(device or "cpu")
        a0, s0 = self._schedule.alpha[0], self._schedule.sigma[0]
        # the std of x at the first grid point for unit-variance data (VP and flows: 1;
        # EDM: sqrt(sigma^2 + 1), as diffusers' EDM schedulers), which pipelines multiply in
        self.init_noise_sigma = math.sqrt(a0**2 + s0**2)
        self._begin_index = None
        self._reset()

    def _index(self, timestep: float | Tensor) -> int:
        """The entry of ``timesteps`` this call is at; checks it is the one the loop is at."""
        if self._schedule is None or self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if self._step_index is None:  # first call: the begin index, else look the time up
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                hits = (self.timesteps.cpu() - t).abs().argmin()
                self._step_index = int(hits)
            if self._step_index < len(self._plan) and self._plan[self._step_index][1]:
                raise ValueError(
                    f"begin index {self._step_index} is the inner model call of a step; start "
                    f"at a multiple of scheduler.order ({self.order})"
                )
        k = self._step_index
        if k >= len(self._plan):
            raise RuntimeError(
                f"step() called after the last of {len(self._plan)} timesteps; "
                "call set_timesteps again"
            )
        expected = float(self.timesteps[k])
        if abs(t - expected) > 1e-4 * max(1.0, abs(expected)):
            raise ValueError(
                f"step() got timestep {t:.6g}, expected {expected:.6g} (entry {k} of "
                "scheduler.timesteps); pass the scheduler's timesteps in order"
            )
        return k

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The model's input: ``sample`` itself, or EDM's ``c_in sample`` for EDM configs."""
        if self.spec.precondition != "edm":
            return sample
        k = self._index(timestep) if timestep is not None else (self._step_index or 0)
        sigma = bcast(self.process.sigma_ve(time_tensor(self._plan[k][2], sample).double()),
                      sample)
        return torch.rsqrt(sigma**2 + self.spec.sigma_data**2).to(sample.dtype) * sample

    def _x0(self, out: Tensor, sample: Tensor, t: float) -> Tensor:
        """The data prediction from the model output at ``(sample, t)`` (as reverie's
        ``Denoiser`` over a ``ModelFunction`` computes it)."""
        if out.ndim == sample.ndim and out.shape[1] == 2 * sample.shape[1]:
            out = out[:, : sample.shape[1]]  # learned variance: keep the mean channels
        if out.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(out.shape)}, the sample {tuple(sample.shape)}"
            )
        t = time_tensor(t, sample)
        if self.spec.precondition == "edm":  # D = c_skip x + c_out F (EDM eq. 7)
            sigma = bcast(self.process.sigma_ve(t.to(torch.float64)), sample)
            sd2 = self.spec.sigma_data**2
            c_skip = (sd2 / (sigma**2 + sd2)).to(sample.dtype)
            c_out = (self.spec.output_sign * sigma * self.spec.sigma_data
                     / torch.sqrt(sigma**2 + sd2)).to(sample.dtype)
            return c_skip * sample + c_out * out.to(sample.dtype)
        return to_x0(out.to(sample.dtype), self.spec.prediction, sample, t, self.process)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One model call's worth of the sampler from ``sample`` at ``timestep`` with the
        model's output there: ``prev_sample`` is the next step's start or, inside a two-call
        step, the point of its next model call; ``pred_original_sample`` is the data prediction
        of this call. Inside a step, the ``sample`` handed back is not read: the step goes on
        from its own (float32) copy of that point."""
        k = self._index(timestep)
        i, call, t = self._plan[k]
        if call == 0:  # a step's first call, at the pipeline's sample
            # half-precision pipelines: the step and the sampler's memory run in float32
            half = sample.dtype in (torch.float16, torch.bfloat16)
            self._x, self._calls = (sample.float() if half else sample), []
        x = self._x if call == 0 else self._pending
        x0 = self._x0(model_output, x, t)
        self._calls.append((t, x0))
        out = self._advance(State(self._x, i, self._memory), self._calls, generator)
        if isinstance(out, _Pending):  # the step's next model call
            self._pending = nxt = out.x
        else:
            self._memory, nxt = out.memory, out.x
        self._step_index = k + 1
        prev, x0 = nxt.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev, x0
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at model timesteps (one per sample or one for all)."""
        t = self._process_time(timesteps).reshape(-1).expand(original_samples.shape[0])
        a = bcast(self.process.alpha(t), original_samples).to(original_samples)
        s = bcast(self.process.sigma(t), original_samples).to(original_samples)
        return a * original_samples + s * noise

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    def __repr__(self) -> str:
        return (
            f"reverie.diffusers.Scheduler(sampler={self.sampler!r}, process={self.process!r}, "
            f"prediction={self.spec.prediction!r}, steps={self.num_inference_steps})"
        )

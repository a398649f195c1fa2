"""Per-step overhead and peak memory of reverie's text-to-image loop vs the diffusers pipeline.

One randomly initialised Stable-Diffusion-1.x-shaped pipeline folder (SD 1.x's block layout,
few channels), one prompt, the same start latents, DPM-Solver++(2M) on the timesteps of the
folder's ``DPMSolverMultistepScheduler``, CFG 7.5, the same dtype, three sides:

* ``reverie``: ``reverie.load(folder).sample(prompt, sampler="dpmpp_2m", grid=...)``;
* ``scheduler``: ``StableDiffusionPipeline.from_pretrained(folder)`` with ``pipe.scheduler =
  reverie.diffusers.Scheduler("dpmpp_2m", config=pipe.scheduler.config, grid=...)``;
* ``diffusers``: the same pipeline with its own ``DPMSolverMultistepScheduler``.

Time: one warm-up call per side, then ``repeats`` rounds, each calling every side once (the
order rotated per round); medians. Forward hooks time the UNet, the text encoder and the VAE
decoder inside each call, so ``overhead`` per step is ``(call - those forward passes) / steps``:
the loop's own cost (scheduler or sampler math, CFG combination, checks, copies, the
tokenizer and image post-processing spread over the steps). Memory: each side in a fresh
subprocess (CPU): the peak resident set during a call above the resident set just before it
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), over the whole call and over its
sampling loop (up to the VAE decoder), the median of three calls after a warm-up, with glibc's
mmap threshold pinned so that freed tensors leave the resident set (:func:`memory_child`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reverie.bench.common import format_table, machine

PROMPT = "a red circle above a blue square"
GUIDANCE = 7.5
SIDES = ("reverie", "scheduler", "diffusers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latents /8)")
    parser.add_argument("--channels", default="32,64,64,64",
                        help="UNet block widths, four of them (SD 1.x: 320,640,1280,1280)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--model", default=None,
                        help="an existing StableDiffusionPipeline folder instead of the random one "
                        "(--size and --channels then unused)")


# ---------------------------------------------------------------------------------------------
# The model folder
# ---------------------------------------------------------------------------------------------


def _tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer over printable ASCII characters (each character a token, with its
    end-of-word form; no merges)."""
    from reverie.pipelines.tokenizers import write_clip_tokenizer

    return write_clip_tokenizer(folder, [chr(c) for c in range(33, 127)])


def build_folder(folder: Path, size: int, channels: tuple[int, ...], seed: int = 0) -> None:
    """Save a random SD-1.x-shaped ``StableDiffusionPipeline`` (safetensors): SD 1.x's UNet
    block layout (three cross-attention levels and a plain one, two layers each, 8 heads) and
    four-level VAE (latents ``4 x size/8 x size/8``) with ``channels`` for the UNet widths, a
    2-layer CLIP text encoder, and SD's DPM-Solver++ scheduler config."""
    import diffusers
    import transformers

    if len(channels) != 4:
        raise ValueError(f"channels must be four UNet block widths, got {channels}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (the VAE factor), got {size}")
    torch.manual_seed(seed)
    width = 64  # text embedding width = the UNet's cross-attention width
    groups = min(8, min(channels))
    unet = diffusers.UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=channels, norm_num_groups=groups, cross_attention_dim=width,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = _tokenizer(folder.parent / f"{folder.name}-tokenizer")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1,
    ))
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="leading", steps_offset=1,
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# The three sides
# ---------------------------------------------------------------------------------------------


class _Side:
    """One side: ``call(latents) -> images [1, H, W, 3]`` and the modules whose forward passes
    count as the model (``unet``, ``text``, ``vae``)."""

    def __init__(self, call: Callable[[torch.Tensor], Any], modules: dict[str, list[Any]]):
        self.call, self.modules = call, modules


def _dpm(folder: Path) -> Any:
    """diffusers' DPM-Solver++(2M) on the folder's scheduler config."""
    import diffusers

    cls = diffusers.DPMSolverMultistepScheduler
    return cls.from_config(cls.load_config(folder, subfolder="scheduler"))


def _make_side(name: str, folder: Path, steps: int, dtype: torch.dtype) -> _Side:
    """Load ``folder`` for side ``name`` (module docstring)."""
    import diffusers

    import reverie
    from reverie.diffusers import Scheduler

    def parts(unet, text, vae) -> dict[str, list[Any]]:
        return {"unet": [unet], "text": [text], "vae": [vae.post_quant_conv, vae.decoder]}

    dpm = _dpm(folder)
    dpm.set_timesteps(steps)
    timesteps = dpm.timesteps  # diffusers' grid, which every side walks
    if name == "reverie":
        p = reverie.load(folder, dtype=dtype)
        grid = torch.cat([timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])

        def call(latents):
            return p.sample(PROMPT, sampler="dpmpp_2m", steps=steps, grid=grid, latents=latents,
                            guidance_scale=GUIDANCE, output_type="np", dtype=dtype)

        return _Side(call, parts(p.unet, p.text_encoder, p.vae))
    if name not in SIDES:
        raise ValueError(f"unknown side {name!r}; expected one of {', '.join(SIDES)}")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    # the folder's own scheduler may be another (SD 1.5 ships PNDM): DPM-Solver++ on its config
    pipe.scheduler = _dpm(folder)
    if name == "scheduler":
        pipe.scheduler = Scheduler("dpmpp_2m", config=pipe.scheduler.config, grid=timesteps)

    def call(latents):
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE,
                    latents=latents, output_type="np").images

    return _Side(call, parts(pipe.unet, pipe.text_encoder, pipe.vae))


def _latents(folder: Path, dtype: torch.dtype) -> torch.Tensor:
    """Start latents for one image at the UNet's own size."""
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    shape = (1, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


#: key prefix -> clock: wall-clock time, and this process's CPU time (all threads), which a
#: shared machine's other jobs do not inflate
CLOCKS = {"": time.perf_counter, "cpu_": time.process_time}


class _ForwardClock:
    """Seconds spent in the forward passes of a side's model parts (forward hooks), on each
    clock: ``seconds["cpu_unet"]``."""

    def __init__(self, side: _Side):
        self.parts = list(side.modules)
        self.reset()
        for part, modules in side.modules.items():
            for m in modules:
                m.register_forward_pre_hook(self._start)
                m.register_forward_hook(lambda *_, part=part: self._stop(part))

    def _start(self, *_: Any) -> None:
        self._t0 = {c: clock() for c, clock in CLOCKS.items()}

    def _stop(self, part: str) -> None:
        for c, clock in CLOCKS.items():
            self.seconds[c + part] += clock() - self._t0[c]

    def reset(self) -> None:
        self.seconds = {c + p: 0.0 for c in CLOCKS for p in self.parts}


def _timed(side: _Side, clock: _ForwardClock, latents: torch.Tensor, steps: int) -> dict:
    """One call: milliseconds per step, on each clock, in total, in each model part, and the
    rest (``overhead``)."""
    clock.reset()
    t0 = {c: f() for c, f in CLOCKS.items()}
    images = side.call(latents)
    out: dict[str, Any] = {"images": images}
    for c, f in CLOCKS.items():
        total = f() - t0[c]
        model = sum(clock.seconds[c + p] for p in clock.parts)
        out[f"{c}total_ms"] = 1e3 * total / steps
        out.update({f"{c}{p}_ms": 1e3 * clock.seconds[c + p] / steps for p in clock.parts})
        out[f"{c}overhead_ms"] = 1e3 * (total - model) / steps
    return out


def scheduler_alone(folder: Path, steps: int, rounds: int = 20) -> dict[str, Any]:
    """CPU microseconds per model call of ``set_timesteps`` + ``step`` alone (a fixed model output
    on the pipeline's latent shape), ``reverie.diffusers.Scheduler`` vs the folder's
    ``DPMSolverMultistepScheduler``, interleaved, medians: all that differs between the
    ``scheduler`` and ``diffusers`` sides, measured without the model's noise."""

    from reverie.diffusers import Scheduler

    dpm = _dpm(folder)
    dpm.set_timesteps(steps)
    ours = Scheduler("dpmpp_2m", config=dpm.config, grid=dpm.timesteps)
    x = _latents(folder, torch.float32)
    out = 0.1 * x.flip(-1)  # a stand-in model output

    def per_call(s: Any) -> float:  # CPU microseconds per model call
        t0 = time.process_time()
        s.set_timesteps(steps)
        y = x
        for t in s.timesteps:
            y = s.step(out, t, y).prev_sample
        return 1e6 * (time.process_time() - t0) / len(s.timesteps)

    times: dict[str, list[float]] = {"reverie": [], "diffusers": []}
    for _ in range(rounds):
        times["reverie"].append(per_call(ours))
        times["diffusers"].append(per_call(dpm))
    us = {k: statistics.median(v) for k, v in times.items()}
    return {"reverie_cpu_us": us["reverie"], "diffusers_cpu_us": us["diffusers"],
            "ratio": us["reverie"] / us["diffusers"]}


# ---------------------------------------------------------------------------------------------
# Memory (a subprocess per side)
# ---------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def call_peak_mib(side: _Side, latents: torch.Tensor, calls: int = 3) -> dict[str, Any]:
    """After a warm-up call (lazy initialisations are not the loop's memory), ``calls`` calls,
    each measured from a reset: the peak resident set above the resident set before the call,
    over the whole call and over its sampling loop (up to the VAE decoder's first forward), in
    MiB (medians, and the per-call values)."""
    mib = lambda kb: kb / 1024  # noqa: E731
    side.call(latents)
    loop: list[float] = []
    hook = side.modules["vae"][0].register_forward_pre_hook(
        lambda *_: loop.append(mib(_status_kb("VmHWM") - before))
    )
    peaks = []
    for _ in range(calls):
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        side.call(latents)
        peaks.append(mib(_status_kb("VmHWM") - before))
    hook.remove()
    return {"peak_mib": statistics.median(peaks), "loop_peak_mib": statistics.median(loop),
            "peak_mib_calls": peaks, "loaded_mib": mib(before)}


def memory_child(spec: str) -> None:
    """Run in a fresh process: load one side and print :func:`call_peak_mib` as JSON. glibc's
    mmap threshold is pinned at 128 KiB, so every freed tensor buffer goes back to the OS and
    the resident set follows the live tensors (with the default, adaptive threshold the same
    call's peak varied by +-10 MiB from run to run; pinned, by 0.3 MiB)."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    cfg = json.loads(spec)
    torch.set_num_threads(cfg["threads"])
    dtype = DTYPES[cfg["dtype"]]
    side = _make_side(cfg["side"], Path(cfg["folder"]), cfg["steps"], dtype)
    print(json.dumps(call_peak_mib(side, _latents(Path(cfg["folder"]), dtype))))


def _memory(side: str, folder: Path, args: argparse.Namespace) -> dict:
    spec = json.dumps({"side": side, "folder": str(folder), "steps": args.steps,
                       "threads": args.threads, "dtype": args.dtype})
    code = f"from reverie.bench.pipelines import memory_child; memory_child({spec!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"memory subprocess for {side!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def _measure(folder: Path, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Per side: the timed calls, the images of the warm-up call, and the memory."""
    dtype = DTYPES[args.dtype]
    sides = {name: _make_side(name, folder, args.steps, dtype) for name in SIDES}
    clocks = {name: _ForwardClock(side) for name, side in sides.items()}
    latents = _latents(folder, dtype)
    images = {n: _timed(s, clocks[n], latents, args.steps)["images"] for n, s in sides.items()}
    runs: dict[str, list[dict]] = {name: [] for name in SIDES}
    for r in range(args.repeats):  # interleaved, the order rotated each round
        for name in SIDES[r % 3:] + SIDES[: r % 3]:
            runs[name].append(_timed(sides[name], clocks[name], latents, args.steps))
    memory = {} if args.no_memory else {n: _memory(n, folder, args) for n in SIDES}
    return runs, images, memory


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in str(args.channels).split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else Path(tmp) / "sd"
        if not args.model:
            build_folder(folder, args.size, channels)
        runs, images, memory = _measure(folder, args)
        alone = scheduler_alone(folder, args.steps)
        latents = list(_latents(folder, torch.float32).shape)
    ref = torch.as_tensor(images["diffusers"])
    rows = {}
    for name in SIDES:
        keys = [k for k in runs[name][0] if k.endswith("_ms")]
        row = {k: statistics.median(run[k] for run in runs[name]) for k in keys}
        for key in ("overhead_ms", "cpu_overhead_ms"):
            row[f"{key}_runs"] = [run[key] for run in runs[name]]
        row["max_abs_diff_vs_diffusers"] = float((torch.as_tensor(images[name]) - ref).abs().max())
        row.update({f"memory_{k}": v for k, v in memory.get(name, {}).items()})
        rows[name] = row
    base = rows["diffusers"]
    for row in rows.values():
        for key in ("overhead", "cpu_overhead", "total", "cpu_total"):
            row[f"{key}_ratio"] = row[f"{key}_ms"] / base[f"{key}_ms"]
        if memory:
            row["memory_ratio"] = row["memory_peak_mib"] / base["memory_peak_mib"]
            row["loop_memory_ratio"] = row["memory_loop_peak_mib"] / base["memory_loop_peak_mib"]
    model = args.model or f"random SD-1.x-shaped, {args.size} px, UNet widths {channels}"
    result = {
        "config": {"model": model,
                   "latents": latents, "steps": args.steps, "repeats": args.repeats,
                   "threads": args.threads, "dtype": args.dtype, "sampler": "dpmpp_2m",
                   "guidance_scale": GUIDANCE},
        "sides": rows,
        "scheduler_alone": alone,
    }
    headers = ["side", "CPU ms/step", "UNet CPU ms/step", "overhead CPU ms/step",
               "overhead CPU ratio", "overhead wall ms/step", "overhead wall ratio",
               "peak MiB", "loop peak MiB", "max |diff|"]
    nan = float("nan")
    table = [[n, r["cpu_total_ms"], r["cpu_unet_ms"], r["cpu_overhead_ms"],
              r["cpu_overhead_ratio"], r["overhead_ms"], r["overhead_ratio"],
              r.get("memory_peak_mib", nan), r.get("memory_loop_peak_mib", nan),
              r["max_abs_diff_vs_diffusers"]] for n, r in rows.items()]
    print(f"{machine()}; {result['config']}")
    print(format_table(headers, table))
    print(f"scheduler alone (set_timesteps + step, CPU us per model call): reverie.diffusers."
          f"Scheduler {alone['reverie_cpu_us']:.4g}, DPMSolverMultistepScheduler "
          f"{alone['diffusers_cpu_us']:.4g} (ratio {alone['ratio']:.3g})")
    return result

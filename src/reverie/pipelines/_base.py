"""What every latent pipeline shares: loading the components of a diffusers folder, the VAE
(encode, decode in slices), prompt conditioning bound to a denoiser, and text-to-image
``sample`` with any reverie sampler.

A family (Stable Diffusion, SDXL, SD3, Flux, PixArt, DiT) subclasses :class:`LatentPipeline`
and says how a prompt becomes conditioning keywords (:meth:`LatentPipeline._conditioning`),
how the network is called (the ``fn`` of its base :class:`~reverie.denoisers.Denoiser`) and,
if its latents are not ``[B, C, H/f, W/f]``, how they are packed (:meth:`_pack` /
:meth:`_unpack`). Conditioning is a ``dict`` of keyword -> tensor with the batch first, so
classifier-free guidance runs both branches in one batched call.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess
from reverie.samplers import NonFiniteError

__all__ = [
    "Conditioned",
    "LatentPipeline",
    "load_components",
    "PICKLE_SUFFIXES",
    "OUTPUT_TYPES",
    "IGNORED",
]

#: components a folder may carry that reverie does not load.
IGNORED = ("safety_checker", "feature_extractor", "image_encoder")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
Cond = Mapping[str, Tensor]


# ---------------------------------------------------------------------------------------------
# Conditioning bound to a denoiser
# ---------------------------------------------------------------------------------------------


def _batch(value: Tensor, n: int, key: str) -> Tensor:
    """A conditioning tensor ``[1 or n, ...]`` for a batch of ``n`` latents."""
    if value.shape[0] == n:
        return value
    if value.shape[0] == 1:
        return value.expand(n, *value.shape[1:])
    raise ValueError(
        f"{value.shape[0]} rows of {key!r} were bound but the batch has {n} latents; bind one "
        "per latent (or a single one)"
    )


class Conditioned(DenoiserBase):
    """A latent denoiser with its conditioning keywords bound (prompt embeddings, pooled
    embeddings, time ids, class labels, ...). With ``negative`` conditioning and
    ``guidance_scale != 1`` (or a ``guidance`` method other than ``"cfg"``), it is guided by
    :func:`reverie.guidance.guide` with the negative as the unconditional branch (both
    branches in one batched call); ``guidance_options`` go to the method. A method that
    needs no unconditional branch (the perturbed family at scale 1) is applied without one."""

    def __init__(
        self,
        base: DenoiserBase,
        cond: Cond,
        negative: Cond | None = None,
        guidance_scale: float = 1.0,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
    ):
        from reverie.guidance import METHODS, guide

        self.base = base
        self.process = base.process
        self.cond = dict(cond)
        self.negative = None if negative is None else dict(negative)
        self.guidance_scale = float(guidance_scale)
        self.guided: DenoiserBase | None = None
        # a method that needs no unconditional branch (the perturbed family) guides without one
        free = "uncond" not in METHODS[guidance].needs
        if (self.negative is not None or free) and (self.guidance_scale != 1.0
                                                    or guidance != "cfg" or guidance_options):
            self.guided = guide(base, guidance, self.guidance_scale, uncond=self.negative,
                                **dict(guidance_options or {}))
        # a method that changes the sampler's update (CFG++) hands its hook to the sampler
        self.step_hook = getattr(self.guided, "step_hook", None)
        self.samplers = getattr(self.guided, "samplers", None)

    def _bound(self, cond: Cond, x: Tensor) -> dict[str, Tensor]:
        return {k: _batch(v.to(x.device), x.shape[0], k) for k, v in cond.items()}

    def __call__(self, x: Tensor, t: float | Tensor, **extra: Any) -> Tensor:
        if set(extra) & set(self.cond):
            raise ValueError(f"this denoiser already has {sorted(set(extra) & set(self.cond))} "
                             "bound")
        pos = self._bound(self.cond, x)
        return (self.base if self.guided is None else self.guided)(x, t, **pos, **extra)

    def __repr__(self) -> str:
        return f"Conditioned(guidance_scale={self.guidance_scale}, {self.base!r})"


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def _texts(what: str, value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{what} must be a string or a non-empty list of strings, got {value!r}")


def _negatives(prompts: list[str], negative_prompt: str | list[str] | None) -> list[str] | None:
    """One negative prompt per prompt (``None`` when none was given)."""
    if negative_prompt is None:
        return None
    negatives = _texts("negative_prompt", negative_prompt)
    if len(negatives) == 1 and len(prompts) > 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give "
                         "one negative prompt or one per prompt")
    return negatives


class LatentPipeline(ABC):
    """A diffusers latent pipeline in reverie's terms (module docstring).

    Attributes: ``network`` (the UNet or transformer), ``vae``, ``process`` and ``prediction``
    (from the scheduler config), ``base_denoiser`` (the unguided latent denoiser, taking the
    conditioning keywords), ``vae_scale_factor``, ``latent_channels``, ``scaling_factor``,
    ``shift_factor``, ``sample_shape`` (latent shape at the default size), ``scheduler_config``.
    Subclasses set ``default_guidance`` and implement :meth:`_conditioning` and
    :meth:`default_size`.
    """

    #: guidance scale of ``sample`` when none is given.
    default_guidance: float = 7.5
    #: decode this many latents at a time (``None``: all at once); see :meth:`decode`.
    vae_batch_size: int | None = 8
    #: keywords of :meth:`encode_prompt` (and ``sample``) that shape the conditioning beyond the
    #: prompt, passed on to :meth:`_conditioning` (e.g. SDXL's micro-conditioning sizes).
    prompt_options: tuple[str, ...] = ()
    #: keywords of ``sample`` that go to :meth:`denoiser` (e.g. Flux's ``true_cfg_scale``).
    denoiser_options: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        name: str,
        network: nn.Module,
        vae: nn.Module,
        base_denoiser: DenoiserBase,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        path: Path | None = None,
    ):
        self.name, self.path = name, path
        self.network, self.vae = network, vae
        self.process, self.prediction = process, prediction
        self.scheduler_config = scheduler_config
        self.base_denoiser = base_denoiser
        cfg = vae.config
        self.vae_scale_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        h, w = self.default_size()
        self.sample_shape = (self.latent_channels, h // self.vae_scale_factor,
                             w // self.vae_scale_factor)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, process={self.process!r}, "
                f"prediction={self.prediction!r})")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's weight dtype (the solver state may be wider)."""
        return next(self.network.parameters()).dtype

    def to(self, device: str | torch.device) -> LatentPipeline:
        """Move every module to ``device`` (in place; returns ``self``)."""
        for value in vars(self).values():
            if isinstance(value, nn.Module):
                value.to(device)
        return self

    # -- to implement ----------------------------------------------------------------------

    @abstractmethod
    def default_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels when ``sample`` is given none."""

    @abstractmethod
    def _conditioning(
        self, prompts: list[str], negatives: list[str] | None, height: int, width: int,
        **prompt_options: Any,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The network's conditioning keywords for ``prompts`` and for the negative prompts
        (``None``: the family's default negative, or none); ``prompt_options`` are the
        family's :attr:`prompt_options` that were given."""

    def _pack(self, latents: Tensor) -> Tensor:
        """VAE latents ``[B, C, h, w]`` -> the sampler's state (identity but for Flux)."""
        return latents

    def _unpack(self, x: Tensor, height: int, width: int) -> Tensor:
        """Inverse of :meth:`_pack`."""
        return x

    # -- text ------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        **prompt_options: Any,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """``(cond, negative)``: the network's conditioning keywords for each prompt (a dict of
        tensors with one row per prompt), as diffusers' ``encode_prompt`` computes them, and
        those of the negative prompts (the family's default when ``None``). The family's
        :attr:`prompt_options` may be given too."""
        unknown = set(prompt_options) - set(self.prompt_options)
        if unknown:
            raise TypeError(f"{type(self).__name__}.encode_prompt got unknown keywords "
                            f"{sorted(unknown)}; it takes {list(self.prompt_options) or 'none'}")
        prompts = _texts("prompt", prompt)
        dh, dw = self.default_size()
        given = {k: v for k, v in prompt_options.items() if v is not None}
        with torch.no_grad():
            return self._conditioning(prompts, _negatives(prompts, negative_prompt),
                                      height or dh, width or dw, **given)

    def denoiser(
        self,
        cond: Mapping[str, Tensor] | Tensor | tuple[Any, Any],
        negative: Mapping[str, Tensor] | Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
    ) -> Conditioned:
        """The latent denoiser with ``cond`` bound (a dict from :meth:`encode_prompt`, or the
        ``(cond, negative)`` pair itself; a bare tensor means ``encoder_hidden_states``).
        ``guidance_scale != 1`` needs negative conditioning and applies ``guidance`` (a
        classifier-free method of :data:`reverie.guidance.METHODS`, default ``"cfg"``:
        scale ``1`` is the conditional model, ``0`` the negative one) with
        ``guidance_options``. The perturbed family (``"pag"``, ``"slg"``, ``"seg"``, see
        :mod:`reverie.guidance.attention`) gets its ``perturb`` built on :attr:`network` from
        the options ``layers`` (and ``fqn`` / ``blur_sigma``)."""
        if isinstance(cond, tuple):
            cond, neg = cond
            negative = neg if negative is None else negative
        cond, negative = _as_cond(cond, "cond"), _as_cond(negative, "negative")
        if float(guidance_scale) != 1.0 and negative is None:
            raise ValueError("guidance_scale != 1 needs negative conditioning")
        from reverie.guidance.attention import pipeline_options

        # the perturbed family (guidance="pag") gets its perturbation of this pipeline's network
        options = pipeline_options(self.network, guidance, dict(guidance_options or {}))
        return Conditioned(self.base_denoiser, cond, negative, guidance_scale, guidance,
                           options)

    # -- VAE -------------------------------------------------------------------------------

    def check_size(self, height: int, width: int) -> None:
        f = self.vae_scale_factor * self._patch
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {f} (the VAE "
                             f"factor{' times the patch size' if self._patch > 1 else ''}), got "
                             f"{height}x{width}")

    _check_size = check_size  # the name of the first release
    _patch = 1  # latents are packed in patches of this side (Flux: 2)

    def encode_image(
        self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """VAE latents ``[B, C, H/f, W/f]`` of images ``[B, 3, H, W]`` in ``[0, 1]``: the
        posterior mean (or a draw with ``sample=True``), shifted and scaled as diffusers
        (``(z - shift_factor) * scaling_factor``)."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise TypeError("images must be a tensor [B, C, H, W] with values in [0, 1]")
        self.check_size(images.shape[-2], images.shape[-1])
        vae = self.vae
        with torch.no_grad():
            dist = vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor, *, batch_size: int | None = -1) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` of VAE latents (``latents / scaling_factor +
        shift_factor`` through the VAE decoder, as diffusers), ``batch_size`` latents at a time
        (default :attr:`vae_batch_size`; ``None``: all at once) so a large batch does not hold
        every activation at once. Raises :class:`reverie.NonFiniteError` if the decoder
        returns NaN or inf (e.g. a float16 VAE overflowing)."""
        vae = self.vae
        size = self.vae_batch_size if batch_size == -1 else batch_size
        chunks = [latents] if size is None else latents.split(int(size))
        out = []
        with torch.no_grad():
            for z in chunks:
                z = (z / self.scaling_factor + self.shift_factor).to(vae.device, vae.dtype)
                out.append(vae.decode(z, return_dict=False)[0])
        image = torch.cat(out)
        if not torch.isfinite(image).all():
            raise NonFiniteError(f"the VAE decoder ({vae.dtype}) returned NaN or inf; decode in "
                                 "float32 (pipeline.vae.float()) or check the latents")
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # -- sampling --------------------------------------------------------------------------

    def sample(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        grid: str | Tensor | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        n: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Text to image with any reverie sampler (diffusers' ``__call__`` names).

        ``n`` images per prompt; ``guidance_scale`` defaults to :attr:`default_guidance`;
        ``grid`` a reverie grid name or a tensor of process times (for a discrete VP model the
        scheduler's own timesteps, ending at ``-1`` for the clean data, e.g.
        ``cat([scheduler.timesteps, [-1]])``; for flow matching sigmas, ending at 0).
        ``latents`` (unit normal, the VAE latent shape ``[len(prompt) * n, C, H/f, W/f]``)
        start the walk at ``latents * sqrt(alpha^2 + sigma^2)`` (the marginal scale of
        unit-variance data: 1 for VP and flows); otherwise they are drawn with ``generator`` as
        diffusers does. ``dtype`` is the solver state's (the network runs in its own).
        Classifier-free guidance is applied for any ``guidance_scale != 1`` (diffusers: only
        ``> 1``), by ``guidance`` (a classifier-free method of :data:`reverie.guidance.METHODS`,
        e.g. ``"apg"``) with ``guidance_options``. ``output_type``: ``"pil"`` (a list of PIL
        images), ``"np"`` (``[B, H, W, 3]`` floats in [0, 1]), ``"pt"`` (``[B, 3, H, W]``) or
        ``"latent"`` (VAE latents). ``options`` go to the sampler, except the family's
        :attr:`prompt_options`, which go to :meth:`encode_prompt`, and its
        :attr:`denoiser_options`, which go to :meth:`denoiser`.
        """
        from reverie.samplers import SAMPLERS, resolve_grid, run

        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (images per prompt) must be a positive int, got {n!r}")
        dh, dw = self.default_size()
        height, width = height or dh, width or dw
        self.check_size(height, width)
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        extra = {k: options.pop(k) for k in self.prompt_options if k in options}
        den_extra = {k: options.pop(k) for k in self.denoiser_options if k in options}
        cond, negative = self.encode_prompt(prompt, negative_prompt, height=height, width=width,
                                            **extra)
        cond = {k: v.repeat_interleave(n, 0) for k, v in cond.items()}  # n per prompt
        if negative is not None:
            negative = {k: v.repeat_interleave(n, 0) for k, v in negative.items()}
        rows = next(iter(cond.values())).shape[0]
        f = self.vae_scale_factor
        shape = (rows, self.latent_channels, height // f, width // f)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
        g = resolve_grid(info, self.process, steps, grid)
        t0 = g[0].to(torch.float64)
        scale = math.sqrt(float(self.process.alpha(t0)) ** 2 + float(self.process.sigma(t0)) ** 2)
        from reverie.guidance.semantic import prompt_options  # syngen / sgt read the prompts

        guidance_options = prompt_options(self, guidance, guidance_options,
                                          lambda: _texts("prompt", prompt), n)
        den = self.denoiser(cond, negative, guidance_scale, guidance, guidance_options,
                            **den_extra)
        x = self._pack(latents.to(self.device, dtype) * scale)
        x = run(info, den, x, g, generator=generator, progress=progress, **options).x0
        x = self._unpack(x, height, width)
        if output_type == "latent":
            return x
        images = self.decode(x)
        if output_type == "pt":
            return images
        arr = images.cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]


def _as_cond(value: Any, what: str) -> dict[str, Tensor] | None:
    if value is None:
        return None
    if isinstance(value, Tensor):  # a bare tensor: prompt embeddings
        value = {"encoder_hidden_states": value}
    if not isinstance(value, Mapping) or not value or not all(
        isinstance(v, Tensor) and v.ndim >= 1 for v in value.values()
    ):
        raise TypeError(f"{what} must be conditioning from encode_prompt (a dict of tensors with "
                        f"the batch first), got {type(value).__name__}")
    return dict(value)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check_weights(part: Path, trust_pickle: bool) -> bool:
    """Whether ``part`` holds safetensors weights; pickles only with ``trust_pickle``."""
    files = [p for p in part.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return True
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if not pickles:
        raise FileNotFoundError(f"no weights in {part}: expected a .safetensors file")
    if not trust_pickle:
        raise ValueError(
            f"{part} has only pickled weights ({', '.join(sorted(pickles))}), which can run "
            "arbitrary code when read; convert them to safetensors, or pass trust_pickle=True "
            "if you trust the file"
        )
    return False


@contextmanager
def _quiet():
    """Silence transformers' and diffusers' loading chatter (per-weight progress bars, the
    advice to install accelerate); their errors still raise."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars:
            tlog.enable_progress_bar()


def load_components(
    folder: Path,
    components: Mapping[str, tuple[str, ...] | None],
    *,
    pipeline: str,
    optional: tuple[str, ...] = (),
    trust_pickle: bool = False,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The components of a diffusers pipeline folder, checked against ``components`` (name ->
    accepted class names; ``None``: any). Networks load from safetensors (pickles only with
    ``trust_pickle``) in ``dtype`` on ``device``, frozen; tokenizers from their folders;
    ``scheduler`` is its config dict. Components in ``optional`` may be absent (``None``)."""
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    for key, value in index.items():  # every listed component must be one reverie knows
        if key.startswith("_") or not isinstance(value, list):
            continue
        if key not in components and key not in IGNORED:
            raise ValueError(f"{folder}/model_index.json has an unknown component {key!r}; a "
                             f"{pipeline} has {', '.join([*components, *IGNORED])}")
    modules: dict[str, Any] = {}
    for key, classes in components.items():
        entry = index.get(key)
        cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        part = folder / key
        if cls_name is None or not part.is_dir():
            if key in optional:
                modules[key] = None
                continue
            raise FileNotFoundError(
                f"{folder} lacks the {key!r} component (model_index.json entry and {key}/ "
                f"folder); a {pipeline} needs " + ", ".join(k for k in components
                                                            if k not in optional))
        if classes is not None and cls_name not in classes:
            raise ValueError(f"{folder}: component {key!r} is a {cls_name!r}; expected "
                             f"{' or '.join(classes)}")
        if key == "scheduler":
            cfg_path = part / "scheduler_config.json"
            if not cfg_path.is_file():
                raise FileNotFoundError(f"no scheduler_config.json in {part}")
            modules[key] = json.loads(cfg_path.read_text())
            continue
        if key.startswith("tokenizer"):
            modules[key] = getattr(transformers, cls_name).from_pretrained(part)
            continue
        safe = _check_weights(part, trust_pickle)
        from_transformers = hasattr(transformers, cls_name) and not hasattr(diffusers, cls_name)
        lib = transformers if from_transformers else diffusers
        kw = {} if dtype is None else {"dtype" if from_transformers else "torch_dtype": dtype}
        try:  # both cast themselves, keeping their float32-only modules (T5's wo in float16)
            with _quiet():
                model = getattr(lib, cls_name).from_pretrained(part, use_safetensors=safe, **kw)
        except Exception as err:
            raise ValueError(f"could not load the {cls_name} in {part}: {err}") from err
        model.eval().requires_grad_(False)
        if (dtype is not None and not from_transformers and model.dtype != dtype
                and not getattr(model, "_keep_in_fp32_modules", None)):
            # diffusers 0.42 ignores torch_dtype when a model's first state entry (e.g. the
            # float32 pos_embed buffer of SD3's and PixArt's PatchEmbed) has the file's dtype
            model = nn.Module.to(model, dtype)
        modules[key] = model if device is None else model.to(device)
    return modules


def read_process(folder: Path, scheduler_config: dict[str, Any], *, discrete: bool = True):
    """``(process, prediction)`` of a pipeline's scheduler config
    (:func:`reverie.diffusers_adapter.scheduler_spec`). ``discrete``: the network is read at
    DDPM-family timesteps (UNets, PixArt, DiT), so configs with a continuous time input (EDM
    and the like) are refused."""
    from reverie.diffusers_adapter import scheduler_spec

    spec = scheduler_spec(scheduler_config)
    if discrete and (spec.time_input != "process" or spec.precondition is not None):
        raise ValueError(
            f"{folder}/scheduler: a {scheduler_config.get('_class_name')!r} config with a "
            "continuous time input; reverie reads this network at discrete DDPM-family timesteps"
        )
    return spec.process, spec.prediction

"""Stable Diffusion 1.x/2.x folders (diffusers' ``StableDiffusionPipeline`` layout) in reverie.

A folder with ``model_index.json``, ``unet/`` (``UNet2DConditionModel``), ``vae/``
(``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (CLIP) and
``scheduler/`` loads into :class:`StableDiffusion`:

* :meth:`~StableDiffusion.encode_prompt` runs CLIP as diffusers does (padded to the tokenizer's
  ``model_max_length``, last hidden state; an over-long prompt is truncated with a warning);
* :meth:`~StableDiffusion.denoiser` is a latent :class:`~reverie.denoisers.DenoiserBase` with the
  prompt embeddings bound, under classifier-free guidance when asked, so every reverie sampler
  and algorithm runs in latent space;
* :meth:`~StableDiffusion.sample` is text-to-image with diffusers' ``__call__`` argument names;
* :meth:`~StableDiffusion.encode_image` / :meth:`~StableDiffusion.decode` cross the VAE.

The noising process and prediction type come from the scheduler config through
:func:`reverie.diffusers_adapter.scheduler_spec`; the scheduler's own stepping rule is not used
(pick a reverie sampler and grid). Weights are read from safetensors; pickled weights
(``.bin``/``.ckpt``/``.pt``/``.pth``) only with ``trust_pickle=True``. The safety checker,
feature extractor and image encoder of a folder are not loaded.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.denoisers import ClassifierFreeGuidance, Denoiser, DenoiserBase
from reverie.process import GaussianProcess

__all__ = ["StableDiffusion", "TextConditioned", "load_stable_diffusion"]

#: component -> the classes accepted for it (``None``: any scheduler class).
COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,
}
#: components a folder may carry that reverie does not load.
IGNORED = ("safety_checker", "feature_extractor", "image_encoder")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ---------------------------------------------------------------------------------------------
# Denoisers
# ---------------------------------------------------------------------------------------------


class _UNetFunction(nn.Module):
    """``fn(x, t, encoder_hidden_states)``: the UNet at discrete VP times (its step index)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        ehs = encoder_hidden_states.to(x.dtype)
        return self.unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]


def _batch(embeds: Tensor, n: int) -> Tensor:
    """Prompt embeddings ``[1 or n, L, D]`` for a batch of ``n`` latents."""
    if embeds.shape[0] == n:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(n, *embeds.shape[1:])
    raise ValueError(
        f"{embeds.shape[0]} prompt embeddings were bound but the batch has {n} latents; bind "
        "one per latent (or a single one)"
    )


class TextConditioned(DenoiserBase):
    """A latent denoiser with prompt embeddings bound; ``guidance_scale != 1`` with negative
    embeddings applies classifier-free guidance (Ho & Salimans 2022) through
    :class:`reverie.ClassifierFreeGuidance` (both branches in one batched UNet call)."""

    def __init__(
        self,
        base: DenoiserBase,
        prompt_embeds: Tensor,
        negative_prompt_embeds: Tensor | None = None,
        guidance_scale: float = 1.0,
    ):
        self.base = base
        self.process = base.process
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        self.guidance_scale = float(guidance_scale)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if "encoder_hidden_states" in cond:
            raise ValueError("this denoiser already has its prompt embeddings bound")
        pos = _batch(self.prompt_embeds.to(x.device), x.shape[0])
        neg = self.negative_prompt_embeds
        if self.guidance_scale == 1.0 or neg is None:
            return self.base(x, t, encoder_hidden_states=pos, **cond)
        uncond = {"encoder_hidden_states": _batch(neg.to(x.device), x.shape[0])}
        cfg = ClassifierFreeGuidance(self.base, self.guidance_scale, uncond)
        return cfg(x, t, encoder_hidden_states=pos, **cond)

    def __repr__(self) -> str:
        return f"TextConditioned(guidance_scale={self.guidance_scale}, {self.base!r})"


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


class StableDiffusion:
    """A Stable Diffusion 1.x/2.x pipeline in reverie's terms (module docstring).

    Attributes: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``process`` and
    ``prediction`` (from the scheduler config), ``base_denoiser`` (the unguided latent
    denoiser, taking ``encoder_hidden_states=``), ``vae_scale_factor``, ``latent_channels``,
    ``scaling_factor``, ``sample_shape`` (the latent shape at the default size),
    ``scheduler_config``.
    """

    def __init__(
        self,
        *,
        name: str,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        process: GaussianProcess,
        prediction: str,
        scheduler_config: dict[str, Any],
        path: Path | None = None,
    ):
        self.name = name
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.process, self.prediction = process, prediction
        self.scheduler_config = scheduler_config
        self.path = path
        self.base_denoiser = Denoiser(_UNetFunction(unet), process, prediction)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(unet.config.in_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        size = int(unet.config.sample_size)
        self.sample_shape = (self.latent_channels, size, size)

    def __repr__(self) -> str:
        return (
            f"StableDiffusion({self.name!r}, process={self.process!r}, "
            f"prediction={self.prediction!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- text ------------------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> Tensor:
        """CLIP's last hidden state of ``texts`` padded to ``model_max_length`` (diffusers)."""
        tok = self.tokenizer
        length = int(tok.model_max_length)
        enc = tok(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        ids = enc.input_ids
        full = tok(texts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > length:  # what truncation removed (diffusers' warning)
            removed = tok.batch_decode(full[:, length - 1 : -1])
            warnings.warn(
                f"the prompt was truncated to {length} tokens (CLIP's limit); removed: {removed}",
                stacklevel=3,
            )
        mask = None  # SD's CLIP attends to the padding too, unless its config says otherwise
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = enc.attention_mask.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device), attention_mask=mask)[0]

    def encode_prompt(
        self, prompt: str | list[str], negative_prompt: str | list[str] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(prompt_embeds, negative_prompt_embeds)``, each ``[len(prompt), L, D]``; the
        negative prompt defaults to ``""`` (the unconditional embedding), as in diffusers."""
        prompts = _texts("prompt", prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = _texts("negative_prompt", negative_prompt)
            if len(negatives) == 1 and len(prompts) > 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one "
                    "negative prompt or one per prompt"
                )
        return self._embed(prompts), self._embed(negatives)

    def denoiser(
        self,
        cond: Tensor | tuple[Tensor, Tensor],
        negative: Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> TextConditioned:
        """The latent denoiser with prompt embeddings ``cond`` bound (``[1 or B, L, D]``, or
        the pair from :meth:`encode_prompt`, whose second half is then the negative).
        ``guidance_scale != 1`` needs negative embeddings and applies classifier-free
        guidance (``scale = 1``: the conditional model; ``0``: the negative one)."""
        if isinstance(cond, tuple):
            cond, neg = cond
            negative = neg if negative is None else negative
        if not isinstance(cond, Tensor) or cond.ndim != 3:
            raise TypeError("cond must be prompt embeddings [B, L, D] (see encode_prompt)")
        if float(guidance_scale) != 1.0 and negative is None:
            raise ValueError("guidance_scale != 1 needs negative prompt embeddings")
        return TextConditioned(self.base_denoiser, cond, negative, guidance_scale)

    # -- VAE -------------------------------------------------------------------------------

    def encode_image(
        self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latents of images ``[B, 3, H, W]`` in ``[0, 1]``: the VAE posterior mean (or a draw
        with ``sample=True``) times the VAE's ``scaling_factor``."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise TypeError("images must be a tensor [B, C, H, W] with values in [0, 1]")
        self._check_size(images.shape[-2], images.shape[-1])
        vae = self.vae
        with torch.no_grad():
            dist = vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` of latents (VAE decode of
        ``latents / scaling_factor``, as diffusers)."""
        vae = self.vae
        with torch.no_grad():
            image = vae.decode(
                (latents / self.scaling_factor).to(vae.device, vae.dtype), return_dict=False
            )[0]
        return (image / 2 + 0.5).clamp(0, 1)

    # -- sampling --------------------------------------------------------------------------

    def _check_size(self, height: int, width: int) -> None:
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of the VAE factor {f}, got "
                f"{height}x{width}"
            )

    def sample(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        grid: str | Tensor | None = None,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        n: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        dtype: torch.dtype = torch.float32,
        **options: Any,
    ) -> Any:
        """Text to image with any reverie sampler (diffusers' ``__call__`` names).

        ``n`` images per prompt; ``grid`` a reverie grid name or a tensor of process times (the
        scheduler's own timesteps for a discrete VP model, ending at ``-1`` for the clean
        data, e.g. ``cat([scheduler.timesteps, [-1]])``). ``latents`` (unit normal,
        ``[len(prompt) * n, C, H/f, W/f]``) start the walk at ``latents *
        sqrt(alpha^2 + sigma^2)`` (the marginal scale of unit-variance data: 1 for VP, as
        diffusers' DDPM-family schedulers); otherwise they are drawn with ``generator`` as
        diffusers does. Classifier-free guidance is applied for any ``guidance_scale != 1``
        (diffusers only for ``> 1``). ``output_type``: ``"pil"`` (a list of PIL images),
        ``"np"`` (``[B, H, W, 3]`` floats in [0, 1]), ``"pt"`` (``[B, 3, H, W]``) or
        ``"latent"``. ``options`` go to the sampler.
        """
        from reverie.samplers import SAMPLERS, resolve_grid, run

        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (images per prompt) must be a positive int, got {n!r}")
        f = self.vae_scale_factor
        height = height or int(self.unet.config.sample_size) * f
        width = width or int(self.unet.config.sample_size) * f
        self._check_size(height, width)
        pos, neg = self.encode_prompt(prompt, negative_prompt)
        pos, neg = pos.repeat_interleave(n, 0), neg.repeat_interleave(n, 0)  # n per prompt
        shape = (pos.shape[0], self.latent_channels, height // f, width // f)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
        g = resolve_grid(info, self.process, steps, grid)
        t0 = g[0].to(torch.float64)
        scale = math.sqrt(float(self.process.alpha(t0)) ** 2 + float(self.process.sigma(t0)) ** 2)
        den = self.denoiser(pos, neg, guidance_scale)
        x = run(info, den, latents.to(self.device, dtype) * scale, g, generator=generator,
                **options).x0
        if output_type == "latent":
            return x
        images = self.decode(x).float()
        if output_type == "pt":
            return images
        arr = images.cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]


def _texts(what: str, value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{what} must be a string or a non-empty list of strings, got {value!r}")


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


def load_stable_diffusion(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
) -> StableDiffusion:
    """Load a ``StableDiffusionPipeline`` folder (module docstring); ``process`` /
    ``prediction`` override what the scheduler config says."""
    import diffusers
    import transformers

    from reverie.diffusers_adapter import scheduler_spec

    index = json.loads((folder / "model_index.json").read_text())
    for key, value in index.items():  # every listed component must be one reverie knows
        if key.startswith("_") or not isinstance(value, list):
            continue
        if key not in COMPONENTS and key not in IGNORED:
            raise ValueError(
                f"{folder}/model_index.json has an unknown component {key!r}; a "
                f"StableDiffusionPipeline has {', '.join([*COMPONENTS, *IGNORED])}"
            )
    modules: dict[str, Any] = {}
    for key, classes in COMPONENTS.items():
        entry = index.get(key)
        cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        part = folder / key
        if cls_name is None or not part.is_dir():
            raise FileNotFoundError(
                f"{folder} lacks the {key!r} component (model_index.json entry and {key}/ "
                "folder); a StableDiffusionPipeline needs " + ", ".join(COMPONENTS)
            )
        if classes is not None and cls_name not in classes:
            raise ValueError(
                f"{folder}: component {key!r} is a {cls_name!r}; expected {' or '.join(classes)}"
            )
        if key == "scheduler":
            cfg_path = part / "scheduler_config.json"
            if not cfg_path.is_file():
                raise FileNotFoundError(f"no scheduler_config.json in {part}")
            modules[key] = json.loads(cfg_path.read_text())
        elif key == "tokenizer":
            modules[key] = getattr(transformers, cls_name).from_pretrained(part)
        else:
            safe = _check_weights(part, trust_pickle)
            text = key == "text_encoder"
            lib, kw = (transformers, {}) if text else (diffusers, {"torch_dtype": dtype})
            try:  # diffusers casts with torch_dtype itself (keeping its float32-only modules)
                model = getattr(lib, cls_name).from_pretrained(part, use_safetensors=safe, **kw)
            except Exception as err:
                raise ValueError(f"could not load the {cls_name} in {part}: {err}") from err
            model.eval().requires_grad_(False)
            modules[key] = model.to(dtype) if dtype is not None and not kw else model
    spec = scheduler_spec(modules["scheduler"])
    if process is None and (spec.time_input != "process" or spec.precondition is not None):
        raise ValueError(
            f"{folder}/scheduler: a {modules['scheduler'].get('_class_name')!r} config with "
            "continuous time input; reverie reads SD UNets at discrete DDPM-family timesteps"
        )
    return StableDiffusion(
        name=name or folder.name,
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=modules["tokenizer"],
        process=process or spec.process,
        prediction=prediction or spec.prediction,
        scheduler_config=modules["scheduler"],
        path=folder,
    )

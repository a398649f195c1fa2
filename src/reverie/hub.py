"""Load and save models: the bundled ones, local folders and Hugging Face Hub checkpoints.

``load(name_or_path)`` returns a :class:`LoadedModel`: the network, its noising process, its
prediction type and a ready :class:`~reverie.denoisers.Denoiser`, plus what a sampler needs
to know (sample shape, number of classes). It accepts

* a bundled name (:data:`BUNDLED`: ``digits`` and its variants ``digits-weak``,
  ``digits-noisy``, ``digits-coherence``, ``two-moons``, the text-to-image ``shapes``),
  shipped inside the package;
* a local folder holding a reverie model (``reverie.json`` + ``model.safetensors``), a
  diffusers ``DiffusionPipeline`` (``model_index.json``, ``unet/``, ``scheduler/``) or a lone
  diffusers ``UNet2DModel`` (``config.json`` + ``diffusion_pytorch_model.safetensors``);
* a Hugging Face Hub id (``owner/name``), downloaded with ``huggingface_hub.snapshot_download``
  (safetensors and JSON files only) and then loaded as a local folder.

Weights are only ever read from safetensors files (no pickles). A diffusers folder may carry
a ``reverie.json`` with extra metadata (name, classes, null class); the bundled ``digits``
model is such a folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie._checks import positive_int
from reverie._random import randn, seeded_generators
from reverie.denoisers import PREDICTIONS, Denoiser, DenoiserBase
from reverie.nets.function import ModelFunction
from reverie.process import (
    EDM,
    VE,
    VP,
    GaussianProcess,
    RectifiedFlow,
    VPCosine,
    VPLinear,
)

__all__ = [
    "BUNDLED",
    "check_model_name",
    "LoadedModel",
    "load",
    "bundled_path",
    "read_config",
    "save_native",
    "save_diffusers",
    "process_to_config",
    "process_from_config",
    "atomic_dir",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

#: The models shipped inside the package: name -> one-line description.
BUNDLED: dict[str, str] = {
    "digits": "8x8 handwritten digits (scikit-learn), class-conditional diffusers UNet2DModel "
    "with a null class for CFG; EDM",
    "two-moons": "2-D two moons, class-conditional (upper/lower moon, null class) residual MLP; "
    "EDM",
    "seasonal": "seasonal time series of 48 steps (reverie.timeseries.SeasonalGP), "
    "unconditional residual MLP for TSDiff self-guidance; EDM",
    "shapes": "text-to-image StableDiffusionPipeline (VAE, UNet2DConditionModel, CLIP): 32x32 "
    "coloured shapes, e.g. 'a red circle on the left'; VP, epsilon",
    "digits-weak": "8x8 digits, a smaller (16/32/32 channels) and shorter-trained digits model: "
    "autoguidance's weak model; diffusers UNet2DModel with a null class; EDM",
    "digits-noisy": "8x8 digits trained on noisy labels (half resampled at random), the baseline "
    "of digits-coherence; diffusers UNet2DModel with a null class; EDM",
    "digits-coherence": "8x8 digits trained on the same noisy labels with a coherence score in "
    "[0, 1] as an extra condition (coherence=; Dufour et al. 2024); CoherenceUNet; EDM",
}

CONFIG_NAME = "reverie.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "reverie"
FORMAT_VERSION = 1

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------
# The loaded model
# ---------------------------------------------------------------------------------------------


class _Conditioned(DenoiserBase):
    """A denoiser with class labels bound, optionally guided against the null class by a
    classifier-free method of :data:`reverie.guidance.METHODS` (default ``"cfg"``)."""

    def __init__(
        self,
        base: DenoiserBase,
        labels: int | Tensor,
        null_label: int | None,
        scale: float,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
    ):
        from reverie.guidance import guide

        self.base = base
        self.process = base.process
        self.labels = labels
        self.null_label = null_label
        self.scale = float(scale)
        self.guided: DenoiserBase | None = None
        if self.scale != 1.0 or guidance != "cfg" or guidance_options:
            null = torch.tensor([null_label])  # one row serves any batch
            self.guided = guide(base, guidance, self.scale, uncond={"class_labels": null},
                                **dict(guidance_options or {}))
        # a method that changes the sampler's update (CFG++) hands its hook to the sampler
        self.step_hook = getattr(self.guided, "step_hook", None)
        self.samplers = getattr(self.guided, "samplers", None)

    def _labels_for(self, x: Tensor) -> Tensor:
        if isinstance(self.labels, int):
            return torch.full((x.shape[0],), self.labels, dtype=torch.long, device=x.device)
        lab = self.labels.to(x.device)
        if lab.numel() == 1:
            return lab.reshape(1).expand(x.shape[0])
        if lab.shape[0] != x.shape[0]:
            raise ValueError(
                f"{lab.shape[0]} labels were bound but the batch has {x.shape[0]} samples; bind "
                "one label per sample (or a single int)"
            )
        return lab

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        if "class_labels" in cond:
            raise ValueError("this denoiser already has its class labels bound; call "
                             "model.conditional(...) with the labels you want instead")
        labels = self._labels_for(x)
        return (self.base if self.guided is None else self.guided)(x, t, class_labels=labels,
                                                                   **cond)

    def __repr__(self) -> str:
        return f"Conditioned(labels={self.labels!r}, cfg_scale={self.scale}, {self.base!r})"


@dataclass
class LoadedModel:
    """A model ready to sample: ``denoiser(x, t[, class_labels=...])`` is its data prediction.

    For class-conditional models (``num_classes`` not ``None``) the denoiser takes
    ``class_labels=LongTensor[B]``; without labels it is the unconditional model (the null
    label ``num_classes``, learned by label dropout) when the model has a null class.
    """

    name: str
    net: nn.Module
    process: GaussianProcess
    prediction: str
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    num_classes: int | None
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def has_null_class(self) -> bool:
        """Whether label ``num_classes`` is the unconditional (null) class, as CFG needs."""
        return self.num_classes is not None and bool(self.config.get("null_class", False))

    def check_labels(self, labels: int | Tensor) -> int | Tensor:
        """Validate class labels (an int or a ``LongTensor``) against ``num_classes``."""
        if self.num_classes is None:
            raise ValueError(f"model {self.name!r} is not class-conditional; it takes no labels")
        if isinstance(labels, bool) or not isinstance(labels, (int, Tensor)):
            raise TypeError(f"labels must be an int or a LongTensor, got {type(labels).__name__}")
        if isinstance(labels, Tensor):
            if labels.is_floating_point() or labels.ndim > 1:
                raise TypeError("labels must be a 1-D integer tensor")
            labels = labels.long()
            lo, hi = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
        else:
            lo = hi = labels
        if lo < 0 or hi >= self.num_classes:
            names = self.config.get("class_names")
            valid = f"0..{self.num_classes - 1}" + (
                f" ({', '.join(map(str, names))})" if names else ""
            )
            bad = hi if hi >= self.num_classes else lo
            raise ValueError(
                f"label out of range for model {self.name!r}: got {bad}; valid labels are {valid}"
            )
        return labels

    def conditional(
        self,
        labels: int | Tensor,
        cfg_scale: float = 1.0,
        *,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
    ) -> DenoiserBase:
        """The denoiser with ``labels`` bound (an int for every sample, or ``LongTensor[B]``);
        ``cfg_scale != 1`` applies classifier-free guidance (Ho & Salimans 2022) against the
        null class, or another classifier-free ``guidance`` method of
        :data:`reverie.guidance.METHODS` (``"apg"``, ``"cfg_zero_star"``, ...) with
        ``guidance_options``."""
        labels = self.check_labels(labels)
        cfg_scale = float(cfg_scale)
        guided = cfg_scale != 1.0 or guidance != "cfg" or bool(guidance_options)
        if guided and not self.has_null_class:
            raise ValueError(
                f"model {self.name!r} has no null class, so classifier-free guidance "
                "(cfg_scale != 1, or a guidance method) is not available"
            )
        null = self.num_classes if self.has_null_class else None
        return _Conditioned(self.denoiser, labels, null, cfg_scale, guidance, guidance_options)

    def noise(self, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Unit noise ``[n, *sample_shape]``; sample ``k`` depends only on ``seed + k``."""
        return randn((n, *self.sample_shape), seeded_generators(seed, n), dtype=dtype)

    def sample(
        self,
        n: int,
        *,
        sampler: str = "dpmpp_2m",
        steps: int = 10,
        grid: str | Tensor | None = None,
        seed: int = 0,
        labels: int | Tensor | None = None,
        cfg_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        guidance: str = "cfg",
        guidance_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Tensor:
        """``n`` samples ``[n, *sample_shape]`` with any reverie sampler.

        Sample ``k`` depends only on ``seed + k`` (its noise and, for stochastic samplers, its
        own generator), not on ``n``. ``labels``/``cfg_scale``/``guidance``/
        ``guidance_options`` as in :meth:`conditional`;
        without labels a class-conditional model samples unconditionally (null class).
        """
        from reverie.samplers import sample as _sample

        positive_int("n", n)
        if labels is None:
            if cfg_scale != 1.0:
                raise ValueError("cfg_scale needs labels (guidance pushes samples towards a class)")
            den: DenoiserBase = self.denoiser
        else:
            den = self.conditional(labels, cfg_scale, guidance=guidance,
                                   guidance_options=guidance_options)
        gens = seeded_generators(seed, n)
        noise = randn((n, *self.sample_shape), gens, dtype=dtype)  # drawn on CPU: same everywhere
        param = next(self.net.parameters(), None)
        if param is not None:
            noise = noise.to(param.device)
        stochastic_gens = seeded_generators(seed + 1_000_003, n)
        return _sample(
            den,
            noise,
            sampler=sampler,
            steps=steps,
            grid=grid,
            generator=stochastic_gens,
            progress=progress,
            **options,
        )


# ---------------------------------------------------------------------------------------------
# Process configs
# ---------------------------------------------------------------------------------------------


def process_to_config(process: GaussianProcess) -> dict[str, Any]:
    """A JSON-able description of a process (inverse of :func:`process_from_config`)."""
    if isinstance(process, EDM):
        return {
            "class": "EDM",
            "sigma_min": process.t_min,
            "sigma_max": process.t_max,
            "sigma_data": process.sigma_data,
        }
    if isinstance(process, VE):
        return {"class": "VE", "sigma_min": process.t_min, "sigma_max": process.t_max}
    if isinstance(process, RectifiedFlow):
        return {
            "class": "RectifiedFlow",
            "t_min": process.t_min,
            "t_max": process.t_max,
            "shift": process.shift,
        }
    if isinstance(process, VPLinear):
        return {
            "class": "VPLinear",
            "beta_min": process.beta_min,
            "beta_max": process.beta_max,
            "t_min": process.t_min,
        }
    if isinstance(process, VPCosine):
        return {"class": "VPCosine", "s": process.s, "t_min": process.t_min, "t_max": process.t_max}
    if isinstance(process, VP):
        return {"class": "VP", "alphas_cumprod": process.alphas_cumprod.tolist()}
    raise TypeError(f"cannot save a {type(process).__name__} process in a model config")


def process_from_config(config: Mapping[str, Any]) -> GaussianProcess:
    """Build the process described by :func:`process_to_config`."""
    cfg = dict(config)
    cls = cfg.pop("class", None)
    table = {
        "EDM": EDM,
        "VE": VE,
        "RectifiedFlow": RectifiedFlow,
        "VPLinear": VPLinear,
        "VPCosine": VPCosine,
    }
    if cls == "VP":
        return VP(torch.tensor(cfg["alphas_cumprod"], dtype=torch.float64))
    if cls not in table:
        raise ValueError(f"unknown process class {cls!r}; expected one of VP, {', '.join(table)}")
    try:
        return table[cls](**cfg)
    except TypeError as err:
        raise ValueError(f"bad {cls} process config {cfg}: {err}") from None


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


@contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling folder, then swap it into place
    (an existing ``folder`` is replaced only once the new one is complete)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        _normalise_permissions(tmp)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normalise_permissions(folder: Path) -> None:
    """Readable by everyone (as a normal file write under the umask), not 0600 temp files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o755 & ~umask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644 & ~umask)


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _meta(
    name: str,
    description: str,
    sample_shape: tuple[int, ...],
    num_classes: int | None,
    class_names: list[str] | None,
    null_class: bool,
    extra: Mapping[str, Any] | None,
) -> dict:
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "sample_shape": list(sample_shape),
        "num_classes": num_classes,
        "null_class": bool(null_class),
    }
    if class_names is not None:
        meta["class_names"] = list(class_names)
    if extra:
        meta.update(extra)
    return meta


def save_native(
    folder: str | Path,
    net: nn.Module,
    *,
    net_class: str,
    net_config: Mapping[str, Any],
    process: GaussianProcess,
    prediction: str,
    name: str,
    description: str = "",
    sample_shape: tuple[int, ...],
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    null_class: bool = False,
    precondition: str | None = None,
    sigma_data: float | None = None,
    time_input: str = "process",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a reverie model folder: ``reverie.json`` + ``model.safetensors`` (atomically).

    ``net_class`` must be a name in :data:`reverie.nets.NETS` built by ``net_class(**net_config)``.
    """
    from safetensors.torch import save_file

    from reverie.nets import NETS

    if net_class not in NETS:
        raise ValueError(f"unknown net class {net_class!r}; expected one of {', '.join(NETS)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    meta = _meta(name, description, sample_shape, num_classes, class_names, null_class, extra)
    meta.update(
        {
            "net": {"class": net_class, "config": dict(net_config)},
            "process": process_to_config(process),
            "prediction": prediction,
            "precondition": precondition,
            "sigma_data": sigma_data,
            "time_input": time_input,
        }
    )
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        _write_json(tmp / CONFIG_NAME, meta)
    return Path(folder)


def save_diffusers(
    folder: str | Path,
    unet: nn.Module,
    scheduler_config: Mapping[str, Any],
    *,
    name: str,
    description: str = "",
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    null_class: bool = False,
    pipeline_class: str = "DDPMPipeline",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a diffusers ``DiffusionPipeline`` folder (``model_index.json``, ``unet/``,
    ``scheduler/``) plus reverie's metadata in ``reverie.json``, atomically."""
    import diffusers
    from diffusers import SchedulerMixin  # noqa: F401  (fails early without diffusers)

    sched_cls = scheduler_config.get("_class_name", "DDPMScheduler")
    cfg = unet.config
    shape = (int(cfg["in_channels"]), int(cfg["sample_size"]), int(cfg["sample_size"]))
    meta = _meta(name, description, shape, num_classes, class_names, null_class, extra)
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "scheduler").mkdir()
        sched = {"_class_name": sched_cls, "_diffusers_version": diffusers.__version__}
        sched.update({k: v for k, v in scheduler_config.items() if k != "_class_name"})
        _write_json(tmp / "scheduler" / "scheduler_config.json", sched)
        _write_json(
            tmp / "model_index.json",
            {
                "_class_name": pipeline_class,
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", sched_cls],
                "unet": ["diffusers", "UNet2DModel"],
            },
        )
        _write_json(tmp / CONFIG_NAME, meta)
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def bundled_path(name: str) -> Path:
    """The folder of a bundled model inside the installed package."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED)}")
    from importlib.resources import files

    return Path(str(files("reverie"))) / "models" / name


def read_config(folder: str | Path) -> dict[str, Any] | None:
    """The ``reverie.json`` of a model folder, or ``None`` when it has none."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not a reverie model config (format != {FORMAT!r})")
    return cfg


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> Any:
    """Load a bundled model, a local folder or a Hugging Face Hub checkpoint (module docstring).

    A diffusers latent pipeline folder comes back as a :class:`reverie.LatentPipeline` of its
    family (``sample(prompt, ...)``, ``encode_prompt``, ``denoiser``, ``encode_image``,
    ``decode``): see :data:`reverie.pipelines.SUPPORTED` (Stable Diffusion 1.x/2.x, SDXL, SD3,
    Flux, ...); pickled weights are read only with ``trust_pickle=True``. Other latent or
    text-conditioned pipeline classes are refused with the list of supported ones.

    Masked-diffusion language models (the bundled ``tiny-json``, folders saved by
    :mod:`reverie.discrete`) load through :func:`reverie.discrete.load_model` and come back as
    token denoisers for :func:`reverie.discrete.generate`; transformers masked LMs load with
    that function directly.

    ``dtype`` casts the network (the solver state keeps its own dtype); ``device`` places it
    (default: CPU). ``process`` and
    ``prediction`` override what the checkpoint's config says (e.g. for a scheduler reverie
    cannot read). Errors: an unknown name lists the bundled models; a missing, corrupt or
    mismatched checkpoint says which file and why.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a model name or a folder, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if device is not None:
        device = _check_device(device, dtype)
    model = _load(text, path, dtype, process, prediction, trust_pickle, device)
    if device is not None and isinstance(model, LoadedModel):
        model.net.to(device)
    elif device is not None and isinstance(getattr(model, "model", None), nn.Module):
        model.model.to(device)  # a token denoiser
    return model


def _check_device(device: str | torch.device, dtype: torch.dtype | None) -> torch.device:
    """``device`` as a torch device that exists here and can hold ``dtype``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected e.g. cpu, cuda, cuda:1 or mps")\
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; expected cpu, cuda or mps")
    if dtype is not None:
        try:  # a dtype the device cannot compute in fails here, not mid-sampling
            (torch.ones(2, 2, device=dev, dtype=dtype) @ torch.ones(2, 2, device=dev,
                                                                   dtype=dtype)).sum().item()
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{dtype} is not supported on {dev}: {err}") from None
    return dev


def _load(text, path, dtype, process, prediction, trust_pickle, device) -> Any:
    if _is_discrete(text, path):
        from reverie.discrete import load_model

        return load_model(text if text in _discrete_bundled() else path)
    if path.exists():
        if _is_latent_pipeline(path):
            return _load_latent(path, None, dtype, process, prediction, trust_pickle, device)
        return _load_folder(path, None, dtype, process, prediction)
    if text in BUNDLED:
        folder = bundled_path(text)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the bundled model {text!r} is missing from the installation ({folder}); "
                f"reinstall reverie or retrain it with scripts/train_{text.replace('-', '_')}.py"
            )
        if _is_latent_pipeline(folder):  # the text-to-image ``shapes``
            return _load_latent(folder, text, dtype, process, prediction, trust_pickle)
        return _load_folder(folder, text, dtype, process, prediction)
    if _HUB_ID.match(text) and not text.startswith("."):
        local = _download(text)
        if _is_latent_pipeline(local):
            return _load_latent(local, text, dtype, process, prediction, trust_pickle, device)
        return _load_folder(local, text, dtype, process, prediction)
    check_model_name(text)
    raise AssertionError(f"{text!r} passed check_model_name but matched no loader")


def check_model_name(text: str) -> None:
    """Refuse (ValueError) a name :func:`load` cannot resolve: not a bundled model, not an
    existing folder, not a Hugging Face Hub id. Cheap: loads nothing."""
    path = Path(text).expanduser()
    if (text in BUNDLED or text in _discrete_bundled() or path.exists()
            or (_HUB_ID.match(text) and not text.startswith("."))):
        return
    raise ValueError(
        f"unknown model {text!r}: not a bundled model "
        f"({', '.join([*BUNDLED, *_discrete_bundled()])}), not an existing "
        "folder, and not a Hugging Face Hub id (owner/name)"
    )


def _is_latent_pipeline(folder: Path) -> bool:
    """A diffusers pipeline folder with a VAE, a text encoder or a transformer."""
    if not (folder / "model_index.json").is_file():
        return False
    from reverie.pipelines import is_latent_pipeline

    return is_latent_pipeline(folder)


def _load_latent(
    folder: Path,
    name: str | None,
    dtype: torch.dtype | None,
    process: GaussianProcess | None,
    prediction: str | None,
    trust_pickle: bool,
    device: torch.device | None = None,
) -> Any:
    from reverie.pipelines import load_pipeline

    return load_pipeline(
        folder, name=name, dtype=dtype, process=process, prediction=prediction,
        trust_pickle=trust_pickle, device=device,
    )


def _discrete_bundled() -> tuple[str, ...]:
    from reverie.discrete.loading import BUNDLED as DISCRETE

    return tuple(DISCRETE)


def _is_discrete(text: str, path: Path) -> bool:
    """A bundled discrete name, or a folder whose config says ``reverie-discrete`` (or a
    block-diffusion transformers model, e.g. DiffusionGemma)."""
    if text in _discrete_bundled():
        return True
    cfg = path / "config.json"
    if path.is_dir() and cfg.is_file():
        try:
            config = json.loads(cfg.read_text())
        except (ValueError, OSError):
            return False
        from reverie.discrete.loading import is_block_diffusion

        return config.get("format") == "reverie-discrete" or is_block_diffusion(config)
    return False


def _download(repo_id: str) -> Path:
    """Fetch the JSON and safetensors files of a Hub repository (never pickled weights)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("downloading from the Hub needs huggingface_hub") from err
    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as err:
        raise ValueError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}); "
            f"bundled models: {', '.join(BUNDLED)}"
        ) from None
    return Path(local)


def _load_folder(
    folder: Path,
    name: str | None,
    dtype: torch.dtype | None,
    process: GaussianProcess | None,
    prediction: str | None,
) -> LoadedModel:
    from reverie import diffusers_adapter as da

    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; give the model's folder")
    meta = read_config(folder)
    if meta is not None and "net" in meta:
        return _load_native(folder, meta, name, dtype, process, prediction)
    if (folder / "model_index.json").is_file():
        unet_dir, sched = da.find_pipeline_parts(folder)
    elif (folder / "config.json").is_file():
        unet_dir, sched = folder, da.find_unet_scheduler(folder)
    else:
        raise FileNotFoundError(
            f"no model in {folder}: expected {CONFIG_NAME} + {WEIGHTS_NAME} (reverie), "
            "model_index.json (diffusers pipeline) or config.json (diffusers UNet2DModel)"
        )
    spec = da.scheduler_spec(sched)
    unet = da.load_unet(unet_dir, dtype)
    meta = meta or {}
    num_classes = meta.get("num_classes")
    n_embeds = unet.config.get("num_class_embeds")
    if num_classes is None and n_embeds:
        num_classes = int(n_embeds)  # a plain diffusers class-conditional UNet: no null class
    null = bool(meta.get("null_class", False))
    if num_classes is not None and n_embeds is not None and num_classes + int(null) > n_embeds:
        raise ValueError(
            f"{folder}/{CONFIG_NAME} declares {num_classes} classes"
            f"{' plus a null class' if null else ''} but the UNet has {n_embeds} class embeddings"
        )
    fn = da.unet_function(unet, spec, null_label=num_classes if null else None)
    proc = process or spec.process
    if process is not None:
        fn.process = process
    pred = prediction or spec.prediction
    cfg = unet.config
    shape = (int(cfg["in_channels"]), int(cfg["sample_size"]), int(cfg["sample_size"]))
    meta.setdefault("scheduler", sched)
    return LoadedModel(
        name=name or meta.get("name") or folder.name,
        net=unet,
        process=proc,
        prediction=pred,
        denoiser=Denoiser(fn, proc, pred),
        sample_shape=shape,
        num_classes=num_classes,
        config={**meta, "null_class": null},
        path=folder,
    )


def _load_native(
    folder: Path,
    meta: dict[str, Any],
    name: str | None,
    dtype: torch.dtype | None,
    process: GaussianProcess | None,
    prediction: str | None,
) -> LoadedModel:
    from reverie import diffusers_adapter as da
    from reverie.nets import NETS

    net_cfg = meta["net"]
    cls = NETS.get(net_cfg.get("class"))
    if cls is None:
        raise ValueError(
            f"{folder}/{CONFIG_NAME} names net class {net_cfg.get('class')!r}; "
            f"known: {', '.join(NETS)}"
        )
    try:
        net = cls(**net_cfg.get("config", {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid net config in {folder}/{CONFIG_NAME}: {err}") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no weights in {folder}: expected {WEIGHTS_NAME}")
    da._load_state_strict(net, da._read_safetensors(weights), weights, folder / CONFIG_NAME)
    net.eval().requires_grad_(False)
    if dtype is not None:
        net = net.to(dtype)
    proc = process or process_from_config(meta["process"])
    null = bool(meta.get("null_class", False))
    num_classes = meta.get("num_classes")
    precond = meta.get("precondition")
    fn = ModelFunction(
        net,
        proc,
        time_input=meta.get("time_input", "process"),
        precondition=precond,
        sigma_data=float(meta.get("sigma_data") or 0.5),
        null_label=num_classes if null and num_classes is not None else None,
    )
    pred = prediction or meta.get("prediction", "x0")
    return LoadedModel(
        name=name or meta.get("name") or folder.name,
        net=net,
        process=proc,
        prediction=pred,
        denoiser=Denoiser(fn, proc, pred),
        sample_shape=tuple(meta["sample_shape"]),
        num_classes=num_classes,
        config=meta,
        path=folder,
    )

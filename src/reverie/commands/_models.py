"""Resolve model names for the likelihood / compose commands: bundled or local models from
:mod:`reverie.hub` (``NAME`` or ``NAME:LABEL`` for a class-conditional model) and the exact
toy mixtures of :mod:`reverie.compose.toys`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reverie.denoisers import DenoiserBase
from reverie.process import GaussianProcess, VPLinear


@dataclass
class ResolvedModel:
    name: str
    denoiser: DenoiserBase
    process: GaussianProcess
    sample_shape: tuple[int, ...]
    mixture: Any = None  # the exact GaussianMixture of a toy
    loaded: Any = None   # the hub LoadedModel, if any


def _hub():
    try:
        from reverie import hub
    except ImportError:
        return None
    return hub


def is_toy(spec: str) -> bool:
    from reverie.compose.toys import TOYS

    return spec.split(":", 1)[0] in TOYS


def known_names() -> str:
    from reverie.compose.toys import TOYS

    hub = _hub()
    bundled = list(getattr(hub, "BUNDLED", {})) if hub is not None else []
    return ", ".join(bundled + list(TOYS))


def load_hub(spec: str) -> ResolvedModel:
    """A hub model ``NAME`` or ``NAME:LABEL`` (the label bound, no guidance)."""
    hub = _hub()
    name, _, label = spec.partition(":")
    if hub is None:
        raise ValueError(f"unknown model {spec!r}; expected one of {known_names()}")
    try:
        loaded = hub.load(name)
    except (FileNotFoundError, KeyError) as err:
        raise ValueError(f"unknown model {name!r} ({err}); expected one of {known_names()} "
                         "or a model folder") from None
    den = loaded.denoiser
    if label:
        try:
            lab = int(label)
        except ValueError:
            names = list(loaded.config.get("class_names") or [])
            if label not in names:
                raise ValueError(f"unknown label {label!r} for {name!r}; use 0.."
                                 f"{(loaded.num_classes or 1) - 1} or one of {names}") from None
            lab = names.index(label)
        den = loaded.conditional(lab)
    return ResolvedModel(spec, den, loaded.process, tuple(loaded.sample_shape), loaded=loaded)


def load_toy(spec: str, process: GaussianProcess | None = None) -> ResolvedModel:
    from reverie.compose.energy import MixtureEnergy
    from reverie.compose.toys import toy

    gm = toy(spec)
    proc = process if process is not None else VPLinear()
    return ResolvedModel(spec, MixtureEnergy(gm, proc), proc, (2,), mixture=gm)


def resolve(specs: list[str]) -> list[ResolvedModel]:
    """Hub models first (they fix the process), then toys built with that process."""
    out: dict[int, ResolvedModel] = {}
    process = None
    for i, spec in enumerate(specs):
        if not is_toy(spec):
            out[i] = load_hub(spec)
            process = process or out[i].process
    for i, spec in enumerate(specs):
        if is_toy(spec):
            out[i] = load_toy(spec, process)
    return [out[i] for i in range(len(specs))]

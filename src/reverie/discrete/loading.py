"""Loading discrete (masked-diffusion) language models: the bundled ``tiny-json`` model, a
saved reverie folder, or a transformers masked LM.

A reverie folder holds ``model.safetensors`` and a ``config.json`` with ``"format":
"reverie-discrete"`` (architecture, tokenizer, mask id, process); ``scripts/train_tiny_json.py``
writes one. Any other folder or name is handed to :meth:`reverie.discrete.MaskedLM.from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from reverie.discrete.block import BlockCausalLM, TinyBlockTransformer
from reverie.discrete.denoiser import TokenDenoiser, TokenDenoiserBase
from reverie.discrete.process import MaskedProcess, UniformProcess

__all__ = ["BUNDLED", "load_model", "bundled_path", "ReverieBlockLM", "ReverieLM"]

#: Names of the models shipped inside the package.
BUNDLED = ("tiny-json", "tiny-json-block")


def bundled_path(name: str) -> Path:
    """The folder of a bundled model."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; expected one of {', '.join(BUNDLED)}")
    return Path(__file__).resolve().parent.parent / "models" / name


class ReverieLM(TokenDenoiser):
    """A :class:`~reverie.discrete.TokenDenoiser` loaded from a reverie folder, with its
    ``tokenizer``, the canvas ``length`` it was trained on, its ``pad_id``, the
    ``delimiter_ids`` AdaBlock ends blocks at, the ``network`` and the ``config``."""

    def __init__(self, network: torch.nn.Module, config: dict[str, Any], tokenizer: Any):
        proc_cfg = config.get("process", {"kind": "masked", "schedule": "linear"})
        kind = proc_cfg.get("kind", "masked")
        if kind not in ("masked", "uniform"):
            raise ValueError(
                f"unknown process kind {kind!r} in config.json; expected masked or uniform"
            )
        proc = (MaskedProcess if kind == "masked" else UniformProcess)(
            proc_cfg.get("schedule", "linear")
        )
        super().__init__(
            network,
            mask_id=config.get("mask_id"),
            vocab_size=int(config["model"]["vocab_size"]),
            process=proc,
            time_conditioned=bool(config.get("time_conditioned", False)),
            tokenizer=tokenizer,
            padding=True,  # TinyTransformer takes attention_mask= for left-padded rows
        )
        self.network = network
        self.config = config
        self.length = int(config.get("length", 0)) or None
        self.pad_id = config.get("pad_id")
        self.delimiter_ids = [tokenizer.encode(d)[0] for d in config.get("delimiters", [])]
        self.device = next(network.parameters()).device

    def __call__(
        self, x: torch.Tensor, t: float | torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.no_grad():
            return super().__call__(x, t, attention_mask)

    def __repr__(self) -> str:
        return (
            f"ReverieLM({self.config.get('architecture')}, length={self.length}, {self.process!r})"
        )


class ReverieBlockLM(BlockCausalLM):
    """A block-causal :class:`~reverie.discrete.block.BlockCausalLM` loaded from a reverie
    folder (``"architecture": "TinyBlockTransformer"``), with the same ``tokenizer``,
    ``length``, ``pad_id``, ``delimiter_ids``, ``network`` and ``config`` as
    :class:`ReverieLM`; ``generate(..., cache="prefix")`` runs its exact KV cache."""

    def __init__(self, network: torch.nn.Module, config: dict[str, Any], tokenizer: Any):
        super().__init__(
            network,
            vocab_size=int(config["model"]["vocab_size"]),
            mask_id=config.get("mask_id"),
            tokenizer=tokenizer,
        )
        self.config = config
        self.length = int(config.get("length", 0)) or None
        self.pad_id = config.get("pad_id")
        self.delimiter_ids = [tokenizer.encode(d)[0] for d in config.get("delimiters", [])]

    def __repr__(self) -> str:
        return f"ReverieBlockLM(block_size={self.block_size}, length={self.length})"


#: The networks a reverie folder may hold.
ARCHITECTURES = ("TinyTransformer", "TinyBlockTransformer")


def _load_reverie_folder(path: Path, device: str | torch.device | None) -> TokenDenoiserBase:
    from safetensors.torch import load_file

    from reverie.discrete.nets import TinyTransformer
    from reverie.discrete.tokenizer import CharTokenizer

    config = json.loads((path / "config.json").read_text())
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r} in {path / 'config.json'}; expected one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"missing weights file {weights}")
    cls = TinyBlockTransformer if arch == "TinyBlockTransformer" else TinyTransformer
    net = cls.from_config(config["model"])
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    if device is not None:
        net.to(device)
    tok = CharTokenizer.from_dict(config["tokenizer"])
    return (ReverieBlockLM if arch == "TinyBlockTransformer" else ReverieLM)(net, config, tok)


def is_block_diffusion(config: dict[str, Any]) -> bool:
    """A transformers config of a block-diffusion model reverie adapts (DiffusionGemma)."""
    return "DiffusionGemmaForBlockDiffusion" in (config.get("architectures") or [])


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> TokenDenoiserBase:
    """Load a discrete diffusion LM as a token denoiser.

    ``name_or_path`` -- a bundled name (``"tiny-json"``), a folder saved by reverie
    (``config.json`` with ``"format": "reverie-discrete"``), or a transformers folder / hub id
    (then ``kwargs`` go to :meth:`~reverie.discrete.MaskedLM.from_pretrained`, e.g.
    ``trust_remote_code=True`` for LLaDA / Dream). Nothing is downloaded for bundled models.
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        path = bundled_path(name_or_path)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the bundled model {name_or_path!r} has no weights at {path}; train them with "
                "scripts/train_tiny_json.py"
            )
        return _load_reverie_folder(path, device)
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        if config.get("format") == "reverie-discrete":
            return _load_reverie_folder(path, device)
        if is_block_diffusion(config):  # transformers DiffusionGemma (discrete.diffusion_gemma)
            from reverie.discrete.diffusion_gemma import DiffusionGemmaLM

            lm = DiffusionGemmaLM.from_pretrained(str(path), **kwargs)
            if device is not None:
                lm.model.to(device)
            return lm
    elif path.exists():
        raise ValueError(f"{path} is not a model folder (no config.json)")
    from reverie.discrete.hf import MaskedLM

    return MaskedLM.from_pretrained(str(name_or_path), device=device, **kwargs)

"""``reverie models``: list the bundled models."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reverie.discrete.loading import BUNDLED as DISCRETE
    from reverie.discrete.loading import bundled_path as discrete_path
    from reverie.hub import BUNDLED, bundled_path, read_config

    width = max(len(name) for name in [*BUNDLED, *DISCRETE])
    for name, description in BUNDLED.items():
        folder = bundled_path(name)
        try:
            cfg = read_config(folder) or {}
        except ValueError:
            cfg = {}
        shape = "x".join(map(str, cfg.get("sample_shape", []))) or "?"
        classes = cfg.get("num_classes")
        extra = f"shape {shape}" + (f", {classes} classes" if classes else "")
        missing = "" if folder.is_dir() else "  [missing from this installation]"
        print(f"{name:<{width}}  {description} ({extra}){missing}")
    for name in DISCRETE:
        cfg = json.loads((discrete_path(name) / "config.json").read_text())
        block = cfg["model"].get("block_size")
        kind = f"block-causal (blocks of {block}) " if block else ""
        print(f"{name:<{width}}  {kind}masked-diffusion language model, char-level "
              f"(length {cfg.get('length')}, vocabulary {cfg['model']['vocab_size']}); "
              "reverie generate --model " + name)
    return 0

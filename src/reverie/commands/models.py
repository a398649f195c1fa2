"""``reverie models``: list the bundled models."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reverie.hub import BUNDLED, bundled_path, read_config

    width = max(len(name) for name in BUNDLED)
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
    return 0

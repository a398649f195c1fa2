"""``reverie samplers``: list the samplers, one line each."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samplers", help="list the samplers (one line each)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reverie.samplers import SAMPLERS

    width = max(len(name) for name in SAMPLERS)
    for name, s in SAMPLERS.items():
        kind = "SDE" if s.stochastic else "ODE"
        print(
            f"{name:<{width}}  order {s.order} ({'nominal' if s.stochastic else 'measured'})  "
            f"{kind}  "
            f"{s.nfe_per_step} NFE/step  {s.description}"
        )
    return 0

"""The discrete processes and solvers of row M7 against exact laws (``reverie bench
discrete-processes``).

Every part samples with the *exact* denoiser of a small data law, so the only errors are the
solver's discretisation and the sampling noise; each table reports the TV distance of ``n``
samples to the data law per step count, and the sampling-noise floor (the mean TV of ``n``
exact samples over 5 sets).

* ``rates`` -- masked diffusion on a 3-symbol Markov chain (L = 3, the sharp test chain):
  ``tau_leaping``, ``theta_trapezoidal``, ``theta_rk2`` (2 model calls per step);
* ``d3pm`` -- D3PM's structured transitions (``gaussian``, ``band``) on a 5-symbol chain, L = 2;
* ``genmd4`` -- GenMD4 state-dependent masking (exponents 0.5, 1, 3), L = 3;
* ``blackout`` -- Blackout diffusion on one count 0..6: ``bridge`` and ``tau_leaping``.

Opt-in parts (``--parts trained_blackout,trained_genmd4,trained_rdm``; not run by default):
tiny trained examples of Blackout's loss, GenMD4's learned exponents and RDM's reweighted loss
beside their exact references and baselines (:mod:`reverie.bench._discrete_trained`).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from reverie.bench._discrete_trained import PARTS as TRAINED
from reverie.bench._discrete_trained import _floor, _tv
from reverie.bench.common import format_table, machine

STEPS = (2, 4, 8, 16, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=20000, help="samples per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--parts", default="rates,d3pm,genmd4,blackout",
                        help="comma-separated subset of rates, d3pm, genmd4, blackout, "
                             "trained_blackout, trained_genmd4, trained_rdm")
    parser.add_argument("--train-steps", type=int, default=2000,
                        help="Adam steps of the trained_* parts")
    parser.add_argument("--batch", type=int, default=256, help="batch of the trained_* parts")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam rate of the trained_* parts")


def _rates(args) -> dict[str, Any]:
    from reverie.discrete import generate
    from reverie.reference import MarkovChain

    chain = MarkovChain.random(3, torch.Generator().manual_seed(0), sharpness=2.0)
    _, p = chain.joint(3)
    rows = []
    for name in ("tau_leaping", "theta_trapezoidal", "theta_rk2"):
        for s in STEPS:
            out = generate(chain.denoiser(), length=3, steps=s, sampler=name, n=args.n,
                           generator=torch.Generator().manual_seed(args.seed + s),
                           return_stats=True)
            rows.append({"method": name, "steps": s, "nfe": out.nfe, "tv": _tv(out.tokens, p, 3)})
    return {"floor": _floor(p, args.n, args.seed), "rows": rows}


def _d3pm(args) -> dict[str, Any]:
    from reverie.discrete.d3pm import StructuredProcess
    from reverie.reference import MarkovChain

    chain = MarkovChain.random(5, torch.Generator().manual_seed(2), sharpness=1.5)
    _, p = chain.joint(2)
    rows = []
    for name, opts in (("gaussian", {}), ("band", {"bandwidth": 1})):
        for s in (4, 8, 16, 32):
            proc = StructuredProcess.make(name, 5, s, betas=(0.05, 1.0), **opts)
            x = proc.sample(proc.exact_model(chain), args.n, 2,
                            torch.Generator().manual_seed(args.seed + s))
            rows.append({"method": name, "steps": s, "nfe": s, "tv": _tv(x, p, 5)})
    return {"floor": _floor(p, args.n, args.seed), "rows": rows}


def _genmd4(args) -> dict[str, Any]:
    from reverie.discrete.genmd4 import GenMD4Process
    from reverie.reference import MarkovChain

    chain = MarkovChain.random(3, torch.Generator().manual_seed(4), sharpness=1.5)
    _, p = chain.joint(3)
    proc = GenMD4Process([0.5, 1.0, 3.0])
    rows = []
    for s in (4, 8, 16, 32):
        x = proc.sample(proc.exact_denoiser(chain), args.n, 3, s,
                        torch.Generator().manual_seed(args.seed + s))
        rows.append({"method": "ancestral", "steps": s, "nfe": s, "tv": _tv(x, p, 3)})
    return {"floor": _floor(p, args.n, args.seed), "rows": rows}


def _blackout(args) -> dict[str, Any]:
    from reverie.discrete.blackout import BlackoutProcess

    prior = torch.tensor([0.05, 0.3, 0.1, 0.05, 0.2, 0.25, 0.05], dtype=torch.float64)
    proc = BlackoutProcess(6)
    rows = []
    for method in ("bridge", "tau_leaping"):
        for s in (4, 8, 16, 32, 64):
            x = proc.sample(proc.exact_model(prior), args.n, 1, s, method=method,
                            generator=torch.Generator().manual_seed(args.seed + s))
            rows.append({"method": method, "steps": s, "nfe": s, "tv": _tv(x, prior, 7)})
    return {"floor": _floor(prior, args.n, args.seed), "rows": rows}


PARTS = {"rates": _rates, "d3pm": _d3pm, "genmd4": _genmd4, "blackout": _blackout, **TRAINED}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    parts = [s.strip() for s in args.parts.split(",")]
    for name in parts:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; expected one of {', '.join(PARTS)}")
    result: dict[str, Any] = {"n": args.n, "seed": args.seed}
    for name in parts:
        res = PARTS[name](args)
        result[name] = res
        if name in TRAINED:
            cols = list(res["rows"][0])
            for r in res["rows"][1:]:
                cols += [c for c in r if c not in cols]
            print(f"\n## {name}: {res['steps']} training steps; "
                  + ", ".join(f"{k} {v}" for k, v in res.items() if k not in ("rows", "steps"))
                  + "\n")
            print(format_table(cols, [[r.get(c, "") for c in cols] for r in res["rows"]]))
            continue
        print(f"\n## {name}: TV of n = {args.n} samples to the data law "
              f"(noise floor {res['floor']:.4f})\n")
        print(format_table(["method", "steps", "NFE", "TV", "TV / floor"],
                           [[r["method"], r["steps"], r["nfe"], r["tv"], r["tv"] / res["floor"]]
                            for r in res["rows"]]))
    print(f"\nmachine: {machine()}")
    return result

"""Masked-diffusion samplers: TV to an exact joint, JSON parse rate and speed on tiny-json.

Part 1 -- exact reference. A binary Markov chain of length L = 8 with strongly dependent
neighbours (:class:`reverie.reference.MarkovChain`) is the data; its exact conditionals are
the denoiser. For every sampler and steps in {L/8, L/4, L/2, L} we draw ``n`` samples and
report the total variation between their empirical law and the exact joint (all 2^8
sequences). The sampling-noise floor is the TV of ``n`` exact samples (the mean over a few
independent sets); the issue's target compares two exact-sample sets of the same size, which
we report too.

Part 2 -- tiny-json. For every sampler and steps in {L/8, L/4, L/2, L} (L = 64): the fraction
of unconstrained samples that parse as JSON and the model calls. Tokens per second at steps = L
are measured warm and interleaved: the accuracy run of every cell is its (untimed) warm-up, then
``--rounds`` timed rounds each run every sampler once, alternating forward and reverse order,
and the median per sampler is reported (also as a ratio to ancestral sampling). Every sampler
and the ancestral baseline run the same float32 network; categorical draws are float64.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch

from reverie.bench.common import Timer, format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-ref", type=int, default=20000, help="samples per reference run")
    parser.add_argument("--n-json", type=int, default=100, help="samples per tiny-json run")
    parser.add_argument("--samplers", default=None, help="comma-separated subset of SAMPLERS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-json", action="store_true", help="only the exact-reference part")
    parser.add_argument("--skip-reference", action="store_true", help="only the tiny-json part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the tiny-json part")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds of the tiny-json speed (median)"
    )


def _or_dash(value: float | None) -> float | str:
    return "—" if value is None else value


def _parse_rate(model, x: torch.Tensor) -> float:
    ok = 0
    for row in x:
        try:
            json.loads(model.decode(row))
            ok += 1
        except ValueError:
            pass
    return ok / x.shape[0]


def _steps_ok(info, steps: int, n_gen: int) -> bool:
    if info.steps_rule == "tokens":
        return steps == n_gen
    return True


def _reference_part(names, args) -> tuple[list[dict], dict]:
    from reverie.discrete import SAMPLERS, generate
    from reverie.reference import MarkovChain

    L, V, n = 8, 2, args.n_ref
    chain = MarkovChain([0.5, 0.5], [[0.85, 0.15], [0.3, 0.7]])
    den = chain.denoiser()
    _, p = chain.joint(L)
    # noise floor: exact sample sets of the same size, against the law and against each other
    sets = [chain.sample(n, L, torch.Generator().manual_seed(1000 + k)) for k in range(4)]
    floor = sum(chain.total_variation(s) for s in sets) / len(sets)

    def emp(x):
        return torch.bincount(chain.index(x), minlength=V**L).double() / x.shape[0]

    two_sets = 0.5 * float((emp(sets[0]) - emp(sets[1])).abs().sum())
    rows = []
    for name in names:
        info = SAMPLERS[name]
        for steps in (L // 8, L // 4, L // 2, L):
            if not _steps_ok(info, steps, L):
                continue
            opts = {"delimiters": [0]} if name == "adablock" else {}
            out = generate(
                den,
                length=L,
                steps=steps,
                sampler=name,
                n=n,
                return_stats=True,
                generator=torch.Generator().manual_seed(args.seed + steps),
                **opts,
            )
            tv = chain.total_variation(out.tokens)
            tv_set = 0.5 * float((emp(out.tokens) - emp(sets[1])).abs().sum())
            rows.append(
                {
                    "sampler": name,
                    "steps": steps,
                    "nfe": out.nfe,
                    "tv": tv,
                    "tv_over_floor": tv / floor,
                    "tv_vs_exact_set": tv_set,
                    "tv_vs_exact_set_over_two_set_floor": tv_set / two_sets,
                }
            )
    return rows, {
        "length": L,
        "vocab": V,
        "n": n,
        "floor_tv_to_law": floor,
        "floor_two_exact_sets": two_sets,
        "analytic_floor": chain.tv_noise_floor(n, L),
    }


def _json_part(names, args) -> list[dict]:
    from reverie.discrete import SAMPLERS, generate, load_model

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    model = load_model("tiny-json")
    L, n = model.length, args.n_json
    order = ["ancestral"] + [s for s in names if s != "ancestral"]
    cells = [
        (name, steps)
        for name in order
        for steps in (L // 8, L // 4, L // 2, L)
        if _steps_ok(SAMPLERS[name], steps, L)
    ]

    def draw(name: str, steps: int):
        return generate(
            model,
            length=L,
            steps=steps,
            sampler=name,
            n=n,
            return_stats=True,
            temperature=args.temperature,
            generator=torch.Generator().manual_seed(args.seed + steps),
        )

    outs = {cell: draw(*cell) for cell in cells}  # accuracy; also each cell's warm-up run
    timed = [cell for cell in cells if cell[1] == L]
    seconds: dict[tuple[str, int], list[float]] = {cell: [] for cell in timed}
    for r in range(args.rounds):  # interleaved: every sampler once per round
        for cell in timed if r % 2 == 0 else timed[::-1]:
            with Timer() as tm:
                draw(*cell)
            seconds[cell].append(tm.seconds)
    tps = {cell: n * L / statistics.median(seconds[cell]) for cell in timed}
    rows = []
    for cell, out in outs.items():
        name, steps = cell
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                "nfe": out.nfe,
                "row_evals": out.row_evals,
                "parse_rate": _parse_rate(model, out.tokens),
                "tokens_per_s": tps.get(cell),
                "speed_vs_ancestral": (
                    tps[cell] / tps[("ancestral", L)] if cell in tps else None
                ),
                "seconds_per_round": seconds.get(cell),
            }
        )
    return [r for r in rows if r["sampler"] in names]


def _reference_table(names, args) -> dict[str, Any]:
    """Part 1, printed; its rows and noise floors."""
    ref_rows, ref_info = _reference_part(names, args)
    print(
        f"## exact reference: binary Markov chain, L = {ref_info['length']}, "
        f"n = {ref_info['n']} samples per run"
    )
    print(
        f"noise floor: TV(exact samples, law) = {ref_info['floor_tv_to_law']:.4f} "
        f"(analytic {ref_info['analytic_floor']:.4f}); TV(two exact sets) = "
        f"{ref_info['floor_two_exact_sets']:.4f}\n"
    )
    print(
        format_table(
            [
                "sampler",
                "steps",
                "NFE",
                "TV to exact law",
                "TV / floor",
                "TV vs exact set / 2-set floor",
            ],
            [
                [
                    r["sampler"],
                    r["steps"],
                    r["nfe"],
                    r["tv"],
                    r["tv_over_floor"],
                    r["tv_vs_exact_set_over_two_set_floor"],
                ]
                for r in ref_rows
            ],
        )
    )
    return {**ref_info, "rows": ref_rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.discrete import SAMPLERS

    torch.set_num_threads(args.threads)
    names = (
        list(SAMPLERS) if args.samplers is None else [s.strip() for s in args.samplers.split(",")]
    )
    for s in names:
        SAMPLERS[s]  # unknown names raise, listing the valid ones
    result: dict[str, Any] = {}
    if not args.skip_reference:
        result["reference"] = _reference_table(names, args)
    if not args.skip_json:
        json_rows = _json_part(names, args)
        print(
            f"\n## tiny-json: L = 64, n = {args.n_json} unconstrained samples per run, "
            f"temperature {args.temperature}; tokens/s at steps = L: median of {args.rounds} "
            "warm interleaved rounds (float32 network, float64 draws)\n"
        )
        print(
            format_table(
                ["sampler", "steps", "NFE", "parse rate", "tokens/s", "speed vs ancestral"],
                [
                    [
                        r["sampler"],
                        r["steps"],
                        r["nfe"],
                        r["parse_rate"],
                        _or_dash(r["tokens_per_s"]),
                        _or_dash(r["speed_vs_ancestral"]),
                    ]
                    for r in json_rows
                ],
            )
        )
        result["tiny_json"] = {
            "n": args.n_json,
            "temperature": args.temperature,
            "rounds": args.rounds,
            "dtype": {"network": "float32", "draws": "float64"},
            "rows": json_rows,
        }
    print(f"\nmachine: {machine()}")
    return result

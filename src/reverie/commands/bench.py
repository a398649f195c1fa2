"""``reverie bench NAME``: run a benchmark, print its table, write JSON results."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from reverie import bench

    parser = sub.add_parser(
        "bench", help="run a benchmark (tables + JSON under benchmarks/results)"
    )
    sub_bench = parser.add_subparsers(dest="bench_name", metavar="NAME")
    for name, module in sorted(bench.available().items()):
        p = sub_bench.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument(
            "--out", default=None, help="JSON result path (default benchmarks/results/NAME.json)"
        )
        module.add_arguments(p)
        p.set_defaults(func=_runner(name, module))
    parser.set_defaults(func=lambda args: parser.print_help() or 1)


def _runner(name, module):
    def run(args: argparse.Namespace) -> int:
        from reverie.bench.common import save_result

        result = module.run(args)
        path = save_result(name, result, args.out)
        print(f"\nresults written to {path}")
        return 0

    return run

"""The ``reverie`` command.

Each subcommand lives in its own module under :mod:`reverie.commands` and exposes
``register(subparsers)``; this file only discovers them, so adding a command never touches
another command's code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback

from reverie import commands
from reverie._checks import UserError

#: Exceptions that mean bad input: UserError, and the ValueError / TypeError that argument
#: checks raise (NonFiniteError is a FloatingPointError, so it is not among them), and files
#: that cannot be read or written.
USER_ERRORS = (UserError, ValueError, TypeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverie",
        description="Inference algorithms for diffusion models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return _call(args)
    except USER_ERRORS as err:
        # the user's input (an argument, an option, a file): one clear line, no traceback
        print(f"reverie {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        # anything else is a failure of reverie (or of the model), e.g. NonFiniteError: the
        # traceback says where
        traceback.print_exc()
        print(f"reverie {args.command}: internal error (the traceback above says where)",
              file=sys.stderr)
        return 1


def _call(args: argparse.Namespace) -> int:
    """Run the command; under torchrun, inside the process group (reverie.distributed)."""
    if "WORLD_SIZE" not in os.environ:  # not under a launcher: no torch import here
        return int(args.func(args) or 0)
    from reverie.distributed import launched, launched_by_torchrun

    if launched_by_torchrun() and not getattr(args, "distributed_ok", False):
        raise UserError(f"reverie {args.command} does not run under torchrun yet (sample, "
                        "generate, likelihood, search and restore do); run it without torchrun")
    with launched(getattr(args, "device", None)):
        return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

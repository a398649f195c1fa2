"""Subcommands of the ``reverie`` command line; each module defines ``register(subparsers)``."""

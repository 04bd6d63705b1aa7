"""The ``latentlens`` command line.

Each command lives in its own module under :mod:`latentlens.cli.commands` and
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Commands that compute something accept ``--json`` and then print exactly one
JSON document on stdout. User mistakes (:class:`~latentlens.errors.LatentlensError`)
are printed as one clear message with exit status 2, never as a traceback.

Example::

    $ latentlens --help
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from types import ModuleType
from typing import Any
from collections.abc import Sequence

from latentlens.errors import LatentlensError


def command_modules() -> list[ModuleType]:
    from latentlens.cli import commands

    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda module: module.NAME)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per module in ``latentlens.cli.commands``."""
    from latentlens import __version__

    parser = argparse.ArgumentParser(
        prog="latentlens",
        description="Look inside Diffusion Transformers and edit images through what you find there.",
    )
    parser.add_argument("--version", action="version", version=f"latentlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        # argparse %-formats a sub-command's help (not its description): HELP is plain text, so escape it there
        sub = subparsers.add_parser(module.NAME, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(sub)
        sub.add_argument(
            "--verbose",
            action="store_true",
            help="show third-party warnings, notices and progress bars (hidden by default).",
        )
        sub.set_defaults(_run=module.run)
    return parser


def print_json(document: Any) -> None:
    """Print one JSON document on stdout (the contract of ``--json``)."""
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from latentlens.cli.quiet import quiet_third_party

    quiet_third_party(verbose=getattr(args, "verbose", False))
    try:
        return int(args._run(args) or 0)
    except LatentlensError as error:
        print(f"latentlens {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latentlens {args.command}: interrupted; finished work is kept on disk.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``latentlens sites --model MODEL``: list every name a model can record (filter with a glob).

Example::

    $ latentlens sites --model toy --match 'blocks.0.*'
    blocks.0.attn.img2img
    ...
"""

from __future__ import annotations

import argparse
import fnmatch

NAME = "sites"
HELP = "List the site names a model can record (what --sites and --attention accept)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP

    parser.add_argument(
        "--model",
        default="toy",
        help=MODEL_HELP,
    )
    parser.add_argument("--match", metavar="GLOB", default=None, help="only names matching this glob.")
    parser.add_argument("--json", action="store_true", help="print a JSON list.")


def run(args: argparse.Namespace) -> int:
    from latentlens.errors import ConfigError
    from latentlens.models import load_pipeline
    from latentlens.recorder import site_names
    from latentlens.size_plan import config_transformer

    try:
        target = config_transformer(args.model)  # the names from the configs alone: no weights are read
    except ConfigError:
        target = load_pipeline(args.model)  # a folder whose configs alone do not say
    names = list(site_names(target))
    if args.match:
        names = fnmatch.filter(names, args.match)
    if args.json:
        from latentlens.cli import print_json

        print_json(names)
    else:
        print("\n".join(names))
    return 0


__all__ = ["NAME", "HELP", "add_arguments", "run"]

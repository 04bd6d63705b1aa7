"""Option names shared by every command, and deprecated spellings that still work.

One name per meaning across commands: ``--num-inference-steps`` is the number of
denoising steps (generate, record, edit); ``--steps`` selects *recorded* steps
(record, analyze). An old spelling is kept as a hidden alias that warns once.

Example::

    add_denoising_steps(parser, help="denoising steps (default: the model's).")
    # `latentlens generate --steps 20` still works, with a deprecation warning
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


#: the ``--model`` help shared by every command
MODEL_HELP = (
    "'toy' (default: the bundled MM-DiT), 'toy-pixart', 'toy-unet' (the other toy architectures, once "
    "trained), a pipeline folder, or a cached hub id."
)


class DeprecatedAlias(argparse.Action):
    """Store the value under the new option's ``dest`` and say which spelling replaces this one."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated here; use {self.new} "
            "(--steps now always means recorded steps).",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_denoising_steps(parser: argparse.ArgumentParser | Any, dest: str = "steps", help: str = "") -> None:
    """``--num-inference-steps N`` (denoising steps) plus the deprecated ``--steps N`` spelling."""
    parser.add_argument(
        "--num-inference-steps",
        dest=dest,
        type=int,
        default=None,
        metavar="N",
        help=help or "denoising steps (default: the model's).",
    )
    parser.add_argument(
        "--steps",
        dest=dest,
        type=int,
        default=None,
        action=DeprecatedAlias,
        new="--num-inference-steps",
    )


__all__ = ["MODEL_HELP", "DeprecatedAlias", "add_denoising_steps"]

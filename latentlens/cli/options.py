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


#: floating dtypes the commands accept: for a pipeline's weights (``--model-dtype``) and recorded data (``--dtype``)
DTYPES = ("float32", "float16", "bfloat16")


def add_device_options(parser: argparse.ArgumentParser | Any) -> None:
    """``--device`` (where the pipeline runs; default: the GPU when there is one) and ``--model-dtype``."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="where the pipeline runs: auto (default: cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N, mps.",
    )
    parser.add_argument(
        "--model-dtype",
        choices=DTYPES,
        default=None,
        help="dtype the model's weights run in (default float32, as diffusers loads them); e.g. bfloat16 on a GPU.",
    )


def resolve_device(value: str) -> str:
    """The torch device for ``--device`` (``auto`` picks cuda when visible), checked before any model loads.

    Example::

        resolve_device("auto")    # 'cuda' on a GPU machine, 'cpu' elsewhere
        resolve_device("cuda:3")  # ConfigError on a machine with fewer GPUs, naming how many it has
    """
    import torch

    from latentlens.errors import ConfigError

    text = str(value).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {value!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {value!r}: this machine has no usable CUDA GPU; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {value!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {value!r}: MPS is not available here; use --device cpu.")
    elif device.type != "cpu":
        raise ConfigError(f"--device {value!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return str(device)


def model_dtype(value: str | None) -> Any:
    """The torch dtype for ``--model-dtype`` (None: the loader's default, float32)."""
    if value is None:
        return None
    import torch

    return getattr(torch, value)


__all__ = [
    "MODEL_HELP",
    "DTYPES",
    "DeprecatedAlias",
    "add_denoising_steps",
    "add_device_options",
    "resolve_device",
    "model_dtype",
]

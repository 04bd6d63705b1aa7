"""Quiet by default: third-party warnings, notices and progress bars are hidden unless ``--verbose``.

latentlens' own progress (its ``record`` bar, ``analyze:`` lines) and every error stay.
Call :func:`quiet_third_party` before the heavy libraries are imported: some read their
verbosity from the environment once, at import.

Example::

    from latentlens.cli.quiet import quiet_third_party
    quiet_third_party(verbose=False)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

_LIBRARIES = (
    "torch",
    "torchvision",
    "accelerate",
    "transformers",
    "diffusers",
    "huggingface_hub",
    "sentence_transformers",
    "umap",
    "numba",
    "sklearn",
    "dash",
    "werkzeug",
)


def quiet_third_party(verbose: bool = False) -> None:
    """Silence the libraries' warnings, info logs and progress bars (``verbose=True`` leaves them on)."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in _LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
        logging.getLogger(name).setLevel(logging.ERROR)
    # torchvision's and accelerate's notices are emitted as plain UserWarnings from their own code
    warnings.filterwarnings("ignore", category=FutureWarning)
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        if module in sys.modules:  # already imported: switch its bars off now
            _disable_bars(sys.modules[module])
        elif not any(isinstance(f, _AfterImport) and module in f.targets for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(module, _disable_bars))  # ... or as soon as it is imported


def _disable_bars(module: Any) -> None:
    disable = getattr(module, "disable_progress_bar", None)
    if callable(disable):
        disable()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run ``callback(module)`` right after module ``name`` is first imported (then step aside)."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.targets = {name}
        self.callback = callback

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.targets:
            return None
        self.targets.discard(name)
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, callback = spec.loader, self.callback
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            callback(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


__all__ = ["quiet_third_party"]

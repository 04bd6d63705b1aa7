"""Per-architecture adapters; :func:`adapter_for` picks one by the transformer's class.

To support a new architecture, add one file here defining an :class:`~latentlens.adapters.base.Adapter`
subclass (see ``sd3.py`` for a complete example) and list it in :data:`ADAPTERS`.
"""

from __future__ import annotations

from typing import Any

from latentlens.adapters.base import Adapter
from latentlens.adapters.flux import FluxAdapter
from latentlens.adapters.pixart import PixArtAdapter
from latentlens.adapters.sd3 import SD3Adapter
from latentlens.errors import ConfigError

ADAPTERS: tuple[type[Adapter], ...] = (SD3Adapter, FluxAdapter, PixArtAdapter)


class UnsupportedModelError(ConfigError):
    """The transformer's class has no adapter."""


def supported_classes() -> list[str]:
    return [c for a in ADAPTERS for c in a.transformer_classes]


def split_target(target: Any) -> tuple[Any, Any]:
    """``(transformer, pipeline or None)`` from a pipeline (has ``.transformer``) or a bare transformer."""
    transformer = getattr(target, "transformer", None)
    if transformer is not None:
        return transformer, target
    return target, None


def adapter_for(target: Any) -> Adapter:
    """The adapter for a pipeline or bare transformer; raises :class:`UnsupportedModelError` otherwise."""
    transformer, pipe = split_target(target)
    names = {cls.__name__ for cls in type(transformer).__mro__}
    for adapter_cls in ADAPTERS:
        if names & set(adapter_cls.transformer_classes):
            return adapter_cls(transformer, pipe)
    raise UnsupportedModelError(
        f"latentlens has no adapter for {type(transformer).__name__} (the target's transformer); supported "
        f"classes are {', '.join(supported_classes())}. Pass a pipeline whose .transformer is one of them, or "
        "add an adapter: one file in latentlens/adapters/ subclassing latentlens.adapters.base.Adapter "
        "(see sd3.py), listed in latentlens/adapters/__init__.py ADAPTERS."
    )


__all__ = ["ADAPTERS", "Adapter", "UnsupportedModelError", "adapter_for", "split_target", "supported_classes"]

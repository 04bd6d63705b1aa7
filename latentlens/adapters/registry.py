"""The architecture registry: which adapter (and so which hooks, text segments, widths and
:class:`~latentlens.adapters.generation.EditModel`) a pipeline or transformer gets.

Dispatch is by class hierarchy: an adapter matches when one of its ``transformer_classes`` is in
the MRO of the target's transformer and, if it names ``pipeline_classes``, one of them is in the
MRO of the pipeline; adapters that name pipelines win over those that do not, so a subclass of a
supported class is recorded *and* edited like its parent.

Example::

    from latentlens.adapters import adapter_for
    adapter = adapter_for(pipe)
    adapter.site_width("text.pooled"), [s.offset for s in adapter.text_segments()]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from latentlens import compat
from latentlens.adapters.base import Adapter
from latentlens.adapters.flux import FluxAdapter
from latentlens.adapters.generation import EditModel
from latentlens.adapters.pixart import PixArtAdapter
from latentlens.adapters.sd3 import SD3Adapter
from latentlens.adapters.toy import ToyAdapter, ToyPixArtAdapter, ToyUNetAdapter
from latentlens.adapters.unet import UNetAdapter
from latentlens.errors import ConfigError

#: every adapter, most specific first (one line per architecture file)
ADAPTERS: tuple[type[Adapter], ...] = (
    ToyAdapter, ToyPixArtAdapter, ToyUNetAdapter, SD3Adapter, FluxAdapter, PixArtAdapter, UNetAdapter,
)  # fmt: skip


class UnsupportedModelError(ConfigError):
    """The transformer's class has no adapter."""


def supported_classes() -> list[str]:
    """Transformer class names some adapter handles, e.g. ``['SD3Transformer2DModel', ...]``."""
    return list(dict.fromkeys(c for a in ADAPTERS for c in a.transformer_classes))


def _denoiser_attribute_value(target: Any) -> Any:
    """The pipeline's denoiser attribute as set (a torch.compile wrapper stays wrapped), or None."""
    for attribute in dict.fromkeys(a.denoiser_attribute for a in ADAPTERS):
        denoiser = getattr(target, attribute, None)
        if isinstance(denoiser, nn.Module) and denoiser is not target:
            return denoiser
    return None


def split_target(target: Any) -> tuple[Any, Any]:
    """``(denoiser, pipeline or None)`` from a pipeline or a bare denoiser module.

    A pipeline holds its denoiser in the attribute some adapter names (``denoiser_attribute``:
    ``.transformer`` for DiTs, ``.unet`` for UNets); anything else is taken as the bare module.
    """
    denoiser = _denoiser_attribute_value(target)
    if denoiser is not None:
        return compat.unwrap_compiled(denoiser), target
    return compat.unwrap_compiled(target), None


def compiled_parts(target: Any) -> list[str]:
    """Where ``torch.compile`` sits on the target's denoiser: ``["the denoiser (torch.compile wrapper)",
    "transformer_blocks.0 (Module.compile)", ...]``; empty when nothing is compiled."""
    transformer, pipe = split_target(target)
    wrapped = target if pipe is None else _denoiser_attribute_value(pipe)
    found = ["the denoiser (a torch.compile wrapper)"] if wrapped is not transformer else []
    for path, module in transformer.named_modules():
        if compat.compiled_in_place(module):
            found.append(f"{path or 'the denoiser'} (compiled in place with Module.compile)")
    return found


def _class_names(obj: Any) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__} if obj is not None else set()


def adapter_class_for(target: Any) -> type[Adapter]:
    """The adapter class for a pipeline or bare transformer; :class:`UnsupportedModelError` otherwise."""
    transformer, pipe = split_target(target)
    transformer_names, pipe_names = _class_names(transformer), _class_names(pipe)
    matches = [a for a in ADAPTERS if transformer_names & set(a.transformer_classes)]
    for adapter_cls in matches:
        if not adapter_cls.pipeline_classes or pipe_names & set(adapter_cls.pipeline_classes):
            return adapter_cls
    raise UnsupportedModelError(
        f"latentlens has no adapter for {type(transformer).__name__} (the target's transformer); supported "
        f"classes are {', '.join(supported_classes())}. Pass a pipeline whose denoiser (.transformer, .unet) is "
        "one of them, or "
        "add an adapter: one file in latentlens/adapters/ subclassing latentlens.adapters.base.Adapter "
        "(see sd3.py), listed in ADAPTERS of latentlens/adapters/registry.py."
    )


def adapter_for(target: Any) -> Adapter:
    """The adapter for a pipeline or bare transformer; raises :class:`UnsupportedModelError` otherwise."""
    transformer, pipe = split_target(target)
    return adapter_class_for(target)(transformer, pipe)


def edit_model_for(pipe: Any, **kwargs: Any) -> EditModel:
    """The architecture's :class:`EditModel` around ``pipe`` (keyword arguments go to its constructor)."""
    adapter = adapter_for(pipe)
    model_cls = adapter.edit_model
    if model_cls is None or split_target(pipe)[1] is None:
        kinds = ", ".join(dict.fromkeys(a.edit_model.kind for a in ADAPTERS if a.edit_model is not None))
        raise ConfigError(
            f"The EMS editor has no support for {type(pipe).__name__} (adapter {type(adapter).__name__}); it "
            f"edits pipelines of these architectures: {kinds}. Pass one of those pipelines."
        )
    return model_cls(pipe, adapter=adapter, **kwargs)


def site_width(target: Any, name: str) -> int | None:
    """Channel width of site ``name`` in ``target`` (None where it has no single channel width).

    Example: ``site_width(sd3_pipe, "text.pooled")`` → 2048; ``site_width(flux_pipe, "text.pooled")`` → 768.
    """
    return adapter_for(target).site_width(name)


def offline_tokenizer(model_id: str, pipeline_class: str = "") -> Any:
    """The first text segment's tokenizer of a recorded run's model, loaded offline, or None.

    ``model_id`` and ``pipeline_class`` are what a run's manifest says (``model.id``,
    ``model.pipeline_class``); nothing is downloaded.
    """
    for adapter_cls in ADAPTERS:
        named = model_id in getattr(adapter_cls, "model_names", ())  # the bundled toy models' names
        if adapter_cls.pipeline_classes and pipeline_class not in adapter_cls.pipeline_classes and not named:
            continue
        try:
            tokenizer = adapter_cls.offline_tokenizer(model_id, pipeline_class)
        except (OSError, ValueError):  # an unreadable tokenizer folder: labels fall back to indices
            tokenizer = None
        if tokenizer is not None:
            return tokenizer
    return None


__all__ = [
    "ADAPTERS",
    "UnsupportedModelError",
    "adapter_class_for",
    "adapter_for",
    "compiled_parts",
    "edit_model_for",
    "offline_tokenizer",
    "site_width",
    "split_target",
    "supported_classes",
]

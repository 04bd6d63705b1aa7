"""Per-architecture adapters: one file per architecture, found by :func:`adapter_for`.

An architecture file (``sd3.py``, ``flux.py``, ``pixart.py``, ``toy.py``) holds every fact its
pipelines imply: the hook layout (sites and attention specs), the text segments, site widths and the
:class:`EditModel` that encodes prompts, predicts, (de)noises and decodes. To support a new
architecture, add one such file and list its adapter in ``ADAPTERS`` of ``registry.py``.
"""

from __future__ import annotations

from latentlens.adapters.base import Adapter, TextSegment
from latentlens.adapters.generation import EditModel, TextEmbeds
from latentlens.adapters.registry import (
    ADAPTERS,
    UnsupportedModelError,
    adapter_class_for,
    adapter_for,
    compiled_parts,
    edit_model_for,
    offline_tokenizer,
    site_width,
    split_target,
    supported_classes,
)

__all__ = [
    "ADAPTERS",
    "Adapter",
    "EditModel",
    "TextEmbeds",
    "TextSegment",
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

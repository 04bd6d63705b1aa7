"""The editor's view of a pipeline: :class:`EditModel` (defined with the architecture registry).

The base class and :class:`TextEmbeds` live in :mod:`latentlens.adapters.generation`; each
architecture's subclass lives in its adapter file. This module keeps the editor's import path.

Example::

    model = EditModel.wrap(latentlens.load_pipeline("toy"))
    cond = model.encode(["a small red circle on the left on a gray background"])
    images = model.decode(model.generate(cond, seed=0))   # [1, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

from latentlens.adapters.flux import FluxEditModel
from latentlens.adapters.generation import EditModel, TextEmbeds
from latentlens.adapters.pixart import PixArtEditModel
from latentlens.adapters.sd3 import SD3EditModel
from latentlens.adapters.toy import ToyEditModel

__all__ = ["EditModel", "FluxEditModel", "PixArtEditModel", "SD3EditModel", "TextEmbeds", "ToyEditModel"]

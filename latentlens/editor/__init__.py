"""The EMS editor (Extract → Manipulate → Sample), its baselines, image I/O and the edit benchmark.

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")
    result = latentlens.edit(pipe, "in.png", target="a small blue circle on the left on a gray background")
    result.save("out.png")
"""

from __future__ import annotations

from latentlens.editor.baselines import BASELINES, flowedit, prompt_swap, sdedit
from latentlens.editor.describe import (
    Describer,
    EndpointDescriber,
    ShapesDescriber,
    TextDescriber,
    TransformersDescriber,
    make_describer,
    shapes_target,
)
from latentlens.editor.editor import MODES, EditResult, EMSEditor, edit
from latentlens.editor.images import load_image, save_image
from latentlens.editor.manipulate import apply_text_direction, changed_tokens, encode_pair, interpolate
from latentlens.editor.model import EditModel, TextEmbeds
from latentlens.editor.sample import MASKS, EMSParams, attention_mask, dds_update, diff_mask, project

__all__ = [
    "BASELINES",
    "Describer",
    "EMSEditor",
    "EMSParams",
    "EditModel",
    "EditResult",
    "EndpointDescriber",
    "MASKS",
    "MODES",
    "ShapesDescriber",
    "TextDescriber",
    "TextEmbeds",
    "TransformersDescriber",
    "apply_text_direction",
    "attention_mask",
    "changed_tokens",
    "dds_update",
    "diff_mask",
    "edit",
    "encode_pair",
    "flowedit",
    "interpolate",
    "load_image",
    "make_describer",
    "project",
    "prompt_swap",
    "save_image",
    "sdedit",
    "shapes_target",
]

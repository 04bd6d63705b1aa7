"""The shapes world: a procedural ground-truth world for measuring interpretability claims (docs/design.md ("The shapes world")).

One flat-coloured shape on a uniform background; 4 shapes x 6 colours x 2 sizes x 5 positions x
3 backgrounds = 720 combinations, each with a deterministic renderer, captions with known word
spans, and an oracle that reads the attributes back from any image.

Example::

    import numpy as np
    from latentlens import shapes
    a = shapes.Attributes("circle", "red", "small", "left", "gray")
    scene = shapes.render(a, canvas=32, rng=np.random.default_rng(0))
    caption = shapes.make_caption(a)        # 'a small red circle on the left on a gray background'
    shapes.read_attributes(scene.image) == a   # True
"""

from latentlens.shapes.captions import (
    TEMPLATES,
    VOCABULARY,
    WHERE_PHRASES,
    Caption,
    canonical_caption,
    make_caption,
    parse_caption,
    unknown_words,
    word_token_indices,
)
from latentlens.shapes.dataset import sample_scenes
from latentlens.shapes.oracle import Reading, describe, inspect_image, object_mask, read_attributes, read_batch
from latentlens.shapes.render import Scene, degrade, render, shape_coverage
from latentlens.shapes.world import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    JITTER,
    POSITION_CENTER,
    POSITIONS,
    SHAPES,
    SIZE_EXTENT,
    SIZES,
    VALUES,
    Attributes,
    all_combinations,
    held_out_combinations,
    is_held_out,
    training_combinations,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "COLORS",
    "COLOR_RGB",
    "JITTER",
    "POSITIONS",
    "POSITION_CENTER",
    "SHAPES",
    "SIZES",
    "SIZE_EXTENT",
    "TEMPLATES",
    "VALUES",
    "VOCABULARY",
    "WHERE_PHRASES",
    "Attributes",
    "Caption",
    "Reading",
    "Scene",
    "all_combinations",
    "canonical_caption",
    "degrade",
    "describe",
    "held_out_combinations",
    "inspect_image",
    "is_held_out",
    "make_caption",
    "object_mask",
    "parse_caption",
    "read_attributes",
    "read_batch",
    "render",
    "sample_scenes",
    "shape_coverage",
    "training_combinations",
    "unknown_words",
    "word_token_indices",
]

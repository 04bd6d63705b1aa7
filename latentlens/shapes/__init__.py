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

World v2 adds two-object scenes (left/right or top/bottom, colours differ, one background):
``TwoObjectAttributes``, ``render_two``, ``make_two_object_caption``, ``read_two_objects`` and the
two-object held-out split; one-object scenes are unchanged.
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
from latentlens.shapes.captions2 import (
    TWO_OBJECT_TEMPLATES,
    TWO_OBJECT_TEMPLATES_FOR,
    TWO_OBJECT_VOCABULARY,
    TwoObjectCaption,
    canonical_two_object_caption,
    make_two_object_caption,
    names_second_object_first,
    parse_two_object_caption,
    two_object_token_indices,
)
from latentlens.shapes.dataset import sample_scenes, sample_two_object_scenes
from latentlens.shapes.oracle import Reading, describe, inspect_image, object_mask, read_attributes, read_batch
from latentlens.shapes.oracle2 import (
    TwoObjectReading,
    binding_errors,
    detect_layout,
    read_two_object_batch,
    read_two_objects,
    score_two_object_readings,
)
from latentlens.shapes.render import Scene, degrade, render, shape_coverage
from latentlens.shapes.render2 import TwoObjectScene, render_two
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
from latentlens.shapes.world2 import (
    LAYOUT_POSITIONS,
    LAYOUTS,
    OBJECT_ATTRIBUTES,
    TwoObjectAttributes,
    all_two_object_combinations,
    contains_held_out_object,
    is_two_object_held_out,
    is_two_object_trained,
    object_triple,
    two_object_held_out_combinations,
    two_object_training_combinations,
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
    "TWO_OBJECT_TEMPLATES",
    "TWO_OBJECT_TEMPLATES_FOR",
    "TWO_OBJECT_VOCABULARY",
    "TwoObjectCaption",
    "canonical_two_object_caption",
    "make_two_object_caption",
    "names_second_object_first",
    "parse_two_object_caption",
    "two_object_token_indices",
    "sample_two_object_scenes",
    "TwoObjectReading",
    "binding_errors",
    "detect_layout",
    "read_two_object_batch",
    "read_two_objects",
    "score_two_object_readings",
    "TwoObjectScene",
    "render_two",
    "LAYOUT_POSITIONS",
    "LAYOUTS",
    "OBJECT_ATTRIBUTES",
    "TwoObjectAttributes",
    "all_two_object_combinations",
    "contains_held_out_object",
    "is_two_object_held_out",
    "is_two_object_trained",
    "object_triple",
    "two_object_held_out_combinations",
    "two_object_training_combinations",
]

"""Renderer of two-object scenes: both objects drawn exactly as the one-object renderer draws one.

Example::

    import numpy as np
    from latentlens.shapes import TwoObjectAttributes, render_two
    pair = TwoObjectAttributes.of(("circle", "red", "small"), ("cross", "blue", "large"))
    scene = render_two(pair, canvas=32, rng=np.random.default_rng(0))
    scene.image.shape, scene.masks.shape   # (32, 32, 3), (2, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.render import check_canvas, shape_coverage
from latentlens.shapes.world import (
    BACKGROUND_RGB,
    COLOR_RGB,
    JITTER,
    POSITION_CENTER,
    SIZE_EXTENT,
)
from latentlens.shapes.world2 import TwoObjectAttributes


@dataclass
class TwoObjectScene:
    """A rendered two-object image with its ground truth, per object (0 = first, 1 = second)."""

    attributes: TwoObjectAttributes
    image: np.ndarray  # uint8 [height, width, 3]
    masks: np.ndarray  # bool [2, height, width], each object's pixels (coverage >= 0.5)
    centers: tuple[tuple[float, float], tuple[float, float]]  # (x, y) fractions of the side, jitter included


def render_two(
    attributes: TwoObjectAttributes,
    canvas: int = 32,
    rng: np.random.Generator | None = None,
) -> TwoObjectScene:
    """Render a two-object scene; ``rng`` jitters each object's centre independently (±0.03 per axis)."""
    if not isinstance(attributes, TwoObjectAttributes):
        raise ConfigError(
            f"render_two() needs a TwoObjectAttributes, got {type(attributes).__name__}; build one with "
            "latentlens.shapes.TwoObjectAttributes.of((shape, color, size), (shape, color, size), layout, background)."
        )
    check_canvas(canvas)
    image = np.broadcast_to(
        np.asarray(BACKGROUND_RGB[attributes.background], dtype=np.float64),
        (canvas, canvas, 3),
    ).copy()  # [height, width, 3]
    masks = np.zeros((2, canvas, canvas), dtype=bool)
    centers = []
    for index, obj in enumerate(attributes.objects):
        cx, cy = POSITION_CENTER[obj.position]
        if rng is not None:
            jx, jy = rng.uniform(-JITTER, JITTER, size=2)
            cx, cy = cx + float(jx), cy + float(jy)
        coverage = shape_coverage(obj.shape, (cx, cy), SIZE_EXTENT[obj.size], canvas)  # [height, width]
        color = np.asarray(COLOR_RGB[obj.color], dtype=np.float64)  # [3]
        image = image + coverage[..., None] * (color - image)  # [height, width, 3], painted over what is there
        masks[index] = coverage >= 0.5
        centers.append((cx, cy))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return TwoObjectScene(
        attributes=attributes,
        image=image,
        masks=masks,
        centers=(centers[0], centers[1]),
    )

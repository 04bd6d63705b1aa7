"""Oracle for two-object scenes: both objects read, matched by position, binding errors reported.

How it reads an image:

1. background = median of the border pixels (as the one-object oracle);
2. layout = the axis along which the foreground (pixels far from the background, weighted by
   their contrast) is spread more: two objects left and right spread it along x, top and bottom
   along y (``layout=`` skips this when it is known);
3. each half of the image (left / right or top / bottom) is read by the one-object oracle with
   the other half painted over in the measured background, so each object is read where it is
   (its position is read in whole-canvas coordinates, so "left" must come out as "left").

Binding errors are attributes swapped between the objects: asked a red circle and a blue square,
read a blue circle and a red square (a colour binding error) — the failure a one-object oracle
cannot see.

Example::

    from latentlens.shapes import TwoObjectAttributes, render_two, read_two_objects
    pair = TwoObjectAttributes.of(("circle", "red", "small"), ("cross", "blue", "large"), "vertical", "white")
    reading = read_two_objects(render_two(pair).image)
    reading.objects == pair.objects   # True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.oracle import Reading, as_image, inspect_image
from latentlens.shapes.world import ATTRIBUTES, Attributes
from latentlens.shapes.world2 import (
    LAYOUT_POSITIONS,
    LAYOUTS,
    OBJECT_ATTRIBUTES,
    TwoObjectAttributes,
)

# Attributes scored per object in a two-object scene (background is the scene's, scored per object too).
TWO_OBJECT_SCORED: tuple[str, ...] = ATTRIBUTES


@dataclass
class TwoObjectReading:
    """What the oracle read in a two-object image: the objects in (first, second) = (left|top, right|bottom) order."""

    layout: str
    objects: tuple[Attributes, Attributes]
    readings: tuple[Reading, Reading]  # the one-object oracle's measurements, per half
    masks: np.ndarray  # bool [2, height, width], each object's pixels as read

    @property
    def first(self) -> Attributes:
        return self.objects[0]

    @property
    def second(self) -> Attributes:
        return self.objects[1]


def detect_layout(image: np.ndarray) -> str:
    """``"horizontal"`` when the foreground spreads along x (left/right objects), else ``"vertical"``."""
    img = as_image(image)  # [height, width, 3] float 0-255
    side = img.shape[0]
    b = max(1, side // 32)
    border = np.concatenate(
        [
            img[:b].reshape(-1, 3),
            img[-b:].reshape(-1, 3),
            img[:, :b].reshape(-1, 3),
            img[:, -b:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)  # [3]
    dist = np.linalg.norm(img - bg, axis=-1)  # [height, width]
    weights = np.clip(dist - 0.25 * float(dist.max()), 0.0, None)  # [height, width], background noise suppressed
    total = float(weights.sum())
    if total <= 0:
        return "horizontal"
    rows, cols = np.indices(dist.shape)
    mean_x, mean_y = (weights * cols).sum() / total, (weights * rows).sum() / total
    var_x = float((weights * (cols - mean_x) ** 2).sum() / total)
    var_y = float((weights * (rows - mean_y) ** 2).sum() / total)
    return "horizontal" if var_x >= var_y else "vertical"


def read_two_objects(image: np.ndarray, layout: str | None = None) -> TwoObjectReading:
    """Read both objects of a two-object image (uint8 [height, width, 3] or floats in [0, 1], any square size).

    ``layout`` ("horizontal" or "vertical") is detected from the image when ``None``.
    """
    img = as_image(image)  # [height, width, 3] float 0-255
    if layout is None:
        layout = detect_layout(img)
    elif layout not in LAYOUT_POSITIONS:
        raise ConfigError(f"Unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)} or None to detect it.")
    side = img.shape[0]
    b = max(1, side // 32)
    border = np.concatenate(
        [
            img[:b].reshape(-1, 3),
            img[-b:].reshape(-1, 3),
            img[:, :b].reshape(-1, 3),
            img[:, -b:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)  # [3]
    half = side // 2
    readings = []
    for index in (0, 1):
        part = img.copy()
        if layout == "horizontal":
            part[:, half:] = bg if index == 0 else part[:, half:]
            part[:, :half] = bg if index == 1 else part[:, :half]
        else:
            part[half:, :] = bg if index == 0 else part[half:, :]
            part[:half, :] = bg if index == 1 else part[:half, :]
        readings.append(inspect_image(part))
    masks = np.stack([r.mask for r in readings])  # [2, height, width]
    return TwoObjectReading(
        layout=layout,
        objects=(readings[0].attributes, readings[1].attributes),
        readings=(readings[0], readings[1]),
        masks=masks,
    )


def read_two_object_batch(
    images: Sequence[np.ndarray] | np.ndarray,
    layouts: Sequence[str | None] | None = None,
) -> list[TwoObjectReading]:
    """``read_two_objects`` for each image of a [batch, height, width, 3] batch (``layouts``: one per image, or detect)."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ConfigError(f"read_two_object_batch() needs images shaped [N, H, W, 3], got shape {images.shape}.")
    layouts = [None] * len(images) if layouts is None else list(layouts)
    if len(layouts) != len(images):
        raise ConfigError(f"{len(layouts)} layouts were given for {len(images)} images; give one per image or None.")
    return [read_two_objects(image, layout) for image, layout in zip(images, layouts)]


def binding_errors(asked: TwoObjectAttributes, read: Sequence[Attributes]) -> list[str]:
    """Object attributes swapped between the two objects: ``asked`` a's value read on b and b's on a.

    Example: asked (red circle, blue square), read (blue circle, red square) -> ``["color"]``.
    """
    first, second = read
    return [
        a
        for a in OBJECT_ATTRIBUTES
        if getattr(asked.first, a) != getattr(asked.second, a)
        and getattr(first, a) == getattr(asked.second, a)
        and getattr(second, a) == getattr(asked.first, a)
    ]


def score_two_object_readings(asked: Sequence[TwoObjectAttributes], read: Sequence[Any]) -> dict[str, Any]:
    """Accuracy of two-object readings (``TwoObjectReading`` or (Attributes, Attributes)) against ``asked``.

    Returns per-object per-attribute accuracy (``"first"``/``"second"``), per-attribute accuracy
    over both objects, ``both_right`` (every attribute of both objects), and binding-error rates
    per object attribute plus ``any_binding_error``.
    """
    n = len(asked)
    pairs = [r.objects if isinstance(r, TwoObjectReading) else tuple(r) for r in read]
    per_object = {
        name: {
            a: sum(getattr(p.objects[k], a) == getattr(r[k], a) for p, r in zip(asked, pairs)) / max(n, 1)
            for a in TWO_OBJECT_SCORED
        }
        for k, name in enumerate(("first", "second"))
    }
    per_attribute = {a: (per_object["first"][a] + per_object["second"][a]) / 2 for a in TWO_OBJECT_SCORED}
    both = sum(p.objects == tuple(r) for p, r in zip(asked, pairs)) / max(n, 1)
    bindings = [binding_errors(p, r) for p, r in zip(asked, pairs)]
    binding = {a: sum(a in b for b in bindings) / max(n, 1) for a in OBJECT_ATTRIBUTES}
    return {
        "n": n,
        "per_object": per_object,
        "per_attribute": per_attribute,
        "both_right": both,
        "binding_errors": binding,
        "any_binding_error": sum(bool(b) for b in bindings) / max(n, 1),
    }

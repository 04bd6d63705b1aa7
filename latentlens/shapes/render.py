"""Deterministic renderer of the shapes world: one flat-coloured shape on a uniform background.

Edges are anti-aliased by supersampling (each pixel's coverage is the fraction of its
``supersample x supersample`` sub-samples inside the shape); the object mask is coverage >= 0.5.

Example::

    import numpy as np
    from latentlens.shapes import Attributes, render
    scene = render(Attributes("circle", "red", "small", "left", "gray"), canvas=32,
                   rng=np.random.default_rng(0))
    scene.image.shape, scene.mask.sum()   # (32, 32, 3), ~46
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.world import (
    BACKGROUND_RGB,
    COLOR_RGB,
    JITTER,
    POSITION_CENTER,
    SHAPES,
    SIZE_EXTENT,
    Attributes,
)

SUPERSAMPLE: int = 8
MIN_CANVAS: int = 16


@dataclass
class Scene:
    """A rendered image with its ground truth."""

    attributes: Attributes
    image: np.ndarray  # uint8 [height, width, 3]
    mask: np.ndarray  # bool [height, width], the object's pixels (coverage >= 0.5)
    center: tuple[float, float]  # (x, y) fractions of the side, jitter included


def check_canvas(canvas: int) -> None:
    if not isinstance(canvas, (int, np.integer)) or isinstance(canvas, bool) or canvas < MIN_CANVAS:
        raise ConfigError(
            f"Canvas size {canvas!r} is not supported; use an integer side of at least "
            f"{MIN_CANVAS} pixels (the toy model uses 32)."
        )


def shape_coverage(
    shape: str,
    center: tuple[float, float],
    extent: float,
    canvas: int,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """Fraction of each pixel covered by ``shape``; float64 [height, width] in [0, 1].

    ``center`` is the bounding-box centre (x, y) and ``extent`` the shape's width/height,
    both as fractions of the canvas side. Example::

        cov = shape_coverage("square", (0.5, 0.5), 0.44, 32)   # cov.sum() ~ (0.44 * 32) ** 2
    """
    if shape not in SHAPES:
        raise ConfigError(f"Unknown shape {shape!r}; use one of: {', '.join(SHAPES)}.")
    check_canvas(canvas)
    return coverage_window(
        shape, (center[0] * canvas, center[1] * canvas), extent * canvas, (0, 0, canvas, canvas), supersample
    )


def coverage_window(
    shape: str,
    center_px: tuple[float, float],
    extent_px: float,
    window: tuple[int, int, int, int],
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """Like ``shape_coverage`` but in pixel units, for the pixels of ``window`` = (row0, col0, rows, cols)
    only; float64 [height, width]. Lets the oracle fit hypotheses on a crop."""
    row0, col0, n_rows, n_cols = window
    ys = (np.arange(n_rows * supersample, dtype=np.float64) + 0.5) / supersample + row0  # [height], supersampled
    xs = (np.arange(n_cols * supersample, dtype=np.float64) + 0.5) / supersample + col0  # [width], supersampled
    half = extent_px / 2.0
    dx = xs[None, :] - center_px[0]  # [1, width]  (x runs along columns)
    dy = ys[:, None] - center_px[1]  # [height, 1]  (y runs along rows, downwards)
    if shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":
        # Apex at the top centre (cy - half), base along cy + half; half-width grows linearly.
        inside = (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2.0)
    elif shape == "cross":  # two bars of width extent/3
        arm = half / 3.0
        inside = ((np.abs(dx) <= half) & (np.abs(dy) <= arm)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= half))
    else:
        raise ConfigError(f"Unknown shape {shape!r}; use one of: {', '.join(SHAPES)}.")
    inside = np.broadcast_to(inside, (n_rows * supersample, n_cols * supersample)).astype(np.float64)
    return inside.reshape(n_rows, supersample, n_cols, supersample).mean(axis=(1, 3))  # [height, width]


def render(attributes: Attributes, canvas: int = 32, rng: np.random.Generator | None = None) -> Scene:
    """Render one scene. ``rng=None`` puts the object exactly at its position's centre;
    with an ``rng`` the centre is jittered uniformly within +-0.03 of the side per axis.
    """
    if not isinstance(attributes, Attributes):
        raise ConfigError(
            f"render() needs an Attributes object, got {type(attributes).__name__}; "
            "build one with latentlens.shapes.Attributes(shape=..., color=..., size=..., "
            "position=..., background=...)."
        )
    check_canvas(canvas)
    cx, cy = POSITION_CENTER[attributes.position]
    if rng is not None:
        jx, jy = rng.uniform(-JITTER, JITTER, size=2)
        cx, cy = cx + float(jx), cy + float(jy)
    coverage = shape_coverage(attributes.shape, (cx, cy), SIZE_EXTENT[attributes.size], canvas)  # [height, width]
    background = np.asarray(BACKGROUND_RGB[attributes.background], dtype=np.float64)  # [3]
    color = np.asarray(COLOR_RGB[attributes.color], dtype=np.float64)  # [3]
    image = background + coverage[..., None] * (color - background)  # [height, width, 3]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(attributes=attributes, image=image, mask=coverage >= 0.5, center=(cx, cy))


def degrade(image: np.ndarray, rng: np.random.Generator, noise: float = 8.0, blur: float = 0.7) -> np.ndarray:
    """Blur (Gaussian, ``blur`` px) then add Gaussian noise (``noise`` in 0-255 units); uint8 out.

    Used to check the oracle on images that look like a generator's output, e.g.
    ``degrade(scene.image, np.random.default_rng(0), noise=16, blur=1.0)``.
    """
    from scipy import ndimage

    out = np.asarray(image, dtype=np.float64)  # [height, width, 3]
    if blur > 0:
        out = ndimage.gaussian_filter(out, sigma=(blur, blur, 0))
    if noise > 0:
        out = out + rng.normal(0.0, noise, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

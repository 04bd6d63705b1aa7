"""The oracle reads every attribute back from rendered images, also noisy, blurred and off-palette ones."""

from __future__ import annotations

import numpy as np
import pytest

from latentlens.errors import ConfigError
from latentlens.shapes import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    COLOR_RGB,
    JITTER,
    POSITION_CENTER,
    SIZE_EXTENT,
    Attributes,
    all_combinations,
    canonical_caption,
    describe,
    object_mask,
    parse_caption,
    read_attributes,
    read_batch,
    render,
)
from latentlens.shapes.oracle import inspect_image
from latentlens.shapes.render import degrade, shape_coverage


def _accuracy(truth: list[Attributes], read: list[Attributes]) -> dict[str, float]:
    return {k: float(np.mean([getattr(t, k) == getattr(r, k) for t, r in zip(truth, read)])) for k in ATTRIBUTES}


@pytest.mark.slow
@pytest.mark.parametrize("canvas", [32, 64])
def test_round_trip_on_all_720_with_jitter_noise_and_blur(canvas):
    rng = np.random.default_rng(canvas)
    truth = all_combinations()
    images = np.stack([degrade(render(a, canvas, rng=rng).image, rng, noise=8, blur=0.7) for a in truth])
    accuracy = _accuracy(truth, read_batch(images))
    assert all(v >= 0.99 for v in accuracy.values()), accuracy


def test_clean_renders_are_read_exactly_and_described_canonically():
    rng = np.random.default_rng(0)
    for a in all_combinations()[::7]:
        image = render(a, 32, rng=rng).image
        assert read_attributes(image) == a
        text = describe(image)
        assert text == canonical_caption(a) and parse_caption(text) == a


def _offpalette(a: Attributes, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Like a generator's output: colours a little off, extent a little off, soft and noisy."""
    cx, cy = POSITION_CENTER[a.position]
    jx, jy = rng.uniform(-JITTER, JITTER, 2)
    cov = shape_coverage(a.shape, (cx + jx, cy + jy), SIZE_EXTENT[a.size] * rng.uniform(0.92, 1.08), canvas)
    bg = np.asarray(BACKGROUND_RGB[a.background]) + rng.normal(0, 5, 3)
    fg = np.asarray(COLOR_RGB[a.color]) + rng.normal(0, 10, 3)
    image = np.clip(bg + cov[..., None] * (fg - bg), 0, 255)
    return degrade(image, rng, noise=8, blur=1.0)


def test_generated_looking_images_are_read_reliably():
    rng = np.random.default_rng(5)
    truth = all_combinations()[::3]
    accuracy = _accuracy(truth, [read_attributes(_offpalette(a, 32, rng)) for a in truth])
    assert all(v >= 0.97 for v in accuracy.values()), accuracy


@pytest.mark.parametrize("canvas", [32, 64])
def test_object_mask_matches_the_rendered_mask(canvas):
    rng = np.random.default_rng(1)
    clean, degraded = [], []
    for a in all_combinations()[::11]:
        scene = render(a, canvas, rng=rng)
        for image, ious in ((scene.image, clean), (degrade(scene.image, rng), degraded)):
            mask = object_mask(image)
            assert mask.dtype == bool and mask.shape == (canvas, canvas)
            ious.append((mask & scene.mask).sum() / (mask | scene.mask).sum())
    assert min(clean) >= 0.97, min(clean)
    # blur moves the edge pixels of small shapes (a small shape at 32 px has ~30 pixels)
    assert min(degraded) >= 0.7 and np.mean(degraded) >= 0.9, (min(degraded), np.mean(degraded))


def test_reading_reports_the_geometry():
    scene = render(Attributes("square", "green", "large", "right", "black"), 64, rng=np.random.default_rng(2))
    reading = inspect_image(scene.image)
    assert abs(reading.extent - 0.44) < 0.02
    assert abs(reading.center[0] - scene.center[0]) < 0.01 and abs(reading.center[1] - scene.center[1]) < 0.01
    assert min(reading.shape_errors, key=reading.shape_errors.get) == "square"


def test_float_images_in_unit_range_are_accepted():
    a = Attributes("triangle", "orange", "small", "bottom", "gray")
    image = render(a, 32).image
    assert read_attributes(image.astype(np.float32) / 255.0) == a
    assert read_batch([image, image]) == [a, a]


def test_a_blank_image_still_gets_a_reading():
    blank = np.full((32, 32, 3), BACKGROUND_RGB["white"], dtype=np.uint8)
    assert read_attributes(blank).background == "white"


@pytest.mark.parametrize("shape", [(32, 32), (4, 32, 32, 3), (32, 16, 3), (4, 4, 3)])
def test_bad_image_shapes_are_config_errors(shape):
    with pytest.raises(ConfigError, match="image"):
        read_attributes(np.zeros(shape, dtype=np.uint8))


def test_read_batch_needs_a_batch():
    with pytest.raises(ConfigError, match=r"\[N, H, W, 3\]"):
        read_batch(np.zeros((32, 32, 3), dtype=np.uint8))

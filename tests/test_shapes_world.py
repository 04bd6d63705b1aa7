"""The shapes world's combinations, held-out split and renderer geometry (docs/design.md ("The shapes world"))."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from latentlens.errors import ConfigError, LatentlensError
from latentlens.shapes import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    COLOR_RGB,
    JITTER,
    POSITION_CENTER,
    SIZE_EXTENT,
    VALUES,
    Attributes,
    all_combinations,
    held_out_combinations,
    is_held_out,
    render,
    training_combinations,
)

RED_CIRCLE = Attributes("circle", "red", "small", "left", "gray")


def test_all_combinations_are_the_720_distinct_products():
    combos = all_combinations()
    assert len(combos) == 720 == len(set(combos))
    assert all_combinations() == combos  # fixed order
    for name in ATTRIBUTES:
        assert {getattr(c, name) for c in combos} == set(VALUES[name])


@pytest.mark.parametrize(
    "field, bad", [("shape", "dog"), ("color", "pink"), ("size", "huge"), ("position", "up"), ("background", "red")]
)
def test_invalid_value_is_a_config_error_naming_it(field, bad):
    values = RED_CIRCLE.as_dict()
    values[field] = bad
    with pytest.raises(ConfigError) as info:
        Attributes(**values)
    message = str(info.value)
    assert repr(bad) in message and VALUES[field][0] in message
    assert isinstance(info.value, LatentlensError)


def test_replace_validates_and_keeps_the_rest():
    blue = RED_CIRCLE.replace(color="blue")
    assert blue.color == "blue" and blue.shape == "circle" and RED_CIRCLE.color == "red"
    with pytest.raises(ConfigError, match="purple-ish"):
        RED_CIRCLE.replace(color="purple-ish")
    with pytest.raises(ConfigError, match="colour"):
        RED_CIRCLE.replace(colour="blue")
    assert list(RED_CIRCLE.as_dict()) == list(ATTRIBUTES)


def test_held_out_split_size_disjointness_and_determinism():
    held, train = held_out_combinations(), training_combinations()
    assert len(held) == 80 >= 0.1 * 720
    assert len(set(held)) == 80 and not set(held) & set(train)
    assert set(held) | set(train) == set(all_combinations())
    assert held == held_out_combinations()
    assert is_held_out(held[0]) and not is_held_out(train[0])


def test_held_out_split_keeps_every_value_and_every_pair_in_training():
    train = training_combinations()
    for a, b in itertools.combinations(ATTRIBUTES, 2):
        seen = {(getattr(c, a), getattr(c, b)) for c in train}
        assert seen == set(itertools.product(VALUES[a], VALUES[b])), (a, b)
    held = held_out_combinations()
    for name in ATTRIBUTES:  # the held-out set tests every value, too
        assert {getattr(c, name) for c in held} == set(VALUES[name])


def test_held_out_split_is_stable_across_machines():
    # Recomputing from scratch in a fresh interpreter must give the same split
    # (no dependence on Python's salted hash()).
    import subprocess
    import sys

    code = "from latentlens.shapes import held_out_combinations as h; print([c.as_tuple() for c in h()])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, **_env()}
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str([c.as_tuple() for c in held_out_combinations()])


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


@pytest.mark.parametrize("canvas", [32, 64])
def test_render_is_deterministic_and_uses_the_palette(canvas):
    a = Attributes("square", "yellow", "large", "center", "black")
    s1, s2 = render(a, canvas), render(a, canvas)
    assert s1.image.dtype == np.uint8 and s1.image.shape == (canvas, canvas, 3)
    assert np.array_equal(s1.image, s2.image) and np.array_equal(s1.mask, s2.mask)
    assert tuple(s1.image[0, 0]) == BACKGROUND_RGB["black"]
    assert tuple(s1.image[canvas // 2, canvas // 2]) == COLOR_RGB["yellow"]
    j1 = render(a, canvas, rng=np.random.default_rng(7))
    j2 = render(a, canvas, rng=np.random.default_rng(7))
    assert np.array_equal(j1.image, j2.image) and j1.center == j2.center


@pytest.mark.parametrize("canvas", [32, 64])
@pytest.mark.parametrize(
    "shape, fill", [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5), ("cross", 5 / 9)]
)
@pytest.mark.parametrize("size", ["small", "large"])
def test_mask_area_matches_the_geometry(canvas, shape, fill, size):
    scene = render(Attributes(shape, "blue", size, "center", "white"), canvas)
    expected = fill * (SIZE_EXTENT[size] * canvas) ** 2
    # a mask of whole pixels is off by at most about one pixel along the perimeter
    perimeter = 4 * SIZE_EXTENT[size] * canvas
    assert abs(scene.mask.sum() - expected) <= 0.5 * perimeter + 2


@pytest.mark.parametrize("canvas", [32, 64])
def test_large_square_mask_is_where_it_should_be(canvas):
    rng = np.random.default_rng(3)
    for position in POSITION_CENTER:
        scene = render(Attributes("square", "red", "large", position, "gray"), canvas, rng=rng)
        cx, cy = scene.center
        px, py = POSITION_CENTER[position]
        assert abs(cx - px) <= JITTER and abs(cy - py) <= JITTER
        side = SIZE_EXTENT["large"] * canvas
        assert abs(scene.mask.sum() - side**2) <= 2 * side + 1
        rows, cols = np.nonzero(scene.mask)
        mx = (cols.min() + cols.max() + 1) / 2 / canvas
        my = (rows.min() + rows.max() + 1) / 2 / canvas
        assert abs(mx - cx) <= 1 / canvas and abs(my - cy) <= 1 / canvas
        # the image is the object colour inside the mask's interior and background outside
        assert tuple(scene.image[int(cy * canvas), int(cx * canvas)]) == COLOR_RGB["red"]
        assert np.all(scene.image[~scene.mask].astype(int).sum(-1) != sum(COLOR_RGB["red"]))


def test_triangle_points_up_and_cross_is_symmetric():
    tri = render(Attributes("triangle", "green", "large", "center", "white"), 64).mask
    rows = np.nonzero(tri.any(axis=1))[0]
    widths = tri.sum(axis=1)
    assert widths[rows[0]] < widths[rows[-1]]  # narrow at the top, wide at the base
    cross = render(Attributes("cross", "green", "large", "center", "white"), 64).mask
    assert np.array_equal(cross, cross[::-1]) and np.array_equal(cross, cross.T)
    rows = np.nonzero(cross.any(axis=1))[0]
    arm = cross[rows[0]].sum()  # width of the vertical bar at its top row
    assert abs(arm - 0.44 * 64 / 3) <= 1.5


def test_jitter_stays_within_bounds_and_varies():
    rng = np.random.default_rng(0)
    centers = [render(RED_CIRCLE, 32, rng=rng).center for _ in range(50)]
    xs, ys = np.array(centers).T
    assert np.all(np.abs(xs - 0.25) <= JITTER) and np.all(np.abs(ys - 0.5) <= JITTER)
    assert xs.std() > JITTER / 4
    assert render(RED_CIRCLE, 32).center == POSITION_CENTER["left"]


@pytest.mark.parametrize("canvas", [8, 0, 32.0, "32", True])
def test_bad_canvas_is_a_config_error(canvas):
    with pytest.raises(ConfigError, match="Canvas size"):
        render(RED_CIRCLE, canvas)


def test_render_rejects_a_dict():
    with pytest.raises(ConfigError, match="Attributes"):
        render(RED_CIRCLE.as_dict(), 32)

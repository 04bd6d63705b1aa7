"""sample_scenes: reproducible (scene, caption) pairs drawn from the requested combinations."""

from __future__ import annotations

import numpy as np
import pytest

from latentlens.errors import ConfigError
from latentlens.shapes import (
    TEMPLATES,
    Attributes,
    canonical_caption,
    held_out_combinations,
    parse_caption,
    sample_scenes,
    training_combinations,
)


def test_sample_scenes_is_reproducible_and_consistent():
    a = sample_scenes(64, np.random.default_rng(1), canvas=32)
    b = sample_scenes(64, np.random.default_rng(1), canvas=32)
    assert len(a) == 64
    train = set(training_combinations())
    for (sa, ca), (sb, cb) in zip(a, b):
        assert np.array_equal(sa.image, sb.image) and ca == cb
        assert sa.image.shape == (32, 32, 3) and sa.mask.any()
        assert sa.attributes in train
        assert parse_caption(ca.text) == sa.attributes
    assert len({c.text for _, c in a}) > 32  # templates and combinations vary


def test_sample_scenes_respects_combinations_template_and_canvas():
    held = held_out_combinations()[:3]
    pairs = sample_scenes(20, np.random.default_rng(2), canvas=64, combinations=held, template=0)
    assert {s.attributes for s, _ in pairs} <= set(held)
    assert all(c.text == canonical_caption(s.attributes) for s, c in pairs)
    assert pairs[0][0].image.shape == (64, 64, 3)
    assert sample_scenes(0, np.random.default_rng(0)) == []


def test_sample_scenes_bad_arguments():
    with pytest.raises(ConfigError):
        sample_scenes(-1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="Generator"):
        sample_scenes(2, 0)
    with pytest.raises(ConfigError, match="empty"):
        sample_scenes(2, np.random.default_rng(0), combinations=[])
    with pytest.raises(ConfigError, match="template"):
        sample_scenes(2, np.random.default_rng(0), template=len(TEMPLATES))
    with pytest.raises(ConfigError):
        sample_scenes(2, np.random.default_rng(0), combinations=[Attributes("circle", "red", "small", "left", "white")], canvas=4)

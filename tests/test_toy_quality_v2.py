"""Toy model v2 (one and two objects), read by the oracle on a fixed sample at the default settings.

The bars are issue 11's (one object held-out: every attribute >= 98 %, all five >= 95 %; two
objects: both entirely right >= 90 %), each less a stated margin for the small sample here
(MARGIN: about two standard errors of a proportion near the bar on 64 images). The model is the
shipped one once its weights are v2 (two-object training); until then ``LATENTLENS_TOY_V2`` may
name an exported v2 pipeline folder, and without either the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from latentlens.shapes import (
    ATTRIBUTES,
    held_out_combinations,
    two_object_held_out_combinations,
)
from latentlens.toy import WEIGHTS_DIR

MARGIN = 0.04
ONE_OBJECT_PER_ATTRIBUTE = 0.98 - MARGIN
ONE_OBJECT_ALL_FIVE = 0.95 - MARGIN
TWO_OBJECTS_BOTH_RIGHT = (
    0.90 - 2 * MARGIN
)  # ten attributes per image: a wider spread on 64 images


def _v2_model_dir() -> Path | None:
    override = os.environ.get("LATENTLENS_TOY_V2")
    if override:
        return Path(override)
    record = (
        WEIGHTS_DIR / "training.json"
    )  # written by export_checkpoint; v1's weights predate it
    if (
        record.exists()
        and json.loads(record.read_text())["config"].get("two_object_fraction", 0) > 0
    ):
        return WEIGHTS_DIR
    return None


@pytest.fixture(scope="module")
def pipe():
    path = _v2_model_dir()
    if path is None:
        pytest.skip(
            "the shipped toy weights are v1 (one object); set LATENTLENS_TOY_V2 to a v2 pipeline folder"
        )
    from latentlens.models import load_pipeline

    return load_pipeline(str(path))


@pytest.mark.slow
def test_one_object_held_out_meets_the_v2_bars(pipe):
    from latentlens.toy.evaluate import attribute_accuracy

    rng = np.random.default_rng(77)
    held = [
        held_out_combinations()[int(i)] for i in rng.choice(80, size=64, replace=False)
    ]
    report = attribute_accuracy(pipe, held, seed=700)
    for attribute in ATTRIBUTES:
        assert report["per_attribute"][attribute] >= ONE_OBJECT_PER_ATTRIBUTE, (
            attribute,
            report["errors"][:5],
        )
    assert report["all_five"] >= ONE_OBJECT_ALL_FIVE, report["errors"][:5]


@pytest.mark.slow
def test_two_objects_held_out_meet_the_v2_bar(pipe):
    from latentlens.toy.evaluate import two_object_accuracy

    rng = np.random.default_rng(78)
    pool = two_object_held_out_combinations()
    pairs = [pool[int(i)] for i in rng.choice(len(pool), size=64, replace=False)]
    report = two_object_accuracy(pipe, pairs, seed=800)
    assert report["both_right"] >= TWO_OBJECTS_BOTH_RIGHT, (
        report["both_right"],
        report["errors"][:5],
    )
    assert report["any_binding_error"] <= 0.10, report["binding_errors"]

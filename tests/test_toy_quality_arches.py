"""The trained toy-pixart and toy-unet models (issue 16), read by the oracle on a fixed sample at the default settings.

Each bar is the model's measured quality (its ``MODEL_CARD.md``, ``benchmarks/toy_quality.py`` at n = 300+) less
a margin for the small sample here (MARGIN, about two standard errors of a proportion near the bar on 64 images),
so a retrained or damaged model that is clearly worse fails. A model whose weights are not installed yet is
skipped with the command that trains them (there is nothing to measure).
"""

from __future__ import annotations

import numpy as np
import pytest

from latentlens.shapes import ATTRIBUTES, held_out_combinations, two_object_held_out_combinations
from latentlens.toy.architectures import BY_MODEL_NAME

MARGIN = 0.06
# measured on n = 320 held-out one-object images and 300 held-out two-object pairs (the model cards)
MEASURED = {
    "toy-pixart": {"one_object_all_five": 0.994, "two_objects_both_right": 1.0},  # weights-pixart/MODEL_CARD.md
    "toy-unet": {"one_object_all_five": 1.0, "two_objects_both_right": 1.0},  # weights-unet/MODEL_CARD.md
}


@pytest.fixture(scope="module", params=sorted(MEASURED))
def model(request):
    name = request.param
    toy = BY_MODEL_NAME[name]
    if not toy.installed():
        pytest.skip(f"{name} has no weights yet: `{toy.install_command()}` trains and installs them")
    from latentlens.models import load_pipeline

    return name, load_pipeline(name)


@pytest.mark.slow
def test_one_object_held_out_stays_at_the_measured_quality(model):
    from latentlens.toy.evaluate import attribute_accuracy

    name, pipe = model
    rng = np.random.default_rng(77)
    held = [held_out_combinations()[int(i)] for i in rng.choice(80, size=64, replace=False)]
    report = attribute_accuracy(pipe, held, seed=700)
    assert report["all_five"] >= MEASURED[name]["one_object_all_five"] - MARGIN, report["errors"][:5]
    assert set(report["per_attribute"]) == set(ATTRIBUTES)


@pytest.mark.slow
def test_two_objects_held_out_stay_at_the_measured_quality(model):
    from latentlens.toy.evaluate import two_object_accuracy

    name, pipe = model
    rng = np.random.default_rng(78)
    pool = two_object_held_out_combinations()
    pairs = [pool[int(i)] for i in rng.choice(len(pool), size=64, replace=False)]
    report = two_object_accuracy(pipe, pairs, seed=800)
    assert report["both_right"] >= MEASURED[name]["two_objects_both_right"] - 2 * MARGIN, report["errors"][:5]

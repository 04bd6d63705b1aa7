"""Steering with a class-mean direction turns red toy objects blue and leaves the rest alone (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import latentlens
from latentlens import shapes
from latentlens.analysis.steering import steering_check

SITE = "blocks.0.resid_in.txt"


@pytest.fixture(scope="module")
def toy_pipe():
    return latentlens.load_pipeline("toy")


def _text_input_features(pipe, prompts: list[str]) -> np.ndarray:
    """``[n, tokens, channel]``: block 0's text input (it does not depend on the step or the noise)."""
    with latentlens.record(pipe, sites=SITE, cfg="cond") as rec:
        with torch.no_grad():
            pipe(prompts, num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    return rec[SITE][0].float().numpy()


def test_token_wise_balanced_colour_direction_steers_red_to_blue(toy_pipe):
    combos = [c for c in shapes.training_combinations() if c.color in ("red", "blue")]
    X = _text_input_features(toy_pipe, [shapes.canonical_caption(c) for c in combos])  # [n, tokens, channel]
    labels = {a: [getattr(c, a) for c in combos] for a in shapes.ATTRIBUTES}
    direction = latentlens.class_mean_direction(
        X, labels["color"], to="blue", from_="red", site=SITE, attribute="color",
        adjust_for={a: labels[a] for a in ("shape", "size", "position", "background")},
    )
    assert direction.token_rows == X.shape[1]
    report = steering_check(toy_pipe, direction, attribute="color", source="red", target="blue", n=8, alpha=1.0, cfg="cond",
                            batch_size=8)
    assert report["baseline"]["success"] == 0.0 and report["baseline"]["source_read_as_source"] >= 0.75
    assert report["success"] >= 0.75
    for attribute, kept in report["kept"].items():
        assert kept >= 0.75, (attribute, report["kept"])
    # alpha = 0 reproduces the unsteered images exactly
    still = steering_check(toy_pipe, direction, attribute="color", source="red", target="blue", n=2, alpha=0.0)
    assert np.array_equal(still["images"], still["baseline_images"])

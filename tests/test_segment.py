"""``latentlens segment`` and :func:`latentlens.segment`: one mask per concept at the image's size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentlens import LatentlensError, segment
from latentlens.analysis.segment import masks_from_pooled, otsu_threshold
from latentlens.cli import main
from latentlens.toy.pipeline import tiny_toy_pipeline

PROMPT = "a large red circle in the center on a gray background"


@pytest.fixture(scope="module")
def toy():
    return tiny_toy_pipeline(num_layers=2)


@pytest.mark.parametrize("method", ["img2txt", "concept", "concept_attn"])
def test_masks_have_the_image_size_and_partition_it(toy, method):
    result = segment(toy, PROMPT, ["circle", "background"], seed=0, method=method, num_inference_steps=2, rule="argmax")
    assert result.image.shape == (32, 32, 3)
    assert set(result.masks) == {"circle", "background"}
    for concept in ("circle", "background"):
        assert result.masks[concept].shape == (32, 32) and result.masks[concept].dtype == bool
        assert result.token_masks[concept].shape == (8, 8)
    # argmax over two concepts: every pixel belongs to exactly one
    assert np.array_equal(result.masks["circle"], ~result.masks["background"])
    assert result.maps.shape == (2, 2, 2, 8, 8)  # [step, block, concept, rows, cols]
    assert result.blocks == [1] and result.steps == [0, 1]  # default: the later half of the blocks, all steps
    torch.testing.assert_close(result.pooled, result.maps[:, 1].mean(0))
    torch.testing.assert_close(result.maps.sum(2), torch.ones(2, 2, 8, 8, dtype=torch.float64))


def test_pooling_is_overridable_and_checked(toy):
    one = segment(toy, PROMPT, ["circle", "background"], seed=0, blocks=[1], steps=[1], num_inference_steps=2)
    torch.testing.assert_close(one.pooled, one.maps[1, 1])
    with pytest.raises(LatentlensError, match="blocks"):
        segment(toy, PROMPT, ["circle", "background"], seed=0, blocks=[7], num_inference_steps=2)


def test_masks_from_pooled_follow_the_largest_map():
    pooled = torch.zeros(2, 2, 2, dtype=torch.float64)
    pooled[0, 0, 0] = 1.0
    pooled[1] = 0.5
    m = masks_from_pooled(pooled, rule="argmax")
    assert m[0].tolist() == [[True, False], [False, False]] and m[1].sum() == 3


def test_otsu_masks_split_each_map_at_its_gap():
    pooled = torch.tensor([[[0.1, 0.12], [0.8, 0.9]], [[0.3, 0.3], [0.3, 0.31]]], dtype=torch.float64)
    assert otsu_threshold(pooled[0]) == pytest.approx((0.12 + 0.8) / 2)
    m = masks_from_pooled(pooled)  # the default rule
    assert m[0].tolist() == [[False, False], [True, True]]
    assert m[1].tolist() == [[False, False], [False, True]]
    up = masks_from_pooled(pooled, (4, 4))
    assert up.shape == (2, 4, 4) and up[0, 3].all() and not up[0, 0].any()


def test_img2txt_needs_the_concept_in_the_prompt(toy):
    with pytest.raises(LatentlensError, match="does not occur"):
        segment(toy, PROMPT, ["square", "background"], method="img2txt", num_inference_steps=2)


def test_cli_writes_image_and_masks(tmp_path, capsys):
    out = tmp_path / "seg"
    code = main(
        [
            "segment",
            "--model",
            "toy",
            "--prompt",
            PROMPT,
            "--concepts",
            "circle,background",
            "--seed",
            "0",
            "--num-steps",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    image = Image.open(out / "image.png")
    for concept in ("circle", "background"):
        mask = Image.open(out / "masks" / f"{concept}.png")
        assert mask.size == image.size == (32, 32)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert doc["masks"]["circle"].endswith("circle.png") and doc["size"] == [32, 32]


def test_cli_bad_concepts_fail_cleanly(tmp_path, capsys):
    code = main(["segment", "--prompt", PROMPT, "--concepts", "circle,,", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

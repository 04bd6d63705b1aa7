"""``latentlens segment`` and :func:`latentlens.segment`: one mask per concept at the image's size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentlens import LatentlensError, record, segment
from latentlens.analysis.segment import (
    COVERAGE_THRESHOLD,
    coverage_from_pooled,
    half_threshold,
    masks_from_pooled,
    otsu_threshold,
    refine_coverage,
)
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
    m = masks_from_pooled(pooled, rule="otsu")
    assert m[0].tolist() == [[False, False], [True, True]]
    assert m[1].tolist() == [[False, False], [False, True]]
    up = masks_from_pooled(pooled, (4, 4), rule="otsu")
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


def test_refine_recovers_the_coverage_of_features_linear_in_it():
    # features of 16 tokens mixing an object and a background vector by known coverage, plus small noise
    gen = torch.Generator().manual_seed(0)
    obj, bg = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    cover = torch.tensor([0.0] * 10 + [0.2, 0.45, 0.55, 0.8, 1.0, 1.0], dtype=torch.float64)
    feats = cover[:, None] * obj + (1 - cover[:, None]) * bg + 1e-4 * torch.randn(16, 8, generator=gen)
    seed = np.zeros((1, 16), dtype=bool)
    seed[0, [10, 14]] = True  # a poor seed: one low-coverage token, one object token
    est = refine_coverage(seed, feats)
    torch.testing.assert_close(est[0], cover, atol=2e-3, rtol=0)
    assert (est[0] > 0.5).tolist() == (cover > 0.5).tolist()
    # a seed that is empty or everything is returned unchanged
    assert refine_coverage(np.zeros((1, 16), dtype=bool), feats).sum() == 0


def test_half_rule_cuts_each_map_between_median_and_maximum():
    pooled = torch.tensor([[[0.1, 0.1], [0.1, 0.5]], [[0.0, 0.4], [0.9, 1.0]]], dtype=torch.float64)
    assert half_threshold(pooled[0]) == pytest.approx(0.3)
    m = masks_from_pooled(pooled, rule="half")
    assert m[0].tolist() == [[False, False], [False, True]]
    assert m[1].tolist() == [[False, False], [True, True]]  # median 0.65, cut at 0.825


def test_refine_is_the_default_and_uses_the_last_steps_features(toy):
    result = segment(toy, PROMPT, ["circle", "background"], seed=0, num_inference_steps=2)
    assert result.rule == "refine" and result.feature_block == 0  # a third of the way through blocks [0, 1]
    assert result.coverage is not None and result.coverage.shape == (2, 8, 8)
    for i, concept in enumerate(("circle", "background")):
        assert np.array_equal(result.token_masks[concept], (result.coverage[i] > COVERAGE_THRESHOLD).numpy())
        assert result.masks[concept].shape == (32, 32)
    # the same as refining the pooled maps by hand with the features of a separate recording
    with record(toy, sites="blocks.0.resid_out.img") as rec:
        image = toy(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    assert np.array_equal(result.image, (np.clip(image[0], 0, 1) * 255).round().astype(np.uint8))  # output unchanged
    by_hand = coverage_from_pooled(result.pooled, rec["blocks.0.resid_out.img"][-1, 0])
    torch.testing.assert_close(result.coverage, by_hand)
    other = segment(toy, PROMPT, ["circle", "background"], seed=0, num_inference_steps=2, feature_block=1)
    assert other.feature_block == 1


def test_feature_block_is_checked_before_compute(toy):
    with pytest.raises(LatentlensError, match="feature_block=9"):
        segment(toy, PROMPT, ["circle", "background"], feature_block=9, num_inference_steps=2)
    with pytest.raises(LatentlensError, match="only by rule='refine'"):
        segment(toy, PROMPT, ["circle", "background"], rule="otsu", feature_block=0, num_inference_steps=2)
    with pytest.raises(LatentlensError, match="needs the image tokens' features"):
        masks_from_pooled(torch.zeros(2, 2, 2), rule="refine")


def test_cli_feature_block_needs_the_refine_rule(tmp_path, capsys):
    args = ["segment", "--prompt", PROMPT, "--concepts", "circle,background", "--rule", "otsu", "--feature-block", "1"]
    code = main([*args, "--out", str(tmp_path / "x")])
    assert code == 2
    assert "--feature-block is used only by --rule refine" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

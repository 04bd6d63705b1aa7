"""Two-object edit benchmark: case spread, targets that stay valid scenes, and the judge on rendered ground truth."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from latentlens.editor.bench_two import (
    judge_two_object_edit,
    make_two_object_cases,
    run_two_object_benchmark,
    target_scene,
)
from latentlens.errors import ConfigError
from latentlens.shapes import TwoObjectAttributes, read_two_objects, render_two


def test_cases_cycle_attributes_and_alternate_objects_reproducibly():
    cases = make_two_object_cases(120, seed=0)
    assert Counter(c.attribute for c in cases) == {"shape": 40, "color": 40, "size": 40}
    assert Counter((c.attribute, c.target_object) for c in cases) == {
        (a, k): 20 for a in ("shape", "color", "size") for k in (0, 1)
    }
    again = make_two_object_cases(120, seed=0)
    assert [(c.scene, c.seed, c.pick) for c in cases] == [(c.scene, c.seed, c.pick) for c in again]
    with pytest.raises(ConfigError, match="at least one edit"):
        make_two_object_cases(0)


def test_every_target_is_a_valid_scene_that_changes_exactly_one_attribute_of_one_object():
    for case in make_two_object_cases(300, seed=1):
        target, value = target_scene(case.scene, case)  # a colour clash would raise ConfigError here
        k = case.target_object
        assert getattr(target.objects[k], case.attribute) == value != getattr(case.scene.objects[k], case.attribute)
        assert target.objects[1 - k] == case.scene.objects[1 - k]
        changed = [
            a for a in ("shape", "color", "size") if getattr(target.objects[k], a) != getattr(case.scene.objects[k], a)
        ]
        assert changed == [case.attribute]


def _rendered(scene: TwoObjectAttributes) -> tuple[np.ndarray, object]:
    image = render_two(scene, canvas=32, rng=np.random.default_rng(7)).image
    return image, read_two_objects(image, scene.layout)


def test_judge_scores_a_clean_edit_as_local_and_a_leaky_one_as_leaky():
    scene = TwoObjectAttributes.of(("circle", "red", "large"), ("square", "blue", "large"), "horizontal", "gray")
    case = make_two_object_cases(1)[0]
    case.scene, case.attribute, case.target_object = scene, "color", 0
    src, src_read = _rendered(scene)

    clean, clean_read = _rendered(scene.replace_object(0, color="green"))
    verdict = judge_two_object_edit(case, src, src_read, clean, clean_read, "green")
    assert verdict["success"] and verdict["object_kept"] and verdict["other_kept"]
    assert verdict["other_psnr"] == 100.0 and verdict["leakage"] == 0.0 and verdict["psnr_outside"] == 100.0

    leaky_scene = scene.replace_object(0, color="green").replace_object(1, color="yellow")
    leaky, leaky_read = _rendered(leaky_scene)
    verdict = judge_two_object_edit(case, src, src_read, leaky, leaky_read, "green")
    assert verdict["success"] and not verdict["other_kept"]
    assert verdict["other_psnr"] < 30.0 and verdict["leakage"] > 0.0

    missed = judge_two_object_edit(case, src, src_read, src, src_read, "green")
    assert not missed["success"] and missed["other_kept"] and missed["leakage"] == 0.0


def test_benchmark_runs_every_method_on_a_tiny_toy_pipeline_and_reports_per_attribute():
    from latentlens.toy.pipeline import tiny_toy_pipeline

    result = run_two_object_benchmark(tiny_toy_pipeline(), n=3, methods=["prompt_swap", "ems"], batch_size=3)
    assert set(result.rows) == {"prompt_swap", "ems"}
    assert {r["attribute"] for r in result.edits} == {"shape", "color", "size"}
    assert len(result.edits) == 6
    for row in result.rows.values():
        assert 0.0 <= row["success"] <= 1.0 and row["score"] == pytest.approx(row["success"] * row["other_kept"])
    assert "other object kept" in result.table()
    with pytest.raises(ConfigError, match="Unknown benchmark method"):
        run_two_object_benchmark(tiny_toy_pipeline(), n=1, methods=["paint"])

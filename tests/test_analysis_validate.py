"""analyze saves token-wise edit directions and validates every direction by steering (real toy model, few steps)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import latentlens
from latentlens import shapes
from latentlens.adapters import site_width
from latentlens.analysis.spec import ProbeSample

STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    from tiny_pipes import get_pipe

    return get_pipe("toy")  # the trained toy model, shared by the test files


def _record(pipe, out, per_color, steps):
    """``per_color`` canonical-caption samples per colour recorded at block 0's text input and block 5's image output
    (at the last of ``steps`` sampling steps)."""
    rng = np.random.default_rng(0)
    pool = shapes.training_combinations()
    combos = [pool[int(i)] for i in rng.permutation(len(pool))]
    chosen = []
    for color in shapes.COLORS:
        chosen += [c for c in combos if c.color == color][:per_color]
    samples = [
        ProbeSample(
            shapes.canonical_caption(c),
            k,
            {a: getattr(c, a) for a in shapes.ATTRIBUTES},
        )
        for k, c in enumerate(chosen)
    ]
    torch.manual_seed(0)
    latentlens.record_prompts(
        pipe,
        samples,
        out,
        sites=["blocks.0.resid_in.txt", "blocks.5.resid_out.img"],
        steps=[steps - 1],
        num_inference_steps=steps,
        batch_size=len(samples),
        model_id="toy",
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def run_dir(pipe, tmp_path_factory):
    """36 samples (six per colour) at 4 steps: enough for the directions to steer when validated."""
    return _record(pipe, tmp_path_factory.mktemp("validate") / "run", per_color=6, steps=STEPS)


@pytest.fixture(scope="module")
def small_run_dir(pipe, tmp_path_factory):
    """18 samples (three per colour) at 2 steps: directions to save, not to steer with (a third of run_dir's cost)."""
    return _record(pipe, tmp_path_factory.mktemp("validate-small") / "run", per_color=3, steps=2)


@pytest.mark.slow
def test_analyze_saves_edit_directions_with_their_measured_effect(pipe, run_dir):
    checked = ["edit/color/*", "color/red"]  # the colour edits and one class mean: a third of the directions
    summary = latentlens.analyze_run(
        run_dir, umap="none", quiet=True, validate=3, pipeline=pipe, validate_only=checked
    )
    names = summary["directions"]
    for color in (
        shapes.COLORS
    ):  # the token-wise edit directions, next to the class means at the best cells
        assert f"edit/color/{color}" in names and f"color/{color}" in names
    # and one from-to direction per ordered pair of colours
    pairs = [n for n in names if n.startswith("edit/color/") and "-to-" in n]
    assert len(pairs) == len(shapes.COLORS) * (len(shapes.COLORS) - 1) and "edit/color/red-to-blue" in pairs
    res = latentlens.load_results(run_dir)
    d = res.load_direction("edit/color/blue")
    assert (
        d.site == "blocks.0.resid_in.txt"
        and d.token_rows == 24
        and d.provenance["adjusted_for"]
    )
    report = d.provenance["validation"]
    assert (
        report["measure"] == "oracle" and report["n"] == 3 and report["cfg"] == "cond"
    )
    # a larger alpha is tried only when the smaller ones miss the goal
    assert report["alphas_tried"] in ([1.0], [1.0, 1.5], [1.0, 1.5, 2.0]) and report["alpha"] in report["alphas_tried"]
    assert report["n_planned"] == 3 and report["steered_images"] >= report["n"]
    assert set(report["kept"]) == {"shape", "size", "position", "background"}
    assert report["score"] == pytest.approx(
        report["success"] * min(report["kept"].values())
    )
    # a from-to direction is checked on samples that have its starting value only
    pair = res.load_direction("edit/color/red-to-blue").provenance["validation"]
    assert pair["from"] == "red" and pair["to"] == "blue" and "color is red" in pair["samples"]
    assert report["from"] is None and "color is not blue" in report["samples"]
    # per target, the from-to checks are pooled: the edit the dashboard picks by each sample's own colour
    blue = summary["validation"]["targets"]["color"]["blue"]
    assert blue["pairs"] == len(shapes.COLORS) - 1 and blue["n"] >= blue["pairs"]
    assert blue["meets_goal"] == (blue["success"] >= 0.9 and min(blue["kept"].values()) >= 0.9)
    # the chosen directions were measured, the rest saved unvalidated; the index lists them best first
    effects = res.direction_effects()
    measured = [(n, v) for n, v in effects if v is not None]
    assert {n for n, _ in measured} == {n for n in names if n.startswith("edit/color/") or n == "color/red"}
    assert [n for n, _ in effects[: len(measured)]] == [n for n, _ in measured]  # validated first
    scores = [v["score"] for _, v in measured]
    assert scores == sorted(scores, reverse=True)
    assert summary["direction_effects"][0]["name"] == effects[0][0]
    assert all(not math.isnan(s) for s in scores)

    meta = json.loads(
        (run_dir / "analysis" / "directions" / "color" / "red.json").read_text()
    )
    assert (
        meta["provenance"]["validation"]["alpha"] == 4.0
    )  # token-mean class means are pushed harder


def test_analyze_without_validation_keeps_directions_unmeasured(small_run_dir):
    run_dir = small_run_dir
    summary = latentlens.analyze_run(run_dir, umap="none", quiet=True)
    assert (
        "direction_effects" not in summary and "edit/color/red" in summary["directions"]
    )
    effects = latentlens.load_results(run_dir).direction_effects()
    assert all(v is None for _, v in effects) and [n for n, _ in effects] == sorted(
        n for n, _ in effects
    )
    # for one sample, only the directions that edit it: from its own colour, not toward it
    mine = [n for n, _ in latentlens.load_results(run_dir).direction_effects({"color": "red", "shape": "circle"})]
    assert "edit/color/red-to-blue" in mine and "edit/color/green-to-blue" not in mine
    assert "edit/color/red" not in mine and "edit/color/blue" in mine and "edit/shape/circle" not in mine
    assert "color/red" not in mine and "color/blue" in mine and "edit/size/small" in mine


def test_validate_direction_outside_the_shapes_world_measures_the_pixel_effect(pipe):
    """Labels the oracle cannot read: the score is the patching effect toward the value's mean image."""
    from latentlens.analysis.validate import validate_direction

    prompts = ["a red circle", "a blue square", "a green cross", "a yellow triangle"]
    labels = {"mood": ["calm", "busy", "calm", "busy"]}
    site = "blocks.2.resid_out.img"
    width = site_width(pipe, site)
    kwargs = dict(attribute="mood", to="busy", n=2, num_inference_steps=2)
    zero = latentlens.Direction(torch.zeros(width), site=site)
    still = validate_direction(pipe, zero, prompts, [0, 1, 2, 3], labels, alpha=1.0, **kwargs)
    assert still["measure"] == "pixel_effect" and still["success"] is None
    assert still["kept"] is None
    # steering by nothing leaves every image as it was
    assert still["score"] == still["effect"] == 0.0
    push = latentlens.Direction(torch.full((width,), 3.0), site=site)
    pushed = validate_direction(pipe, push, prompts, [0, 1, 2, 3], labels, **kwargs)
    assert pushed["alphas_tried"] == [4.0] and pushed["alpha"] == 4.0
    assert pushed["n"] == 2 and math.isfinite(pushed["score"])
    assert pushed["score"] == pushed["effect"] != 0.0


def test_a_direction_that_cannot_edit_stops_after_one_chunk(pipe, small_run_dir):
    from latentlens.analysis.validate import CHUNK, GOAL, upper_bound, validate_direction

    run_dir = small_run_dir  # it gives only prompts, seeds, labels and the site's width; 18 samples are enough

    assert upper_bound(0, CHUNK) < GOAL <= upper_bound(CHUNK, CHUNK)  # no hit in a chunk rules the goal out
    assert upper_bound(3, 4) > GOAL and upper_bound(14, 16) > GOAL > upper_bound(11, 16)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    labels = {a: [lab[a] for lab in manifest["labels"]] for a in shapes.ATTRIBUTES}
    width = latentlens.open_run(run_dir)["blocks.5.resid_out.img"].shape[-1]  # whichever toy weights are installed
    nothing = latentlens.Direction(torch.zeros(width), site="blocks.5.resid_out.img", provenance={})
    args = (pipe, nothing, manifest["prompts"], manifest["seeds"], labels)
    kw = {"attribute": "color", "to": "blue", "n": 12, "num_inference_steps": 8}  # 4 steps draw a colour wrong now and then
    stopped = validate_direction(*args, **kw)
    assert stopped["success"] == 0.0 and stopped["stopped_early"] is True
    assert stopped["n"] == CHUNK and stopped["n_planned"] == 12 and stopped["steered_images"] == CHUNK
    full = validate_direction(*args, **kw, early_stop=False)
    assert full["success"] == 0.0 and full["stopped_early"] is False and full["n"] == 12


def test_validate_only_names_a_glob_that_matches_nothing_before_reading(small_run_dir):
    from latentlens.errors import ConfigError

    with pytest.raises(ConfigError, match="'edit/colour/\\*' matches no direction"):
        latentlens.analyze_run(small_run_dir, umap="none", quiet=True, validate=2, validate_only=["edit/colour/*"])


def test_target_totals_pool_the_from_to_checks_per_target():
    from latentlens.analysis.validate import target_totals

    def report(start, to, n, success, kept):
        return {"measure": "oracle", "attribute": "color", "from": start, "to": to, "n": n, "success": success,
                "kept": {"shape": kept}, "score": success * kept}

    rows = [report("red", "blue", 8, 1.0, 1.0), report("green", "blue", 4, 0.5, 1.0), report("red", "green", 4, 1.0, 0.75),
            report(None, "blue", 20, 0.2, 1.0)]  # value vs. the rest: not a from-to check, left out
    totals = target_totals(rows)["color"]
    assert totals["blue"]["n"] == 12 and totals["blue"]["pairs"] == 2
    assert totals["blue"]["success"] == pytest.approx(10 / 12) and totals["blue"]["kept"] == {"shape": 1.0}
    assert totals["blue"]["weakest"] == {"from": "green", "score": 0.5, "n": 4} and not totals["blue"]["meets_goal"]
    assert totals["green"]["kept"]["shape"] == 0.75 and totals["green"]["meets_goal"] is False
    assert target_totals([report("red", "blue", 8, 1.0, 1.0)])["color"]["blue"]["meets_goal"] is True

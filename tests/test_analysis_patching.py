"""Activation patching grids and direction ablation on the real toy MM-DiT (few steps, few pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import latentlens
from latentlens.analysis.patching import (
    PatchGrid,
    PatchPair,
    ablate_direction,
    load_pairs,
    patch_effect,
    patch_grid,
    patchable_sites,
    shapes_pairs,
)
from latentlens.errors import ConfigError, LatentlensError

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    from tiny_pipes import get_pipe

    return get_pipe("toy")  # the trained toy model, shared by the test files


def _images(pipe, prompts, seeds):
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.no_grad():
        return np.asarray(
            pipe(
                prompts, generator=gens, output_type="np", num_inference_steps=STEPS
            ).images
        )


def test_source_equal_to_base_has_effect_zero(pipe):
    pairs = [
        PatchPair(p.base, p.base, p.seed)
        for p in shapes_pairs("color", "red", "blue", n=2)
    ]
    grid = patch_grid(
        pipe,
        pairs,
        sites=["blocks.1.resid_out.img", "blocks.0.resid_in.txt"],
        steps=[1, "all"],
        num_inference_steps=STEPS,
    )
    assert np.all(grid.per_pair == 0.0)
    for cell in grid.cells():
        assert cell["effect"] == 0.0 and cell["ci"] == [0.0, 0.0]
    # the patched images are the base images, pixel for pixel
    assert np.array_equal(grid.images["patched"][1, 1], grid.images["base"])


def test_patching_every_site_at_every_step_reproduces_the_source(pipe):
    pair = shapes_pairs("color", "red", "blue", n=1, seed=3)[0]
    sites = patchable_sites(pipe, "*")
    assert (
        "blocks.0.mod" not in sites
        and "blocks.0.resid_out.img" in sites
        and "latents" in sites
    )
    with latentlens.record(pipe, sites=sites, cfg="both") as donor:
        source = _images(pipe, [pair.source], [pair.seed])
    base = _images(pipe, [pair.base], [pair.seed])
    from contextlib import ExitStack

    with ExitStack() as stack:
        for site in sites:
            stack.enter_context(latentlens.patch(pipe, site, donor))
        patched = _images(pipe, [pair.base], [pair.seed])
    assert np.abs(base - source).max() > 0.1  # red vs blue: the images differ
    np.testing.assert_allclose(patched, source, atol=1e-6)
    assert patch_effect(base, source, patched)[0] == pytest.approx(1.0, abs=1e-5)


def test_grid_cells_equal_a_hand_made_patch_run(pipe):
    pairs = shapes_pairs("color", "red", "blue", n=3, seed=1)
    site = "blocks.0.resid_in.txt"
    grid = patch_grid(
        pipe,
        pairs,
        sites=[site, "blocks.3.resid_out.img"],
        steps=[2, "all"],
        num_inference_steps=STEPS,
        batch_size=2,
        keep_images=3,
    )
    assert grid.columns == [2, "all"] and grid.sites == [site, "blocks.3.resid_out.img"]
    prompts_b, prompts_s, seeds = (
        [p.base for p in pairs],
        [p.source for p in pairs],
        [p.seed for p in pairs],
    )
    with latentlens.record(pipe, sites=site, cfg="both") as donor:
        source = _images(pipe, prompts_s, seeds)
    base = _images(pipe, prompts_b, seeds)
    for j, steps in enumerate(([2], None)):
        with latentlens.patch(pipe, site, donor, steps=steps):
            patched = _images(pipe, prompts_b, seeds)
        d_bs = np.sqrt(((base - source) ** 2).mean(axis=(1, 2, 3)))
        d_ps = np.sqrt(((patched - source) ** 2).mean(axis=(1, 2, 3)))
        np.testing.assert_allclose(grid.per_pair[0, j], (d_bs - d_ps) / d_bs, atol=1e-5)
        cell = grid.cell(site, grid.columns[j])
        assert cell["effect"] == pytest.approx(
            float(np.mean((d_bs - d_ps) / d_bs)), abs=1e-5
        )
        assert cell["ci"][0] <= cell["effect"] <= cell["ci"][1]
        reads = latentlens.shapes.read_batch(
            (np.clip(patched, 0, 1) * 255).round().astype(np.uint8)
        )
        assert cell["oracle_flip"] == pytest.approx(
            np.mean([r.color == "blue" for r in reads])
        )
        kept = grid.images["patched"][0, j].astype(
            int
        )  # batches of 2 vs 3: float rounding, at most 1 level
        assert np.abs(kept - (np.clip(patched, 0, 1) * 255).round()).max() <= 1
    # the whole text input at every step carries the colour: most of the way to the source
    assert grid.cell(site, "all")["effect"] > 0.5


def test_grid_saves_into_a_folder_load_results_reads(pipe, tmp_path):
    pairs = shapes_pairs("color", "red", "blue", n=2)
    grid = patch_grid(
        pipe,
        pairs,
        sites="blocks.0.resid_in.txt",
        steps=["all"],
        tokens=["red", "blue"],
        num_inference_steps=STEPS,
    )
    assert grid.settings["token_positions"] == [
        [3],
        [3],
    ]  # "a small red|blue ...": [CLS] a small red
    folder = grid.save(tmp_path)
    assert folder == tmp_path / "analysis" / "patching" / "color_red_blue"
    res = latentlens.load_results(tmp_path)
    assert res.patch_grid_names == ["color_red_blue"]
    back = res.load_patch_grid("color_red_blue")
    assert back.to_json()["cells"] == json.loads(json.dumps(grid.to_json()["cells"]))
    assert back.pairs == grid.pairs and back.columns == ["all"]
    images = back.cell_images("blocks.0.resid_in.txt", "all", pair=1)
    assert images["patched"].shape == images["base"].shape == (32, 32, 3)
    blocks, columns, table, _ = back.table("txt", sites="*")
    assert blocks == [0] and columns == ["all"] and table.shape == (1, 1)
    with pytest.raises(LatentlensError, match="no patching grid 'nope'"):
        res.load_patch_grid("nope")


def test_ablating_a_direction_removes_it_and_reports_effects(pipe):
    site = "blocks.2.resid_out.img"
    d = latentlens.Direction(
        torch.randn(128, generator=torch.Generator().manual_seed(0)), site=site
    )
    pair = shapes_pairs("color", "red", "blue", n=1)[0]
    with (
        latentlens.ablate(pipe, d, steps=[1]),
        latentlens.record(pipe, sites=site, cfg="both") as rec,
    ):
        _images(pipe, [pair.base], [pair.seed])
    unit = d.vector / d.vector.norm()
    along = rec[site] @ unit  # [step, batch, token]
    assert along[1].abs().max() < 1e-4 and along[0].abs().max() > 1e-2
    res = ablate_direction(pipe, [pair], d, steps=[1, "all"], num_inference_steps=STEPS)
    assert res.kind == "ablation" and res.sites == [site] and res.columns == [1, "all"]
    assert np.isfinite(res.per_pair).all() and len(res.settings["oracle_changed"]) == 2
    with pytest.raises(ConfigError, match="zero vector"):
        latentlens.ablate(pipe, site, torch.zeros(128))


def test_bad_inputs_fail_before_compute(pipe, tmp_path, monkeypatch):
    pairs = shapes_pairs("color", "red", "blue", n=2)
    calls = []
    monkeypatch.setattr(
        type(pipe), "__call__", lambda *a, **k: calls.append(1)
    )  # any compute would show here
    with pytest.raises(ConfigError, match="read-only"):
        patch_grid(pipe, pairs, sites="blocks.0.mod")
    with pytest.raises(
        LatentlensError, match="Unknown site name 'blocks.0.resid_oot.img'"
    ):
        patch_grid(pipe, pairs, sites="blocks.0.resid_oot.img")
    with pytest.raises(ConfigError, match="matches no patchable site"):
        patch_grid(pipe, pairs, sites="blocks.*.mod*")
    mismatched = [
        PatchPair(
            "a small red circle on a gray background",
            "a small light blue circle on a gray background",
        )
    ]
    with pytest.raises(
        ConfigError, match="Pair 0 has different token layouts.*10 tokens.*has 11"
    ):
        patch_grid(pipe, mismatched, sites="blocks.0.resid_in.txt", tokens="red")
    with pytest.raises(ConfigError, match="not a text-stream site"):
        patch_grid(pipe, pairs, sites="blocks.0.resid_out.img", tokens="red")
    with pytest.raises(ConfigError, match="occurs in neither"):
        patch_grid(pipe, pairs, sites="blocks.0.resid_in.txt", tokens="green")
    with pytest.raises(ConfigError, match="metric='l2'"):
        patch_grid(pipe, pairs, sites="blocks.0.resid_in.txt", metric="l2")
    with pytest.raises(ConfigError, match="not .all. or a step index in 0..2"):
        patch_grid(
            pipe,
            pairs,
            sites="blocks.0.resid_in.txt",
            steps=[3],
            num_inference_steps=STEPS,
        )
    with pytest.raises(ConfigError, match="at least one"):
        patch_grid(pipe, [], sites="blocks.0.resid_in.txt")
    assert calls == []
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(
        '{"base": "a red circle", "source": "a blue circle", "seed": 0}\n{"base": "x"}\n'
    )
    with pytest.raises(ConfigError, match="Line 2 of .*pairs.jsonl"):
        load_pairs(bad)
    with pytest.raises(ConfigError, match="Unknown color 'pink'"):
        shapes_pairs("color", "red", "pink", n=2)


def test_patch_grid_is_importable_from_the_public_packages():
    assert (
        latentlens.analysis.patch_grid is patch_grid
        and latentlens.PatchGrid is PatchGrid
    )


def test_cli_builds_shapes_pairs_prints_json_and_saves_the_grid(tmp_path, capsys):
    from latentlens.cli import main

    out = tmp_path / "grids"
    status = main(
        [
            "patch-grid",
            "--model",
            "toy",
            "--attribute",
            "color",
            "--from",
            "red",
            "--to",
            "blue",
            "--n",
            "2",
            "--sites",
            "blocks.0.resid_in.txt",
            "--steps",
            "1",
            "all",
            "--inference-steps",
            str(STEPS),
            "--threads",
            "1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "rms" and doc["n"] == 2
    assert [(c["site"], c["step"]) for c in doc["cells"]] == [
        ("blocks.0.resid_in.txt", 1),
        ("blocks.0.resid_in.txt", "all"),
    ]
    for cell in doc["cells"]:
        assert (
            cell["ci"][0] <= cell["effect"] <= cell["ci"][1]
            and 0.0 <= cell["oracle_flip"] <= 1.0
        )
    grid = latentlens.load_results(out).load_patch_grid("color_red_blue")
    assert grid.cells() == doc["cells"]


def test_cli_bad_input_is_one_clear_message(tmp_path, capsys):
    from latentlens.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"base": "a red circle", "source": "a blue circle", "seed": 0}\n')
    assert (
        main(
            [
                "patch-grid",
                "--pairs",
                str(pairs),
                "--attribute",
                "color",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "either --pairs FILE or --attribute" in capsys.readouterr().err
    assert main(["patch-grid", "--out", str(tmp_path)]) == 2
    assert "--attribute color --from red --to blue --n 20" in capsys.readouterr().err
    assert (
        main(
            [
                "patch-grid",
                "--pairs",
                str(pairs),
                "--sites",
                "blocks.0.mod",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "latentlens patch-grid: error: Site 'blocks.0.mod' is read-only" in err
        and "ConfigError" not in err
    )

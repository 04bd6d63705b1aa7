"""`latentlens demo` records, (analyses) and resumes without recomputing; JSON contract."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_records_the_shapes_probes_and_resumes(tmp_path, capsys):
    import latentlens
    from dashboards.synthetic import save_tiny_toy_pipeline
    from latentlens.cli import main

    tiny = save_tiny_toy_pipeline(tmp_path / "tiny")
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny), "--limit", "4", "--batch-size", "4", "--out", str(out), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["record"]["recorded_now"] == 4 and first["record"]["samples"] == 4
    if not first["analysis"]["analysed"]:  # 4 samples are too few to probe: said, not fatal
        assert "sample" in first["analysis"]["error"]
    run = latentlens.open_run(out / "shapes")
    assert sorted(run.completed) == [0, 1, 2, 3]
    assert "blocks.0.attn.img2txt" in run.names and "blocks.1.resid_out.img" in run.names
    assert run.image_path(3).is_file()
    assert run.manifest["labels"][0]["color"] in latentlens.shapes.COLORS

    assert main(argv) == 0  # rerun: nothing recomputed
    second = json.loads(capsys.readouterr().out)
    assert second["record"]["recorded_now"] == 0
    if first["analysis"]["analysed"]:
        assert second["analysis"]["skipped"] is True

    # The dashboard opens the demo's root and sees the run.
    from dashboards.app import create_app
    from dashboards import config

    create_app(out, cache_dir=tmp_path / "cache")
    assert config.index().run_ids() == ["shapes"]


def test_demo_rejects_a_bad_limit(tmp_path, capsys):
    from latentlens.cli import main

    assert main(["demo", "--limit", "0", "--out", str(tmp_path / "d"), "--json"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err

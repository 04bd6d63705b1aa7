"""`latentlens analyze` on a small synthetic run written through the store API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentlens.cli import main
from latentlens.results import load_results
from latentlens.store import RunStore

N, STEPS, TOKENS, DIM = 120, 3, 4, 12
COLORS = ("red", "blue", "green")
SIZES = ("small", "large")


def _make_run(path, nan_at=None):
    rng = np.random.default_rng(0)
    labels = [{"color": COLORS[i % 3], "size": SIZES[(i // 3) % 2]} for i in range(N)]
    prompts = [f"a {lab['size']} {lab['color']} thing {i}" for i, lab in enumerate(labels)]
    manifest = {"prompts": prompts, "seeds": list(range(N)), "labels": labels,
                "recording": {"steps": [0, 5, 9]}}
    # chunks of 16 samples, as a recording with batch size 16 writes them (one file per sample and step is ~10x
    # the files, which cost more to write and delete than the analysis itself)
    store = RunStore.create(path, manifest, samples_per_chunk=16)
    code = np.zeros((N, DIM))
    for i, lab in enumerate(labels):
        code[i, COLORS.index(lab["color"])] = 1.0
        code[i, 3 + SIZES.index(lab["size"])] = 1.0
    arrays = {}
    dims = {}
    for block in range(2):
        for stream in ("img", "txt"):
            x = rng.normal(size=(N, STEPS, TOKENS, DIM)).astype(np.float32)
            strength = 3.0 * block if stream == "img" else 0.0  # block 1 img carries the labels
            x += strength * code[:, None, None, :]
            name = f"blocks.{block}.resid_out.{stream}"
            arrays[name], dims[name] = x, ("sample", "step", "token", "channel")
    if nan_at is not None:
        arrays[nan_at[0]][7, nan_at[1], 0, 0] = np.nan
    store.write_samples(list(range(N)), arrays, dims=dims)
    store.mark_complete(list(range(N)))
    store.close()
    return path


def test_analyze_json_and_written_results(tmp_path, capsys):
    run = _make_run(tmp_path / "run", nan_at=("blocks.0.resid_out.txt", 2))
    assert main(["analyze", str(run), "--json", "--umap", "none"]) == 0
    document = json.loads(capsys.readouterr().out)
    best = {(p["attribute"], p["stream"]): p for p in document["probes"]}
    assert set(best) == {("color", "img"), ("color", "txt"), ("size", "img"), ("size", "txt")}
    color = best[("color", "img")]
    assert color["site"] == "blocks.1.resid_out.img" and color["accuracy"] >= 0.95
    assert color["step"] in (0, 5, 9) and color["ci_low"] <= color["accuracy"] <= color["ci_high"]
    assert best[("color", "txt")]["accuracy"] < 0.8
    assert document["nan_cells"] == [{"site": "blocks.0.resid_out.txt", "step": 9, "nan_count": 1}]
    assert document["steps"] == [0, 5, 9]
    solver = document["solver"]
    assert 0 < solver["n_iter"] <= solver["max_iter"] and solver["converged"] == (solver["n_iter"] < solver["max_iter"])
    # what the dashboard reads
    results = load_results(run)
    assert results.attributes == ["color", "size"] and not results.missing
    blocks, steps, table, _ = results.probe_grid("color", "img")
    assert blocks == [0, 1] and steps == [0, 5, 9] and table.shape == (2, 3) and (table[1] >= 0.95).all()
    direction = results.load_direction("color/blue")
    assert direction.site == "blocks.1.resid_out.img" and direction.dim == DIM
    assert int(np.argmax(direction.vector.numpy())) == COLORS.index("blue")
    emb = results.embedding("blocks.1.resid_out.img", 5)
    assert emb["pca"].shape[0] == N and list(emb["label_color"][:3]) == list(COLORS)
    cosine = json.loads((run / "analysis" / "cosine.json").read_text())
    assert cosine["site"] == "blocks.1.resid_out.img" and len(cosine["names"]) == 5
    assert cosine["attributes"] == ["color", "size"]


def test_analyze_text_output_and_site_filter(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    assert main(["analyze", str(run), "--sites", "blocks.1.*", "--steps", "5", "--umap", "none"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.resid_out.img" in out and "Results written" in out
    assert json.loads((run / "analysis" / "summary.json").read_text())["sites"] == [
        "blocks.1.resid_out.img", "blocks.1.resid_out.txt"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sites", "blocks.7.resid_out.img"], "did not record site 'blocks.7.resid_out.img'"),
        (["--attributes", "shape"], "no label 'shape'"),
        (["--steps", "3"], "recorded steps: [0, 5, 9]"),
    ],
)
def test_analyze_bad_requests(tmp_path, capsys, argv, message):
    run = _make_run(tmp_path / "run")
    assert main(["analyze", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "site" in message:
        assert "blocks.0.resid_out.img" in err  # lists what the run recorded


def test_analyze_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a latentlens run" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

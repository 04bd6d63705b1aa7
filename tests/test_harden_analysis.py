"""`latentlens analyze` never deletes what it did not write, and never replaces probes with nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentlens.cli import main
from latentlens.store import RunStore

N, DIM = 48, 8
COLORS = ("red", "blue", "green")


def _make_run(path):
    rng = np.random.default_rng(0)
    labels = [
        {"color": COLORS[i % 3], "size": "small"} for i in range(N)
    ]  # size: one value only
    store = RunStore.create(
        path,
        {
            "prompts": [f"p{i}" for i in range(N)],
            "seeds": list(range(N)),
            "labels": labels,
        },
        samples_per_chunk=16,  # a recording's batch-sized chunks, not one file per sample
    )
    x = rng.normal(size=(N, 2, 3, DIM)).astype(np.float32)
    for i in range(N):
        x[i, :, :, i % 3] += 3.0
    store.write_samples(
        list(range(N)),
        {"blocks.0.resid_out.img": x},
        dims={"blocks.0.resid_out.img": ("sample", "step", "token", "channel")},
    )
    store.mark_complete(list(range(N)))
    store.close()
    return path


def test_analyze_keeps_user_files_and_replaces_only_its_own(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    assert main(["analyze", str(run), "--umap", "none"]) == 0
    analysis = run / "analysis"
    (analysis / "notes.md").write_text("my notes")
    (analysis / "directions" / "mine").mkdir(parents=True)
    (analysis / "directions" / "mine" / "hand.json").write_text("{}")
    (analysis / "embeddings" / "keep.txt").write_text("kept")
    stale = analysis / "directions" / "color" / "red.json"
    assert stale.is_file()
    assert (
        main(["analyze", str(run), "--umap", "none", "--steps", "1"]) == 0
    )  # a different cell set
    assert (analysis / "notes.md").read_text() == "my notes"
    assert (analysis / "directions" / "mine" / "hand.json").read_text() == "{}"
    assert (analysis / "embeddings" / "keep.txt").read_text() == "kept"
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["steps"] == [1]
    assert not (
        analysis / "embeddings" / "blocks.0.resid_out.img@0.npz"
    ).exists()  # its own old file went
    assert (analysis / "embeddings" / "blocks.0.resid_out.img@1.npz").is_file()
    assert not list(run.glob(".analysis*")), (
        "the temporary folder beside the analysis is gone"
    )


def test_an_analysis_written_before_the_file_list_is_replaced_without_losing_user_files(
    tmp_path,
):
    run = _make_run(tmp_path / "run")
    assert main(["analyze", str(run), "--umap", "none"]) == 0
    analysis = run / "analysis"
    (analysis / ".latentlens-files.json").unlink()  # as an older latentlens left it
    (analysis / "notes.md").write_text("old notes")
    assert main(["analyze", str(run), "--umap", "none"]) == 0
    assert (analysis / "notes.md").read_text() == "old notes"
    assert (analysis / "probes.json").is_file()


def test_a_single_valued_attribute_is_refused_and_the_analysis_kept(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    assert main(["analyze", str(run), "--umap", "none"]) == 0
    before = (run / "analysis" / "probes.json").read_bytes()
    capsys.readouterr()
    assert main(["analyze", str(run), "--attributes", "size"]) == 2
    err = capsys.readouterr().err
    assert "single value 'small'" in err and "color" in err and "Traceback" not in err
    assert (run / "analysis" / "probes.json").read_bytes() == before


def test_a_full_analysis_is_never_replaced_by_an_empty_one(tmp_path, capsys):
    from latentlens.analysis.run import analyze_run
    from latentlens.errors import StoreError

    run = _make_run(tmp_path / "run")
    analyze_run(run, umap="none", quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    # the same run, relabelled so no label has two values (as after a --limit re-record)
    manifest["labels"] = [{"size": "small"} for _ in range(N)]
    (run / "manifest.json").write_text(json.dumps(manifest))
    journal = [
        json.loads(line) for line in (run / "completed.jsonl").read_text().splitlines()
    ]
    (run / "completed.jsonl").write_text(
        "".join(json.dumps({**e, "labels": {"size": "small"}}) + "\n" for e in journal)
    )
    with pytest.raises(StoreError, match="holds probe results.*was not replaced"):
        analyze_run(run, umap="none", quiet=True)
    assert (run / "analysis" / "probes.json").is_file()
    assert (
        analyze_run(run, umap="none", quiet=True, write=False)["probes"] == []
    )  # reading alone is fine

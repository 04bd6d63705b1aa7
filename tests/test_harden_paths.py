"""Root confinement: nothing outside the dashboard root or the run folder is ever served or read."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dashboards.synthetic import make_synthetic_run


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("confine")
    runs = base / "runs"
    run = make_synthetic_run(
        runs / "good", n_samples=24, blocks=1, steps=2, channels=8, images=True
    )
    secret = base / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    image = run / "images" / "0005.png"
    image.unlink()
    os.symlink(
        secret, image
    )  # a link inside the run's images/ folder that leaves the root
    return runs


@pytest.fixture(scope="module")
def app(root, tmp_path_factory):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(root, cache_dir=tmp_path_factory.mktemp("cache"))


def test_a_symlink_out_of_the_root_is_not_served_and_is_logged(app, caplog):
    client = app.server.test_client()
    assert client.get("/lens/image/4.png?run=good").status_code == 200
    with caplog.at_level(logging.WARNING, logger="latentlens.dashboard"):
        leak = client.get("/lens/image/5.png?run=good")
    assert leak.status_code == 404 and b"root:x" not in leak.data
    assert any("outside the dashboard root" in r.getMessage() for r in caplog.records)


def test_a_symlinked_upload_or_result_is_not_served(app, root):
    from dashboards import config

    folder = config.upload_dir()
    os.symlink(root.parent / "secret.txt", folder / ("ab" * 8 + ".png"))
    response = app.server.test_client().get("/lens/upload/" + "ab" * 8 + ".png")
    assert response.status_code == 404 and b"root:x" not in response.data


def test_the_attention_page_does_not_read_a_linked_image(app):
    from dashboards import config
    from dashboards.data import image_file

    assert image_file(config.index(), "good", 5) is None
    assert image_file(config.index(), "good", 4) is not None


def test_directions_and_embeddings_linked_out_of_the_run_are_refused(root, tmp_path):
    from latentlens.errors import StoreError
    from latentlens.results import load_results

    run = root / "good"
    res = load_results(run)
    name = res.direction_names[0]
    direction = res.directions[name]
    res.load_direction(name)  # a real file inside the run reads fine
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(direction.with_name(direction.name + ".json").read_bytes())
    link = direction.with_name(direction.name + ".json")
    original = link.read_bytes()
    link.unlink()
    os.symlink(elsewhere, link)
    try:
        with pytest.raises(StoreError, match="resolves outside"):
            load_results(run).load_direction(name)
    finally:
        link.unlink()
        link.write_bytes(original)
    cell, path = next(iter(res.embeddings.items()))
    moved = tmp_path / "emb.npz"
    moved.write_bytes(path.read_bytes())
    path.unlink()
    os.symlink(moved, path)
    try:
        with pytest.raises(StoreError, match="resolves outside"):
            load_results(run).embedding(*cell)
    finally:
        path.unlink()
        path.write_bytes(moved.read_bytes())


def test_damaged_runs_are_listed_as_damaged_not_hidden_or_healthy(tmp_path):
    from dashboards.data import RunIndex, clear_caches, results

    runs = tmp_path / "runs"
    for name in ("ok", "no-manifest", "bad-zarr", "bad-journal"):
        make_synthetic_run(
            runs / name,
            n_samples=24,
            blocks=1,
            steps=2,
            channels=8,
            images=False,
            analysis=False,
        )
    (runs / "no-manifest" / "manifest.json").unlink()
    (runs / "bad-zarr" / "arrays" / "blocks.0.resid_out.img" / "zarr.json").write_text(
        "{ broken"
    )
    with open(runs / "bad-journal" / "completed.jsonl", "ab") as handle:
        handle.write(b"\xff\xfe garbage\n")
    clear_caches()
    index = RunIndex(runs)
    infos = {info.run_id: info for info in index.runs()}
    assert set(infos) == {"ok", "no-manifest", "bad-zarr", "bad-journal"}
    assert infos["ok"].error is None
    assert "no manifest.json" in infos["no-manifest"].error
    assert "zarr.json" in infos["bad-zarr"].error
    assert (
        "completed.jsonl" in infos["bad-journal"].error
        and "--repair" in infos["bad-journal"].error
    )
    from latentlens.errors import StoreError

    with pytest.raises(StoreError, match="completed.jsonl"):
        results(index, "bad-journal")  # not "run latentlens analyze"


def test_directions_read_from_the_rest_to_a_value_never_none(app, root):
    import numpy as np

    from dashboards.app import page_module
    from dashboards.data import clear_caches
    from latentlens.analysis.directions import class_mean_direction

    x = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)
    labels = ["black" if i % 2 else "white" for i in range(24)]
    d = class_mean_direction(
        x, labels, to="black", site="blocks.0.resid_out.img", attribute="background"
    )
    assert (
        d.provenance["from"] is None
    )  # what `latentlens analyze` writes for "value vs. the rest"
    d.save(root / "good" / "analysis" / "directions" / "background" / "black")
    clear_caches()
    table = str(page_module("directions")._list({"run": "good"})[0])
    assert "None →" not in table and "the rest → black" in table

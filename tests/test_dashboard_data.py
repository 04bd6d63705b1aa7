"""Dashboard data layer, security and bad-input handling (no browser)."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dashboards.synthetic import make_synthetic_run
from store_faults import chunk_files


def _text(component) -> str:
    return str(component)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("dashroot")
    runs = base / "runs"
    make_synthetic_run(runs / "good", n_samples=40, blocks=2, steps=3, channels=16, images=True)
    make_synthetic_run(runs / "nested" / "raw", n_samples=12, blocks=2, steps=3, channels=16, images=False, analysis=False,
                       attention=False)
    damaged = make_synthetic_run(runs / "damaged", n_samples=12, blocks=2, steps=3, channels=16, images=False, analysis=False)
    # Damage the store: garbage in every chunk file of one array.
    for chunk in chunk_files(damaged / "arrays" / "blocks.0.resid_out.img"):
        chunk.write_bytes(b"not a chunk")
    (runs / "broken-manifest").mkdir()
    (runs / "broken-manifest" / "manifest.json").write_text("{ not json")
    (runs / "not-a-run").mkdir()
    (runs / "not-a-run" / "notes.txt").write_text("hello")
    # A run outside the root, reachable only through a symlink: must not be listed.
    outside = make_synthetic_run(base / "outside", n_samples=4, blocks=1, steps=1, channels=4, images=False, analysis=False)
    os.symlink(outside, runs / "escape")
    return runs


@pytest.fixture(scope="module")
def app(root, tmp_path_factory):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(root, cache_dir=tmp_path_factory.mktemp("cache"), upload_max_bytes=64 * 1024)


def test_runs_under_the_root_are_found_and_nothing_else(app, root):
    from dashboards import config

    ids = config.index().run_ids()
    assert ids == ["broken-manifest", "damaged", "good", "nested/raw"]
    infos = {r.run_id: r for r in config.index().runs()}
    assert infos["good"].completed == 40 and infos["good"].analysed
    assert infos["nested/raw"].analysed is False
    assert infos["broken-manifest"].error and "damaged" in infos["broken-manifest"].error


@pytest.mark.parametrize("bad", ["../outside", "/etc", "good/../../outside", "escape", "..", "", None, 3, "good/.."])
def test_run_ids_outside_the_root_are_refused(app, bad):
    from dashboards import config
    from dashboards.data import DashboardError

    with pytest.raises(DashboardError, match="only runs under the dashboard's root"):
        config.index().path(bad)


def test_image_route_serves_only_runs_under_the_root(app):
    client = app.server.test_client()
    ok = client.get("/lens/image/3.png?run=good")
    assert ok.status_code == 200 and ok.mimetype == "image/png"
    for query in ("../outside", "escape", "/etc", "good/../../outside", "%2e%2e%2foutside"):
        assert client.get(f"/lens/image/0.png?run={query}").status_code == 404
    assert client.get("/lens/image/999.png?run=good").status_code == 404
    leak = client.get("/lens/upload/..%2f..%2fetc%2fpasswd.png")  # falls through to the app's HTML shell
    assert b"root:" not in leak.data and leak.mimetype == "text/html"
    assert client.get("/lens/upload/zzzz.png").status_code == 404


def _png_upload(side: int = 8, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format=fmt)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}[fmt]
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode()


def test_uploads_are_limited_in_size_and_type_and_never_unpickled(app):
    from dashboards import config
    from dashboards.data import DashboardError
    from dashboards.editing import save_upload

    upload_id, size = save_upload(_png_upload(8), "red.png")
    assert size == (8, 8) and (config.upload_dir() / f"{upload_id}.png").is_file()
    assert app.server.test_client().get(f"/lens/upload/{upload_id}.png").status_code == 200
    save_upload(_png_upload(8, "JPEG"), "red.jpg")
    with pytest.raises(DashboardError, match="only PNG and JPEG"):
        save_upload(_png_upload(8, "GIF"), "anim.gif")
    with pytest.raises(DashboardError, match="limit is 1024 per side|KiB"):
        save_upload(_png_upload(2000), "huge.png")
    big = "data:image/png;base64," + base64.b64encode(os.urandom(200 * 1024)).decode()
    with pytest.raises(DashboardError, match="KiB"):
        save_upload(big, "big.png")
    evil = "data:application/octet-stream;base64," + base64.b64encode(pickle.dumps({"x": 1})).decode()
    with pytest.raises(DashboardError, match="not a readable PNG or JPEG"):
        save_upload(evil, "payload.pkl")
    with pytest.raises(DashboardError, match="empty"):
        save_upload(None, None)


def test_features_and_pca_follow_the_labels(app):
    from dashboards import config
    from dashboards.data import features, manifest_labels, open_run, pca

    index = config.index()
    x = features(index, "good", "blocks.1.resid_out.img", 2)
    assert x.shape == (40, 16) and np.isfinite(x).all()
    samples, coords, explained = pca(index, "good", "blocks.1.resid_out.img", 2)
    assert coords.shape == (40, 2) and explained[0] >= explained[1] > 0
    labels = manifest_labels(open_run(index, "good"))
    assert set(labels) == {"shape", "color", "size"} and len(labels["color"]) == 40


def test_probe_page_says_how_to_analyse_a_run_without_analysis(app):
    from dashboards.app import page_module

    probes = page_module("probes")
    out = probes._controls({"run": "nested/raw"})
    assert out[0] == [] and "latentlens analyze" in _text(out[4])
    ok = probes._controls({"run": "good"})
    assert ok[1] in ("color", "shape", "size") and ok[4] is None
    figure, best, note = probes._heatmap("color", "img", "accuracy", {"run": "good"})
    assert figure["data"][0]["type"] == "heatmap" and len(figure["data"][0]["z"]) == 2  # two blocks
    assert "best cell" in best


def test_damaged_store_and_manifest_give_messages_not_tracebacks(app):
    from dashboards.app import page_module

    latents = page_module("latents")
    controls = latents._controls({"run": "damaged"})
    assert controls[-1] is None  # the manifest is fine; the arrays are read later
    out = latents._scatter("blocks.0.resid_out.img", 1, "pca", "color", {"run": "damaged"})
    assert "damaged" in _text(out[1]) and "Traceback" not in _text(out[1])
    runs = page_module("runs")
    detail = runs._detail({"run": "broken-manifest"})
    assert "cannot be read" in _text(detail)
    missing = latents._controls({"run": "../outside"})
    assert "only runs under the dashboard's root" in _text(missing[-1])


def test_direction_that_does_not_fit_gets_a_clear_message(app, root):
    import torch

    from latentlens import Direction
    from dashboards.app import page_module
    from dashboards.data import clear_caches

    Direction(torch.ones(7), site="blocks.1.resid_out.img", steps=[2], provenance={"method": "test"}).save(
        root / "good" / "analysis" / "directions" / "misfit")
    clear_caches()
    directions = page_module("directions")
    figure, provenance, note = directions._histogram("misfit", {"run": "good"})
    assert "does not fit" in _text(note) and "width 7" in _text(note)
    figure, provenance, note = directions._histogram("color/blue", {"run": "good"})
    assert note is None and len(figure["data"]) == 6  # one histogram per colour
    # a token-wise [tokens, dim] direction projects the token-mean features on the mean of its rows
    blue = directions.results(directions.config.index(), "good").load_direction("color/blue")
    Direction(blue.vector.repeat(3, 1), site=blue.site, steps=blue.steps, provenance=dict(blue.provenance)).save(
        root / "good" / "analysis" / "directions" / "rows")
    clear_caches()
    rows_figure, _, rows_note = directions._histogram("rows", {"run": "good"})
    assert rows_note is None and len(rows_figure["data"]) == len(figure["data"])

    def values(trace):  # typed arrays travel as {"dtype", "bdata": base64}
        import base64

        return np.frombuffer(base64.b64decode(trace["x"]["bdata"]), dtype=trace["x"]["dtype"])

    for ours, single in zip(rows_figure["data"], figure["data"]):
        np.testing.assert_allclose(values(ours), values(single), rtol=1e-5, atol=1e-6)
    for name in ("misfit", "rows"):
        for suffix in (".json", ".safetensors"):
            (root / "good" / "analysis" / "directions" / (name + suffix)).unlink()
    clear_caches()


def test_cosine_matrix_compares_directions_of_one_site_stream_and_shape(app, root):
    """Never one matrix of everything: a group per site (its stream) and shape, each computed by
    ``latentlens.cosine_matrix``; a misfit width or token-wise rows get groups of their own."""
    import torch

    from latentlens import Direction, cosine_matrix
    from dashboards.app import page_module
    from dashboards.data import clear_caches, directions as loaded_directions
    from dashboards import config

    folder = root / "good" / "analysis" / "directions"
    blue = page_module("directions").results(config.index(), "good").load_direction("color/blue")
    Direction(torch.ones(7), site=blue.site, steps=[2], provenance={"method": "test"}).save(folder / "misfit")
    Direction(blue.vector.repeat(3, 1), site=blue.site, steps=blue.steps, provenance={}).save(folder / "rows")
    clear_caches()
    try:
        page = page_module("directions")
        loaded, problems = loaded_directions(config.index(), "good")
        assert not problems
        groups = page.cosine_groups(loaded)
        assert groups[f"{blue.site} · token-wise ×3"] == ["rows"]
        assert groups[f"{blue.site} · width 7"] == ["misfit"]
        wide = groups[f"{blue.site} · width {blue.dim}"]
        assert "color/blue" in wide and all(loaded[n].site == blue.site for n in wide)
        options = page._list({"run": "good"})[3]
        assert [o["value"] for o in options] == list(groups)
        assert all(" stream · " in o["label"] for o in options)  # every group names its stream
        for key, names in groups.items():
            figure, style, note = page._cosine(key, {"run": "good"})
            assert figure["data"][0]["x"] == names and key in figure["layout"]["title"]["text"]
            assert style == {"width": f"{figure['layout']['width']}px"}  # square cells; the box scrolls sideways
            expected = cosine_matrix({n: loaded[n] for n in names})[1]
            np.testing.assert_allclose(np.array(figure["data"][0]["z"], dtype=float), expected, atol=1e-3)
            assert figure["layout"]["yaxis"]["tickvals"] == names  # every row labelled
            assert figure["layout"]["height"] >= page.ROW_PX * len(names) <= figure["layout"]["width"]
        assert page._follow("rows", {"run": "good"}) == f"{blue.site} · token-wise ×3"
        _, _, note = page._cosine("blocks.9.nowhere", {"run": "good"})
        assert "The direction group 'blocks.9.nowhere' is not one of" in _text(note)
    finally:
        for name in ("misfit", "rows"):
            for suffix in (".json", ".safetensors"):
                (folder / (name + suffix)).unlink()
        clear_caches()


def test_attention_page_reads_maps_and_aggregates(app):
    from dashboards.app import page_module

    attention = page_module("attention")
    controls = attention._controls({"run": "good"}, {})
    assert controls[-1] is None and controls[0] == 1  # two blocks → slider max 1
    step_min, step_max, step_marks, step_value = controls[3:7]  # the step slider holds denoising steps
    assert (step_min, step_max, step_value) == (min(step_marks), max(step_marks), max(step_marks))
    assert all(str(k) == v for k, v in step_marks.items())
    last = attention._figure(0, 3, 0, step_value, [], {"run": "good"})
    assert last[-1] is None and f"step {step_value}" in str(last[0]["layout"])
    figure, strip, options, token, prompt, note = attention._figure(0, 3, 0, 2, ["blocks", "steps"], {"run": "good"})
    assert note is None and len(options) == 8 and len(strip) == 8 and token == 3
    assert options[1]["label"] == "1: a"  # the toy tokenizer names the tokens ([CLS] a ...)
    assert np.array(figure["data"][0]["z"]).shape == (4, 4)  # 16 image tokens on a 4×4 grid
    none = attention._controls({"run": "nested/raw"}, {})
    assert "has no attention maps" in _text(none[-1]) and "--attention" in _text(none[-1])


def test_attention_step_box_is_bounded_to_the_recorded_steps_and_kept_in_sync(app):
    """The step's number box: its bounds are the recorded steps, a typed step moves the slider (to the
    nearest recorded step), the slider fills the box; posted through the server like a browser would."""
    from dashboards.app import page_module
    from tests.dash_requests import post_callback

    controls = page_module("attention")._controls({"run": "good"}, {})
    step_min, step_max, step_marks, step_value = controls[3:7]
    box_min, box_max, box_value = controls[9:12]
    assert (box_min, box_max, box_value) == (step_min, step_max, step_value)
    steps = sorted(step_marks)
    state = {"app-state.data": {"run": "good"}}

    def typed(value):
        return post_callback(app, "attention-step.value", {"attention-step-box.value": value, "attention-step.value": steps[0]},
                             state=state, changed=["attention-step-box.value"])

    status, body = typed(steps[-1])
    assert status == 200 and body["response"]["attention-step"]["value"] == steps[-1]
    assert "attention-step-box" not in body["response"]  # already the box's value
    # (a step between recorded ones goes to the nearest: tests/browser/test_controls_browser.py, sparse steps)
    for bad, says in ((steps[-1] + 1, f"between {steps[0]} and {steps[-1]}"), (-3, "between"), (1.5, "whole number"),
                      ("7; drop", "whole number"), (None, "Type a denoising step")):
        status, body = typed(bad)
        assert status == 200 and set(body["response"]) == {"attention-message"}, (bad, body)  # nothing moves
        assert says in str(body["response"]["attention-message"]), (bad, body)
    status, body = post_callback(app, "attention-step.value", {"attention-step-box.value": 0, "attention-step.value": steps[1]},
                                 state=state, changed=["attention-step.value"])
    assert body["response"] == {"attention-step-box": {"value": steps[1]}}  # the slider fills the box


def test_results_reader_reads_what_analysis_wrote(root):
    from latentlens.errors import StoreError
    from latentlens.results import load_results

    res = load_results(root / "good")
    assert res.attributes == ["color", "shape", "size"] and res.streams == ["img", "txt"]
    blocks, steps, table, sites = res.probe_grid("color", "img")
    assert blocks == [0, 1] and steps == [0, 1, 2] and table.shape == (2, 3)
    assert sites[1][2] == "blocks.1.resid_out.img"
    assert res.load_direction("color/blue").dim == 16
    assert set(res.embedding("blocks.1.resid_out.img", 2)) >= {"pca", "umap", "sample"}
    with pytest.raises(StoreError, match="latentlens analyze"):
        load_results(root / "nested" / "raw")


def test_dashboard_command_binds_localhost_by_default_and_checks_its_input(tmp_path, capsys):
    from latentlens.cli import build_parser, main

    args = build_parser().parse_args(["dashboard", str(tmp_path)])
    assert args.host == "127.0.0.1" and args.port == 8050
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path), "--port", "70000"]) == 2
    assert "not a valid port" in capsys.readouterr().err


def test_background_jobs_never_pickle(app):
    import diskcache

    from latentlens.errors import LatentlensError  # noqa: F401

    manager = app._background_manager
    assert isinstance(manager.handle.disk, diskcache.JSONDisk)
    manager.handle.set("probe", {"after": ["ab"], "metrics": [{"mean |Δ|": 0.1}]})
    assert manager.handle.get("probe") == {"after": ["ab"], "metrics": [{"mean |Δ|": 0.1}]}
    with pytest.raises(TypeError):
        manager.handle.set("object", object())  # anything that is not JSON is refused, not pickled


def test_a_folder_without_runs_says_how_to_make_one(tmp_path, root):
    from dashboards.app import create_app, page_module

    (tmp_path / "empty" / "notes").mkdir(parents=True)
    try:
        create_app(tmp_path / "empty", cache_dir=tmp_path / "cache")
        table, where, note = page_module("runs")._table({})
        assert table is None and "No runs under" in _text(note) and "latentlens demo" in _text(note)
    finally:
        create_app(root, cache_dir=tmp_path / "cache2")

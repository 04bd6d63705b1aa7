"""Level of detail of the /latents scatter: a budget of points, density for the rest, every point reachable by zooming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dashboards import lod
from dashboards.synthetic import make_scatter_run

N = 3000
BUDGET = 400
SITE = "blocks.0.resid_out.img"


# ---------------------------------------------------------------------- pure functions
def test_allocate_keeps_shares_gives_rare_labels_a_floor_and_never_exceeds_the_budget():
    counts = np.array([5000, 3000, 1990, 10, 0])
    quota = lod.allocate(counts, 1000)
    assert quota.sum() == 1000
    assert (quota <= counts).all() and quota[4] == 0
    assert quota[3] == 10  # the rare label is drawn whole (floor = 1000 // (10 * 4) = 25 > 10)
    assert quota[0] > quota[1] > quota[2]  # proportional otherwise
    assert abs(quota[0] / quota[1] - 5000 / 3000) < 0.1  # roughly proportional (floors shift it a little)
    small = np.array([3, 4])
    assert lod.allocate(small, 1000).tolist() == [3, 4]  # everything fits: everything drawn


def test_stratified_draws_all_points_that_fit_and_a_deterministic_sample_otherwise():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, 10_000)
    codes[:7] = 5  # a rare label
    prio = lod.priority(np.arange(10_000))
    rows = lod.stratified(codes, prio, None, 1000)
    assert len(rows) == 1000 and len(np.unique(rows)) == 1000
    assert set(codes[rows].tolist()) == set(range(6))  # every label is represented
    assert (rows == lod.stratified(codes, prio, None, 1000)).all()  # same picture every time
    mask = np.zeros(10_000, dtype=bool)
    mask[::20] = True  # 500 rows in view: they fit, all are drawn
    assert (lod.stratified(codes, prio, mask, 1000) == np.flatnonzero(mask)).all()
    mask[::4] = True  # 2500 rows: a sample, only of rows in view
    inside = lod.stratified(codes, prio, mask, 1000, order=lod.draw_order(codes, prio))
    assert len(inside) == 1000 and mask[inside].all()
    assert (lod.stratified(codes, prio, None, 0) == np.arange(10_000)).all()  # budget 0: no limit


def test_view_update_reads_zoom_pan_and_autorange_events():
    zoom = {"xaxis.range[0]": 2, "xaxis.range[1]": -1, "yaxis.range[0]": 0, "yaxis.range[1]": 1}
    view = lod.view_update(zoom, lod.FULL_VIEW)
    assert view == {"x": [-1.0, 2.0], "y": [0.0, 1.0]}
    assert lod.view_update({"xaxis.range": [0, 5]}, view) == {"x": [0.0, 5.0], "y": [0.0, 1.0]}  # y kept
    assert lod.view_update({"xaxis.autorange": True, "yaxis.autorange": True}, view) == lod.FULL_VIEW
    for event in ({"autosize": True}, {"dragmode": "zoom"}, {"selections": []}, None, "x",
                  {"xaxis.range": ["a", "b"]}, {"xaxis.range": [0, float("inf")]}):
        assert lod.view_update(event, view) is None


def test_density_counts_every_point_in_view():
    coords = np.random.default_rng(1).normal(size=(5000, 2)).astype(np.float32)
    view = {"x": [-1.0, 1.0], "y": None}
    mask = lod.in_view(coords, view)
    grid = lod.density(coords, mask, view, bins=(20, 10))
    z = np.array([[0.0 if v is None else v for v in row] for row in grid["z"]])  # [y bin, x bin]
    assert z.shape == (10, 20)
    assert grid["count"] == int(mask.sum())
    assert float(np.expm1(z).sum()) == pytest.approx(int(mask.sum()), rel=0.02)  # z = log1p(count), rounded
    assert grid["x0"] == pytest.approx(-1.0 + grid["dx"] / 2)


# ---------------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    base = tmp_path_factory.mktemp("lod")
    make_scatter_run(base / "runs" / "points", N)
    clear_caches()
    return create_app(base / "runs", cache_dir=base / "cache", scatter_budget=BUDGET)


def _points(figure: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids [m], coords [m, 2]) of the scatter traces of a figure."""
    import base64

    ids, xy = [], []
    for trace in figure["data"]:
        if trace["type"] != "scattergl":
            continue
        x = np.frombuffer(base64.b64decode(trace["x"]["bdata"]), np.float32)
        y = np.frombuffer(base64.b64decode(trace["y"]["bdata"]), np.float32)
        assert len(trace["customdata"]) == len(x) == len(y)
        ids.extend(trace["customdata"])
        xy.append(np.stack([x, y], axis=1))
    return np.array(ids), np.concatenate(xy)


def _post(app, inputs_of: str, inputs: list, state: list) -> dict:
    client = app.server.test_client()
    client.get("/")  # Dash registers the pages' callbacks on the first request
    key = next(k for k, spec in app.callback_map.items()
               if k.strip(".").startswith("latents-scatter.figure") and spec["inputs"][0]["id"] + "." + spec["inputs"][0]["property"] == inputs_of)
    spec = app.callback_map[key]
    outputs = [dict(zip(("id", "property"), part.split("@")[0].rsplit(".", 1))) for part in key.strip(".").split("...")]
    payload = {"output": key, "outputs": outputs, "inputs": [dict(i, value=v) for i, v in zip(spec["inputs"], inputs)],
               "state": [dict(s, value=v) for s, v in zip(spec["state"], state)],
               "changedPropIds": [f"{spec['inputs'][0]['id']}.{spec['inputs'][0]['property']}"]}
    response = client.post("/_dash-update-component", json=payload)
    assert response.status_code in (200, 204), response.data[:300]
    return json.loads(response.data)["response"] if response.status_code == 200 else {}


def test_full_view_draws_the_budget_over_a_density_of_all_points_and_says_so(app):
    from dashboards import config
    from dashboards.data import pca

    out = _post(app, "latents-site.value", [SITE, 0, "pca", "color"], [{"run": "points"}])
    figure = out["latents-scatter"]["figure"]
    ids, xy = _points(figure)
    assert len(ids) == BUDGET and len(set(ids.tolist())) == BUDGET
    assert figure["data"][0]["type"] == "heatmap"  # the density layer is drawn under the points
    assert f"showing {BUDGET:,} of {N:,} points" in figure["layout"]["title"]["text"]
    assert figure["layout"]["meta"]["shown"] == BUDGET and figure["layout"]["meta"]["total"] == N
    samples, coords, _ = pca(config.index(), "points", SITE, 0)
    where = {int(s): k for k, s in enumerate(samples)}
    assert np.allclose(xy, coords[[where[int(s)] for s in ids]])  # hover/selection ids match their points
    assert out["latents-view"]["data"]["x"] is None


def test_zoom_replaces_the_points_with_every_point_in_view(app):
    from dashboards import config
    from dashboards.data import pca

    samples, coords, _ = pca(config.index(), "points", SITE, 0)
    # A window around the median holding fewer points than the budget.
    cx, cy = np.median(coords, axis=0)
    half = 0.05 * (coords[:, 0].max() - coords[:, 0].min())
    view = {"x": [float(cx - half), float(cx + half)], "y": [float(cy - half), float(cy + half)]}
    inside = lod.in_view(coords, view)
    assert 0 < inside.sum() <= BUDGET
    relayout = {"xaxis.range[0]": view["x"][0], "xaxis.range[1]": view["x"][1],
                "yaxis.range[0]": view["y"][0], "yaxis.range[1]": view["y"][1]}
    state = [SITE, 0, "pca", "color", {"run": "points"}, None]
    out = _post(app, "latents-relayout.data", [relayout], state)
    figure = out["latents-scatter"]["figure"]
    ids, _ = _points(figure)
    assert sorted(ids.tolist()) == sorted(samples[inside].tolist())
    assert figure["layout"]["xaxis"]["range"] == view["x"]
    assert "all" in figure["layout"]["title"]["text"] and not any(t["type"] == "heatmap" for t in figure["data"])
    # A wider window than the budget: a sample of the points in view, over their density.
    wide = {"xaxis.range": [float(cx - 8 * half), float(cx + 8 * half)]}
    out = _post(app, "latents-relayout.data", [wide], [*state[:-1], out["latents-view"]["data"]])
    figure = out["latents-scatter"]["figure"]
    ids, xy = _points(figure)
    assert len(ids) == BUDGET and ((xy[:, 0] >= wide["xaxis.range"][0]) & (xy[:, 0] <= wide["xaxis.range"][1])).all()
    assert out["latents-view"]["data"]["y"] == view["y"]  # the y range the event did not mention is kept
    # Double click (autorange): back to the full-view sample.
    out = _post(app, "latents-relayout.data", [{"xaxis.autorange": True, "yaxis.autorange": True}],
                [*state[:-1], out["latents-view"]["data"]])
    full = _post(app, "latents-site.value", [SITE, 0, "pca", "color"], [{"run": "points"}])
    assert _points(out["latents-scatter"]["figure"])[0].tolist() == _points(full["latents-scatter"]["figure"])[0].tolist()


def test_events_that_move_no_axis_change_nothing(app):
    state = [SITE, 0, "pca", "color", {"run": "points"}, None]
    assert _post(app, "latents-relayout.data", [{"autosize": True}], state) == {}

"""Every input of every page is checked by the server itself: whatever a client posts to a callback
(huge text, wrong types, negative or enormous numbers, forged plot events, paths), the answer is the
page's own clear message or no change, never a server error, a "Something went wrong" or an echo of
the whole bad value. Each request goes through the server's ``/_dash-update-component`` route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboards.synthetic import make_synthetic_run
from tests.dash_requests import post_callback

RUN = "good"
HUGE = "x" * 20_000
# What a client can post instead of a real value (a browser never would).
BAD = [
    HUGE,
    -1,
    10**12,
    1.5,
    "abc",
    "../../../etc/passwd",
    True,
    [1, 2],
    {"a": 1},
    {"points": "abc"},
    {"points": [5]},
    {"points": [{"customdata": "../../etc", "x": "abc", "y": [], "pointIndex": -5}]},
    {"points": [{"customdata": 10**12, "x": 10**12}]},
    {"points": [{"customdata": -3, "x": -3}]},
    {"xaxis.range[0]": "abc", "xaxis.range[1]": [1]},
    {"xaxis.range": [HUGE, 1], "yaxis.range": {"a": 1}},
    {"run": HUGE},
    {"run": 5, "site": {"a": 1}, "step": "abc", "direction": [1], "sample": -9},
    {
        "run": RUN,
        "site": {"a": 1},
        "step": "abc",
        "attribute": [1],
        "stream": {"b": 2},
        "direction": {"c": 3},
        "sample": -9,
    },
    {"run": RUN, "site": HUGE, "step": 10**12, "attribute": HUGE, "stream": HUGE, "direction": HUGE, "sample": 10**12},
    {"upload": "../../etc/passwd", "before": HUGE, "after": [HUGE], "alphas": "x", "metrics": 5, "error": HUGE},
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A synthetic run with probes, directions and attention, plus a real SAE and a real patching grid."""
    import latentlens
    from latentlens.analysis.patching import patch_grid, shapes_pairs

    runs = tmp_path_factory.mktemp("inputs") / "runs"
    run = make_synthetic_run(runs / RUN, n_samples=24, blocks=2, steps=3, channels=8, images=True)
    latentlens.train_run_sae(run, "blocks.1.resid_out.img", n_features=8, k=2, epochs=1, quiet=True)
    pipe = latentlens.load_pipeline("toy")
    grid = patch_grid(
        pipe,
        shapes_pairs("color", "red", "blue", n=1),
        sites="blocks.0.resid_out.img",
        steps=["all"],
        num_inference_steps=2,
    )
    grid.save(run)
    return runs


@pytest.fixture(scope="module")
def app(root, tmp_path_factory):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    app = create_app(root, cache_dir=tmp_path_factory.mktemp("cache"))
    app.server.test_client().get("/")  # registers the pages' callbacks
    return app


def _callbacks(app) -> list[str]:
    """The key of every server callback of the pages (the editor's background job has its own tests;
    Dash's own page router and job canceller are not the pages' code)."""
    keys = []
    for key, spec in app.callback_map.items():
        if "callback" not in spec or spec.get("background") or key.startswith(("editor-cancel.", ".._pages_")):
            continue
        keys.append(key)
    return keys


def _slots(app, key: str) -> tuple[list[str], list[str]]:
    spec = app.callback_map[key]
    name = lambda item: f"{item['id']}.{item['property']}"
    return [name(i) for i in spec["inputs"]], [name(s) for s in spec["state"]]


@pytest.fixture(scope="module")
def defaults(app) -> dict[str, object]:
    """A valid value of every control, as the pages themselves fill them in (three rounds: controls → values → values)."""
    values: dict[str, object] = {"app-state.data": {"run": RUN}, "app-sample.data": {}, "app-url.pathname": "/"}
    for spec in app.callback_map.values():  # every button counts as clicked once
        for item in spec["inputs"]:
            if item["property"] == "n_clicks":
                values[f"{item['id']}.n_clicks"] = 1
    for _ in range(3):
        for first in _callbacks(app):
            inputs, states = _slots(app, first)
            status, body = post_callback(
                app, first, {k: values.get(k) for k in inputs}, state={k: values.get(k) for k in states}
            )
            if status != 200:
                continue
            for component, props in body["response"].items():
                for prop, value in props.items():
                    if prop in ("value", "data") and f"{component}.{prop}" not in values and value is not None:
                        values[f"{component}.{prop}"] = value
    return values


def test_every_page_fills_its_controls_for_the_fuzzing(defaults):
    for control in (
        "probes-attribute.value",
        "latents-site.value",
        "latents-step.value",
        "attention-step.value",
        "directions-select.value",
        "directions-cosine-site.value",
        "features-site.value",
        "features-select.value",
        "causal-grid.value",
        "causal-stream.value",
    ):
        assert defaults.get(control) is not None, f"{control} was not filled; the fuzzing would miss its checks"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_no_posted_value_breaks_a_callback_or_is_echoed_whole(app, defaults):
    problems = []
    posts = 0
    for first in _callbacks(app):
        inputs, states = _slots(app, first)
        for slot in inputs + states:
            for bad in BAD:
                given = {k: (bad if k == slot else defaults.get(k)) for k in inputs}
                state = {k: (bad if k == slot else defaults.get(k)) for k in states}
                changed = [slot] if slot in inputs else inputs[:1]
                status, body = post_callback(app, first, given, state=state, changed=changed)
                posts += 1
                where = f"{first.strip('.').split('...')[0]} with {slot} = {json.dumps(bad)[:60]}"
                if status not in (200, 204):
                    problems.append(f"{where}: HTTP {status}")
                    continue
                texts = list(_strings(body)) if body else []
                if any("Something went wrong" in t for t in texts):
                    problems.append(f"{where}: {next(t for t in texts if 'Something went wrong' in t)[:200]}")
                if any(len(t) > 2000 and "x" * 2000 in t for t in texts):
                    problems.append(f"{where}: echoes the whole bad value")
    assert posts > 500
    assert not problems, f"{len(problems)} of {posts} posts went wrong:\n" + "\n".join(problems[:60])

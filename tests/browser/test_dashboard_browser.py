"""The dashboard in real headless Chromium: pages load cleanly, clicks link pages, the editor runs, a 100k scatter zooms.

The pages are shown on a small run recorded with the real bundled toy model (``toy_run.py``,
once per session, ~20 s), so the README screenshots taken here show real shapes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser import toy_run
from tests.browser.conftest import save_screenshot
from tiny_pipes import toy_blocks

TOY_BLOCKS = toy_blocks()  # blocks of the bundled toy model (rows of the probe grid)

PAGES = (
    ("runs", "/", "#runs-table table"),
    ("probes", "/probes", "#probes-heatmap .heatmaplayer"),
    ("latents", "/latents", "#latents-scatter .gl-container canvas"),
    ("attention", "/attention", "#attention-strip img"),
    ("directions", "/directions", "#directions-hist .barlayer"),
    ("editor", "/editor", "#editor-direction"),
)


@pytest.fixture(scope="module")
def root(toy_root) -> Path:
    return toy_root


@pytest.fixture()
def app(root):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(root, edit_steps=toy_run.STEPS, cache_dir=root.parent / "cache")


def _no_console_errors(dash_duo, where: str) -> None:
    logs = [entry for entry in dash_duo.get_logs() if "favicon" not in entry.get("message", "")]
    assert logs == [], f"console errors on {where}: {logs}"


def test_every_page_loads_without_console_errors(dash_duo, app):
    dash_duo.start_server(app)
    for name, path, selector in PAGES:
        dash_duo.driver.get(dash_duo.server_url + path)
        dash_duo.wait_for_element(selector, timeout=20)
        assert "Traceback" not in dash_duo.driver.page_source
        time.sleep(0.3)  # let the last callbacks paint
        _no_console_errors(dash_duo, path)
        if name != "editor":
            save_screenshot(dash_duo.driver, f"dashboard-{name}")


def test_clicking_a_probe_cell_updates_the_scatter(dash_duo, app):
    from selenium.webdriver.common.action_chains import ActionChains

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/probes")
    dash_duo.wait_for_element("#probes-heatmap .heatmaplayer", timeout=20)
    drag = dash_duo.wait_for_element("#probes-heatmap .nsewdrag")
    width, height = drag.size["width"], drag.size["height"]
    # Block 0 (top row, y reversed) at the second recorded step (second column).
    rows, columns = TOY_BLOCKS, len(toy_run.RECORDED)
    ActionChains(dash_duo.driver).move_to_element_with_offset(
        drag, int(width * 1.5 / columns), int(height * 0.5 / rows)).click().perform()
    dash_duo.wait_for_contains_text("#latents-scatter .gtitle", f"blocks.0.resid_out.img · step {toy_run.RECORDED[1]}", timeout=20)
    assert dash_duo.driver.current_url.endswith("/latents")
    # Hovering a point shows that sample's image beside the scatter. The scatter may still be redrawn
    # (points fetched for the view) when the mouse first arrives, so a hover that lands before that is
    # repeated with the point's new position, up to three times within the same 30 s.
    from selenium.common.exceptions import TimeoutException

    image = None
    for _attempt in range(3):
        x, y = dash_duo.driver.execute_script("""
            const gd = document.querySelector('#latents-scatter .js-plotly-plot');
            const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            return [xa.l2p(t.x[0]) + 0.5, ya.l2p(t.y[0]) + 0.5];""")
        drag = dash_duo.find_element("#latents-scatter .nsewdrag")
        ActionChains(dash_duo.driver).move_to_element_with_offset(drag, 1, 1).perform()  # move away, so the next move is a new hover
        ActionChains(dash_duo.driver).move_to_element_with_offset(drag, int(x), int(y)).perform()
        try:
            image = dash_duo.wait_for_element("#latents-tooltip img", timeout=10)
            break
        except TimeoutException:
            continue
    assert image is not None, "hovering the scatter's first point never showed its image"
    assert "/lens/image/" in image.get_attribute("src")
    _no_console_errors(dash_duo, "/probes → /latents")


def test_send_to_editor_then_run_produces_an_edited_image(dash_duo, app):
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/directions")
    dash_duo.wait_for_element("#directions-hist .barlayer", timeout=20)
    dash_duo.select_dcc_dropdown("#directions-select", value="color/red")
    dash_duo.wait_for_contains_text("#directions-select", "color/red", timeout=10)
    chosen = dash_duo.find_element("#directions-select").text.strip()
    dash_duo.find_element("#directions-send").click()
    dash_duo.wait_for_element("#editor-run", timeout=20)
    assert dash_duo.driver.current_url.endswith("/editor")
    dash_duo.wait_for_contains_text("#editor-direction", chosen, timeout=20)
    dash_duo.find_element("#editor-run").click()
    edited = dash_duo.wait_for_element("#editor-after-0", timeout=90)
    assert "/lens/result/" in edited.get_attribute("src")
    dash_duo.wait_for_contains_text("#editor-result", "mean |Δ|", timeout=10)
    # then a target text: sample 0 is "black background, small blue square on the right"
    dash_duo.find_element("#editor-mode input[value='target']").click()
    target = dash_duo.find_element("#editor-target")
    _wait_until(lambda: target.is_displayed(), "the target text box to appear")
    target.send_keys("black background, small red square on the right\n")
    dash_duo.find_element("#editor-run").click()
    dash_duo.wait_for_contains_text("#editor-result", "oracle: color: blue → red", timeout=90)
    _no_console_errors(dash_duo, "/editor")
    save_screenshot(dash_duo.driver, "dashboard-editor")


def _offered(dash_duo, selector: str, search: str) -> list[str]:
    """The direction names a dcc.Dropdown offers for ``search`` (typed in its search box; the menu shows only a
    window of a long list, so a search narrows it to what can be read), then the menu is closed again."""
    from selenium.webdriver.common.keys import Keys

    dash_duo.find_element(selector).click()
    box = dash_duo.wait_for_element(".dash-dropdown-search", timeout=10)
    box.send_keys(search)
    time.sleep(0.5)  # the menu filters as the search is typed
    names = [o.text.split(" — ")[0] for o in dash_duo.find_elements(".dash-dropdown-option")]
    names = [] if names == ["No options found"] else names
    box.send_keys(Keys.ESCAPE)
    _wait_until(lambda: not dash_duo.find_elements(".dash-dropdown-search"), "the menu to close")
    return names


def _wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_editor_previews_the_source_and_shows_only_controls_that_apply(dash_duo, app):
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/editor")
    image = dash_duo.wait_for_element("#editor-source-image", timeout=20)
    assert "/lens/image/0.png" in image.get_attribute("src")
    _wait_until(lambda: dash_duo.driver.execute_script("return arguments[0].naturalWidth > 0", image), "the image to load")
    prompt = dash_duo.find_element("#editor-source-prompt").text
    assert "background" in prompt  # the sample's caption, before any edit
    sample = dash_duo.find_element("#editor-sample")
    sample.send_keys("\b2")
    dash_duo.wait_for_element("#editor-source-image[src*='/lens/image/2.png']", timeout=20)
    assert dash_duo.find_element("#editor-direction-box").is_displayed()
    assert not dash_duo.find_element("#editor-target-box").is_displayed()
    dash_duo.find_element("#editor-mode input[value='target']").click()
    _wait_until(lambda: not dash_duo.find_element("#editor-direction-box").is_displayed(), "the direction box to hide")
    assert dash_duo.find_element("#editor-target-box").is_displayed()
    dash_duo.find_element("#editor-source-kind input[value='upload']").click()
    _wait_until(lambda: not dash_duo.find_element("#editor-sample-box").is_displayed(), "the sample box to hide")
    dash_duo.wait_for_contains_text("#editor-source-preview", "Upload a PNG", timeout=10)
    _no_console_errors(dash_duo, "/editor preview")
    save_screenshot(dash_duo.driver, "dashboard-editor-preview")


def test_editor_offers_the_directions_that_start_from_the_samples_own_labels(dash_duo, app, root):
    """A red sample is offered ``edit/color/red-to-…`` (never another colour's from-to direction), the best
    measured one chosen, α set to the strength it was measured at; another sample re-filters the list."""
    from selenium.webdriver.common.keys import Keys

    import latentlens

    labels = json.loads((root / "shapes" / "manifest.json").read_text())["labels"]
    analysis = latentlens.load_results(root / "shapes")
    pairs = [n for n in analysis.direction_names if n.startswith("edit/color/") and "-to-" in n]
    starts = {n.split("/")[2].split("-to-")[0] for n in pairs}  # the colours of the run's canonical captions
    first = next(k for k, lab in enumerate(labels) if lab["color"] in starts)
    other = next(k for k, lab in enumerate(labels) if lab["color"] in starts - {labels[first]["color"]})
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/editor")
    dash_duo.wait_for_element("#editor-source-image", timeout=30)
    for sample in (first, other):
        own = labels[sample]
        best, validation = analysis.direction_effects(own)[0]
        box = dash_duo.find_element("#editor-sample")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE, str(sample))
        dash_duo.wait_for_element(f"#editor-source-image[src*='/lens/image/{sample}.png']", timeout=20)
        dash_duo.wait_for_contains_text("#editor-direction", best, timeout=20)  # the best that applies
        _wait_until(
            lambda: dash_duo.driver.execute_script(
                "const h = document.querySelector('#editor-alpha [role=\"slider\"]');"
                "return h && h.getAttribute('aria-valuenow');"
            ) == f"{validation['alpha']:g}",
            "α to move to the measured strength",
        )
        mine = sorted(n for n in pairs if n.startswith(f"edit/color/{own['color']}-to-"))
        assert sorted(_offered(dash_duo, "#editor-direction", f"color/{own['color']}-to-")) == mine  # every target
        elsewhere = next(c for c in sorted(starts) if c != own["color"])
        assert _offered(dash_duo, "#editor-direction", f"color/{elsewhere}-to-") == []  # not another colour's
        assert _offered(dash_duo, "#editor-direction", f"-to-{own['color']}") == []  # nothing toward its own
    _no_console_errors(dash_duo, "/editor filtered directions")


def test_directions_page_names_from_and_to_without_none(dash_duo, app):
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/directions")
    dash_duo.wait_for_element("#directions-hist .barlayer", timeout=20)
    table = dash_duo.find_element("#" + __import__("dashboards.ids", fromlist=["DIR_TABLE"]).DIR_TABLE).text
    assert "None" not in table and "the rest → red" in table
    _no_console_errors(dash_duo, "/directions")


# ---------------------------------------------------------------------- 100,000 points
BIG = 100_000
DRAWN = """
const gd = document.querySelector('#latents-scatter .js-plotly-plot');
if (!(gd && gd.layout && gd.layout.meta && gd._fullData && document.querySelector('#latents-scatter .gl-container canvas'))) return null;
const traces = gd._fullData.filter(t => t.type === 'scattergl');
const ids = [].concat(...traces.map(t => Array.from(t.customdata || [])));
const n = traces.reduce((k, t) => k + (t.x ? t.x.length : 0), 0);
return {meta: gd.layout.meta, n: n, ids: n === ids.length ? ids : null, title: gd.layout.title.text};
"""


@pytest.fixture(scope="module")
def big_root(tmp_path_factory) -> Path:
    from dashboards.synthetic import make_scatter_run

    base = tmp_path_factory.mktemp("big")
    make_scatter_run(base / "runs" / "points", BIG)  # ~3 s
    return base / "runs"


def _drawn(dash_duo, ready, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = dash_duo.driver.execute_script(DRAWN)
        if state and state["ids"] is not None and state["n"] == state["meta"]["shown"] and ready(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the scatter never reached the expected state; last: {state and state['meta']}")


def test_a_100k_point_scatter_draws_its_budget_and_a_zoom_brings_every_point_in_view(dash_duo, big_root):
    from dashboards import config, lod
    from dashboards.app import create_app
    from dashboards.data import clear_caches, pca

    clear_caches()
    dash_duo.start_server(create_app(big_root, cache_dir=big_root.parent / "cache"))
    dash_duo.driver.get(dash_duo.server_url + "/latents")
    full = _drawn(dash_duo, lambda s: s["meta"]["total"] == BIG)
    assert full["n"] == lod.DEFAULT_BUDGET and len(set(full["ids"])) == lod.DEFAULT_BUDGET
    assert f"showing {lod.DEFAULT_BUDGET:,} of {BIG:,} points" in full["title"]
    _no_console_errors(dash_duo, "/latents with 100,000 points")

    # Zoom (relayout) into a window around the median that holds fewer points than the budget.
    samples, coords, _ = pca(config.index(), "points", "blocks.0.resid_out.img", 0)
    cx, cy = (float(v) for v in np.median(coords, axis=0))
    half = 0.03 * float(coords[:, 0].max() - coords[:, 0].min())
    view = {"x": [cx - half, cx + half], "y": [cy - half, cy + half]}
    inside = samples[lod.in_view(coords, view)]
    assert 0 < len(inside) < lod.DEFAULT_BUDGET
    dash_duo.driver.execute_script(
        "Plotly.relayout(document.querySelector('#latents-scatter .js-plotly-plot'), arguments[0]);",
        {"xaxis.range": view["x"], "yaxis.range": view["y"]})
    zoomed = _drawn(dash_duo, lambda s: s["meta"]["view"]["x"] == view["x"], timeout=30)
    assert sorted(zoomed["ids"]) == sorted(inside.tolist())  # every point in view, and only those
    assert f"all {len(inside):,} points in view" in zoomed["title"]
    save_screenshot(dash_duo.driver, "dashboard-latents-100k-zoomed", docs=False)
    _no_console_errors(dash_duo, "/latents after a zoom")


def test_causal_page_shows_patching_beside_probes_and_a_cell_opens_its_images(dash_duo, app):
    from selenium.webdriver.common.action_chains import ActionChains

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/causal")
    dash_duo.wait_for_element("#causal-patch-heatmap .heatmaplayer", timeout=20)
    dash_duo.wait_for_element("#causal-probe-heatmap .heatmaplayer", timeout=20)
    dash_duo.wait_for_contains_text("#causal-patch-heatmap .gtitle", "patching · color (red → blue) · img", timeout=20)
    dash_duo.wait_for_contains_text("#causal-probe-heatmap .gtitle", "probe accuracy · color · img", timeout=20)
    # both grids share the axes: the image blocks by the recorded steps, plus "all"
    axes = dash_duo.driver.execute_script("""
        return ['#causal-patch-heatmap', '#causal-probe-heatmap'].map(s => {
            const t = document.querySelector(s + ' .js-plotly-plot')._fullData[0]; return [t.x, t.y]; });""")
    assert axes[0] == axes[1] == [[*map(str, toy_run.RECORDED), "all"], [str(b) for b in range(TOY_BLOCKS)]]
    drag = dash_duo.wait_for_element("#causal-patch-heatmap .nsewdrag")
    width, height = drag.size["width"], drag.size["height"]
    columns = len(toy_run.RECORDED) + 1
    ActionChains(dash_duo.driver).move_to_element_with_offset(  # block 0 (top row), column "all" (last)
        drag, int(width * (columns - 0.5) / columns), int(height * 0.5 / TOY_BLOCKS)).click().perform()
    dash_duo.wait_for_contains_text("#causal-cell-summary", "blocks.0.resid_out.img at step all", timeout=20)
    for kind in ("base", "source", "patched"):
        src = dash_duo.find_element(f"#causal-{kind}-0").get_attribute("src")
        assert src.startswith("data:image/png;base64,")
    time.sleep(0.3)
    _no_console_errors(dash_duo, "/causal")
    save_screenshot(dash_duo.driver, "dashboard-causal")


def test_attention_concept_box_maps_typed_words_for_the_selected_block_and_step(dash_duo, app, root):
    from dashboards import config

    from latentlens.shapes.oracle import object_mask

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/attention")
    dash_duo.wait_for_element("#attention-strip img", timeout=20)
    # sample 0 is "black background, small blue square on the right"; "circle" is not in its prompt
    box = dash_duo.find_element("#attention-concepts")
    box.send_keys("square, circle, background")
    dash_duo.find_element("#attention-concept-run").click()
    dash_duo.wait_for_element("#attention-concept-strip img", timeout=90)
    captions = [c.text for c in dash_duo.driver.find_elements("css selector", "#attention-concept-strip figcaption")]
    assert [c.split(" · ")[0] for c in captions] == ["square", "circle", "background"]
    dash_duo.wait_for_contains_text("#attention-concept-status", "attention weights · block 0, step 7", timeout=10)
    # the maps the page shows: every joint block at every step, a distribution over the typed concepts
    (saved,) = Path(config.setting("result_dir")).glob("concepts-*.npz")
    with np.load(saved) as data:
        weights, output, image = data["weights"], data["output"], data["image"]

    config_ = json.loads((root / "shapes" / "manifest.json").read_text())["model"]["transformer_config"]
    blocks, patch = config_["num_layers"], config_["patch_size"]  # whichever toy weights are installed
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    assert weights.shape == output.shape == (toy_run.STEPS, blocks, rows * cols, 3)  # [step, block, token, concept]
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(output.sum(-1), 1.0, atol=1e-5)
    # the sample was generated again from its prompt and seed: the run's own image
    from PIL import Image

    recorded = np.asarray(Image.open(root / "shapes" / "images" / "0000.png").convert("RGB"))
    assert np.abs(recorded.astype(int) - image.astype(int)).max() <= 2
    # the "square" map points at the square: more weight on its patches than elsewhere (later blocks, all steps)
    inside = object_mask(image).reshape(rows, patch, cols, patch).mean(axis=(1, 3)).reshape(-1) >= 0.5
    square = weights[:, blocks // 2 :, :, 0].mean(axis=(0, 1))
    assert inside.any() and square[inside].mean() > square[~inside].mean()
    # the block/step controls and the aggregates apply to the concept maps too
    dash_duo.find_element("#attention-aggregate input[value='blocks']").click()
    dash_duo.wait_for_contains_text("#attention-concept-status", "mean over blocks, step 7", timeout=20)
    dash_duo.find_element("#attention-concept-kind input[value='output']").click()
    dash_duo.wait_for_contains_text("#attention-concept-status", "output space · mean over blocks", timeout=20)
    time.sleep(0.3)
    _no_console_errors(dash_duo, "/attention (concepts)")
    dash_duo.driver.execute_script("document.getElementById('attention-concept-strip').scrollIntoView(false)")
    save_screenshot(dash_duo.driver, "dashboard-attention-concepts")
    # bad input is a message, not a job
    box.clear()
    box.send_keys(", ".join(f"w{k}" for k in range(9)))
    dash_duo.find_element("#attention-concept-run").click()
    dash_duo.wait_for_contains_text("#attention-concept-status", "at most 8 are mapped at once", timeout=30)

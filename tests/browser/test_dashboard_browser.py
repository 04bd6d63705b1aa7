"""The dashboard in real headless Chromium: pages load cleanly, clicks link pages, the editor runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.conftest import ROOT, save_screenshot

PAGES = (
    ("runs", "/", "#runs-table table"),
    ("probes", "/probes", "#probes-heatmap .heatmaplayer"),
    ("latents", "/latents", "#latents-scatter .gl-container canvas"),
    ("attention", "/attention", "#attention-strip img"),
    ("directions", "/directions", "#directions-hist .barlayer"),
    ("editor", "/editor", "#editor-direction"),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A root with one synthetic run whose model is a tiny random toy pipeline (width 32, 2 blocks)."""
    from dashboards.synthetic import make_synthetic_run

    base = tmp_path_factory.mktemp("dash")
    tiny = base / "tiny-toy"
    # Built in a child process so this process never runs torch kernels before the editor forks.
    subprocess.run([sys.executable, "-c", f"from dashboards.synthetic import save_tiny_toy_pipeline as s; s({str(tiny)!r})"],
                   check=True, cwd=ROOT, capture_output=True)
    make_synthetic_run(base / "runs" / "shapes-demo", n_samples=120, blocks=2, steps=4, channels=32, model_id=str(tiny))
    return base / "runs"


@pytest.fixture()
def app(root):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(root, edit_steps=3, cache_dir=root.parent / "cache")


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
    # Block 0 (top row, y reversed) at step 1 (second of four columns).
    ActionChains(dash_duo.driver).move_to_element_with_offset(drag, int(width * 0.375), int(height * 0.25)).click().perform()
    dash_duo.wait_for_contains_text("#latents-scatter .gtitle", "blocks.0.resid_out.img · step 1", timeout=20)
    assert dash_duo.driver.current_url.endswith("/latents")
    # Hovering a point shows that sample's image beside the scatter.
    x, y = dash_duo.driver.execute_script("""
        const gd = document.querySelector('#latents-scatter .js-plotly-plot');
        const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [xa.l2p(t.x[0]) + 0.5, ya.l2p(t.y[0]) + 0.5];""")
    drag = dash_duo.find_element("#latents-scatter .nsewdrag")
    ActionChains(dash_duo.driver).move_to_element_with_offset(drag, int(x), int(y)).perform()
    image = dash_duo.wait_for_element("#latents-tooltip img", timeout=20)
    assert "/lens/image/" in image.get_attribute("src")
    _no_console_errors(dash_duo, "/probes → /latents")


def test_send_to_editor_then_run_produces_an_edited_image(dash_duo, app):
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/directions")
    dash_duo.wait_for_element("#directions-hist .barlayer", timeout=20)
    chosen = dash_duo.find_element("#directions-select").text.strip()
    dash_duo.find_element("#directions-send").click()
    dash_duo.wait_for_element("#editor-run", timeout=20)
    assert dash_duo.driver.current_url.endswith("/editor")
    dash_duo.wait_for_contains_text("#editor-direction", chosen, timeout=20)
    dash_duo.find_element("#editor-run").click()
    edited = dash_duo.wait_for_element("#editor-after-0", timeout=90)
    assert "/lens/result/" in edited.get_attribute("src")
    dash_duo.wait_for_contains_text("#editor-result", "mean |Δ|", timeout=10)
    _no_console_errors(dash_duo, "/editor")
    save_screenshot(dash_duo.driver, "dashboard-editor")

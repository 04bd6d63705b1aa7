"""The /features page in real headless Chromium, on an SAE trained with `latentlens sae` on the real toy run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import toy_run
from tests.browser.conftest import ROOT, save_screenshot

SITE = "blocks.2.resid_out.img"


@pytest.fixture(scope="module")
def sae_root(toy_root, tmp_path_factory) -> Path:
    """A copy of the session's toy run with an SAE trained on it (in a child process, like the recording)."""
    root = tmp_path_factory.mktemp("sae-runs")
    shutil.copytree(toy_root / "shapes", root / "shapes")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "latentlens", "sae", str(root / "shapes"), "--site", SITE, "--steps",
                           str(toy_run.RECORDED[-1]), "--features", "32", "--k", "4", "--epochs", "2", "--threads", "1"],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"latentlens sae failed:\n{done.stderr[-3000:]}"
    return root


@pytest.fixture()
def app(sae_root):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(sae_root, edit_steps=toy_run.STEPS, cache_dir=sae_root.parent / "sae-cache")


def _no_console_errors(dash_duo, where: str) -> None:
    logs = [entry for entry in dash_duo.get_logs() if "favicon" not in entry.get("message", "")]
    assert logs == [], f"console errors on {where}: {logs}"


def test_features_page_shows_top_samples_with_token_activations_and_sends_a_feature_to_the_editor(dash_duo, app, sae_root):
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/features")
    image = dash_duo.wait_for_element("#features-top-0 .ll-token-overlay img", timeout=30)
    assert "/lens/image/" in image.get_attribute("src")
    cells = dash_duo.driver.find_elements("css selector", "#features-top-0 .ll-token-cell")
    assert len(cells) == 64  # the toy model's 8 x 8 image patches
    opacities = [float(c.value_of_css_property("opacity")) for c in cells]
    assert max(opacities) > 0.5 and min(opacities) < max(opacities)  # the activation varies over the image
    dash_duo.wait_for_contains_text("#features-summary", "held-out FVU", timeout=10)
    assert "label values have a feature" in dash_duo.find_element("#features-summary").text
    # sorted by alignment: the first feature is the best-aligned one, its label is shown
    dash_duo.find_element("#features-sort input[value='alignment']").click()
    dash_duo.wait_for_contains_text("#features-label", "best-aligned label:", timeout=20)
    first = dash_duo.find_element("#features-select").text
    assert "F1" in first
    feature = first.split(" ")[0]  # "f0012"
    assert dash_duo.find_element("#features-label").text.startswith(feature)
    _no_console_errors(dash_duo, "/features")
    save_screenshot(dash_duo.driver, "dashboard-features")
    # a feature that is not among the exported best-aligned ones: "send to editor" exports it
    import numpy as np

    with np.load(sae_root / "shapes" / "analysis" / "sae" / SITE / "features.npz") as data:
        by_frequency = np.argsort(-data["frequency"].astype(np.float64), kind="stable")
    exported = {p.stem for p in (sae_root / "shapes" / "analysis" / "directions" / "sae" / SITE).glob("f*.json")}
    index = next(i for i, f in enumerate(by_frequency) if f"f{int(f):04d}" not in exported)
    dash_duo.find_element("#features-sort input[value='frequency']").click()
    time.sleep(1.0)
    dash_duo.select_dcc_dropdown("#features-select", index=index)
    wanted = f"f{int(by_frequency[index]):04d}"
    dash_duo.wait_for_contains_text("#features-label", wanted, timeout=20)
    dash_duo.find_element("#features-send").click()
    dash_duo.wait_for_element("#editor-run", timeout=20)
    assert dash_duo.driver.current_url.endswith("/editor")
    chosen = dash_duo.find_element("#editor-direction")
    deadline = time.monotonic() + 20
    while "sae/" not in chosen.text and time.monotonic() < deadline:
        time.sleep(0.2)
    name = chosen.text.strip()
    assert name == f"sae/{SITE}/{wanted}"
    assert (sae_root / "shapes" / "analysis" / "directions" / f"{name}.safetensors").is_file()
    _no_console_errors(dash_duo, "/features → /editor")

"""Browser tests run the dashboard in real headless Chromium (Debian's /usr/bin/chromium + chromedriver).

No browser is ever downloaded: without /usr/bin/chromium and /usr/bin/chromedriver
(``scripts/setup.sh`` installs them with apt-get) these tests are skipped.
Screenshots land in ``test-artifacts/`` (and are copied to ``docs/screenshots/``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
HAVE_BROWSER = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)

try:  # dash[testing] registers the dash_duo fixture
    import dash.testing  # noqa: F401
    from selenium import webdriver  # noqa: F401

    HAVE_DASH_TESTING = True
except ImportError:  # pragma: no cover
    HAVE_DASH_TESTING = False


def pytest_setup_options():
    """Chrome options for dash_duo: headless Chromium with the sandbox-free flags CI needs."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    return options


def pytest_collection_modifyitems(config, items):
    if HAVE_BROWSER and HAVE_DASH_TESTING:
        return
    reason = ("needs Chromium and chromedriver at /usr/bin (bash scripts/setup.sh installs them)"
              if not HAVE_BROWSER else "needs dash[testing] (pip install -e '.[test]')")
    for item in items:
        if "browser" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A root holding ``shapes``: a small run recorded and analysed with the real toy model (once per session).

    Recorded in a child process (``tests/browser/toy_run.py``), so this process never runs torch
    kernels before the editor's background callbacks fork.
    """
    root = tmp_path_factory.mktemp("toy-runs")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "tests.browser.toy_run", str(root / "shapes")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"recording the toy run failed:\n{done.stderr[-3000:]}"
    warm_up_store_threads(root / "shapes")
    return root


@pytest.fixture(autouse=True)
def _spare_store_threads(monkeypatch):
    """dash_duo stops its server by raising SystemExit in *every* thread started since the server
    started; zarr's shared I/O loop and worker threads (started lazily, on demand) must survive it,
    or every read of a later test hangs."""
    from dash.testing import application_runners as runners

    kill = runners.KillerThread.kill

    def spare_zarr_threads(self):
        spared = [t.ident for t in threading.enumerate() if t.name.startswith(("zarr", "asyncio_"))]
        self._old_threads = [*self._old_threads, *spared]
        return kill(self)

    monkeypatch.setattr(runners.KillerThread, "kill", spare_zarr_threads)


def warm_up_store_threads(run_dir: Path) -> None:
    """Read one sample here, before any dash_duo server starts, so zarr's I/O threads exist already."""
    import numpy as np

    import latentlens

    run = latentlens.open_run(run_dir)
    np.asarray(run[run.names[0]][0])


def save_screenshot(driver, name: str, *, docs: bool = True) -> Path:
    """Save a PNG to test-artifacts/NAME.png and (``docs``) copy it to docs/screenshots/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    if docs:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
    return path

"""Browser tests run the dashboard in real headless Chromium (Debian's /usr/bin/chromium + chromedriver).

No browser is ever downloaded: without /usr/bin/chromium and /usr/bin/chromedriver
(``scripts/setup.sh`` installs them with apt-get) these tests are skipped.
Screenshots land in ``test-artifacts/`` (and are copied to ``docs/screenshots/``).
"""

from __future__ import annotations

import os
import shutil
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


def save_screenshot(driver, name: str) -> Path:
    """Save a PNG to test-artifacts/NAME.png and copy it to docs/screenshots/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
    return path

"""notebooks/03_paper_claims.ipynb runs the study end to end on every installed toy model at a small n."""

from __future__ import annotations

import os
import re

import pytest
from notebook_runner import run_notebook

import latentlens


@pytest.mark.slow  # two or three trained toys at n = 5
def test_notebook_03_walks_through_the_study(monkeypatch):
    monkeypatch.setenv("LATENTLENS_STUDY_N", "5")
    assert os.environ["LATENTLENS_STUDY_N"] == "5"  # the kernel inherits it
    text = run_notebook("03_paper_claims.ipynb", timeout=900)
    installed = latentlens.installed_toy_models()
    assert f"models: {', '.join(installed)}" in text
    for name in ("toy", "toy-pixart", "toy-unet"):
        said_missing = re.search(rf"^not installed: {re.escape(name)} \(", text, flags=re.M) is not None
        assert said_missing == (name not in installed), text
    assert f"measured {len(installed)} models, 5 edits each" in text
    for name in installed:
        assert re.search(rf"^{re.escape(name)}\s+img\s+color\s+accuracy \d", text, flags=re.M), text
        assert re.search(rf"^{re.escape(name)}\s+ems\s+success \d", text, flags=re.M), text
        assert re.search(rf"^{re.escape(name)}\s+two objects, color edited: other kept", text, flags=re.M), text
    for claim in ("claim1", "claim2", "claim3", "dit_vs_unet"):
        assert re.search(rf"^{claim}: (holds|fails|mixed|not measured)$", text, flags=re.M), text
    assert "# " in text  # the first line of findings.md

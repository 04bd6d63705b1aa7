"""notebooks/01_probing_quickstart.ipynb runs end to end with the bundled toy model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_probing_quickstart.ipynb"


def _has_toy_weights() -> bool:
    return (REPO / "latentlens" / "toy" / "weights" / "transformer").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not _has_toy_weights(), reason="the toy model's weights are not in latentlens/toy/weights")
def test_notebook_01_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "samples recorded" in text and "selectivity" in text
    assert "Direction(site='blocks." in text and "steered: read as blue" in text
    success = float(re.search(r"steered: read as blue ([0-9.]+)", text).group(1))
    assert success >= 0.75, text  # the notebook's direction really turns red objects blue

"""notebooks/01_probing_quickstart.ipynb runs end to end with the bundled toy model."""

from __future__ import annotations

import re

import pytest
from notebook_runner import REPO, run_notebook


def _has_toy_weights() -> bool:
    return (REPO / "latentlens" / "toy" / "weights" / "transformer").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not _has_toy_weights(), reason="the toy model's weights are not in latentlens/toy/weights")
def test_notebook_01_runs():
    text = run_notebook("01_probing_quickstart.ipynb", timeout=600)
    assert "samples recorded" in text and "selectivity" in text
    assert "Direction(site='blocks." in text and "steered: read as blue" in text
    success = float(re.search(r"steered: read as blue ([0-9.]+)", text).group(1))
    assert success >= 0.75, text  # the notebook's direction really turns red objects blue
    # the patching cell: the text stream carries the colour the image stream only shows
    txt = [float(v) for v in re.findall(r"patching effect img -?[0-9.]+, txt (-?[0-9.]+)", text)]
    blocks = len(re.findall(r"^block \d+: probe", text, flags=re.M))
    assert blocks >= 6 and len(txt) == blocks - 1, text  # every block but the last has a text output
    assert max(txt) >= 0.5, text

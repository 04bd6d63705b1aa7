"""The full list of names per architecture is pinned by a JSON snapshot (any change fails).

To accept an intended change, regenerate with ``LATENTLENS_UPDATE_SNAPSHOTS=1 python -m pytest tests/probing/test_names.py``
and review the diff of ``tests/probing/snapshots/*.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from latentlens import site_names
from latentlens.errors import UnknownNameError
from latentlens.names import StepSelection, select_names

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _models():
    from latentlens import testing

    return {
        "sd3": lambda: testing.tiny_sd3_transformer(num_layers=3),
        "sd35": lambda: testing.tiny_sd3_transformer(num_layers=3, dual_attention=True, qk_norm="rms_norm"),
        "flux": lambda: testing.tiny_flux_transformer(num_layers=2, num_single_layers=2),
        "pixart": lambda: testing.tiny_pixart_transformer(num_layers=2),
    }


@pytest.mark.parametrize("arch", ["sd3", "sd35", "flux", "pixart"])
def test_names_match_snapshot(arch):
    names = site_names(_models()[arch]())
    path = SNAPSHOTS / f"{arch}.json"
    if os.environ.get("LATENTLENS_UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(names, indent=1) + "\n")
    assert path.exists(), f"missing snapshot {path}; run with LATENTLENS_UPDATE_SNAPSHOTS=1"
    assert names == json.loads(path.read_text())
    assert len(names) == len(set(names))


def test_grammar_facts():
    from latentlens import testing

    sd3 = site_names(testing.tiny_sd3_transformer(num_layers=3))
    assert "blocks.2.resid_out.txt" not in sd3 and "blocks.1.resid_out.txt" in sd3  # context_pre_only last block
    flux = testing.tiny_flux_transformer(num_layers=2, num_single_layers=2)
    names = site_names(flux)
    assert "blocks.3.attn.img2txt" in names and "blocks.3.ff_out.img" not in names  # single-stream blocks
    from latentlens import record

    assert record(flux, sites="single_blocks.1.resid_out.*")._recorder.names == [
        "blocks.3.resid_out.img", "blocks.3.resid_out.txt"
    ]  # the alias resolves to the execution-order block number
    pix = site_names(testing.tiny_pixart_transformer())
    assert not [n for n in pix if n.endswith(".txt")] and "blocks.0.attn.img2txt" in pix


def test_unknown_name_suggests_closest():
    valid = ["blocks.0.resid_out.img", "blocks.0.resid_out.txt", "pred"]
    with pytest.raises(UnknownNameError) as err:
        select_names(valid, "blocks.0.resid_outt.img")
    assert "'blocks.0.resid_out.img'" in str(err.value) and "site_names" in str(err.value)


def test_step_selection():
    assert 3 in StepSelection(None) and 3 in StepSelection(range(0, 10, 3)) and 4 not in StepSelection(slice(0, 10, 3))
    assert 5 in StepSelection(slice(5, None)) and 4 not in StepSelection(slice(5, None))
    assert 2 in StepSelection(2) and 1 not in StepSelection([0, 2])

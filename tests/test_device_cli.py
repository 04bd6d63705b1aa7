"""``--device`` and ``--model-dtype`` on the commands that run a model besides record and generate.

A bad device is refused before the model loads or any output exists; bfloat16 weights run end to end
(the CUDA twin is in tests/probing/test_cuda.py, run by benchmarks/gpu.sh).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

import latentlens.models
from latentlens.cli import main

PROMPT = "a small red circle on the left on a gray background"
TARGET = "a small blue circle on the left on a gray background"


def _segment(out, *extra):
    return ["segment", "--prompt", PROMPT, "--concepts", "circle,background", "--num-steps", "2",
            "--out", str(out), *extra]


def _edit(image, out, *extra):
    return ["edit", "--image", str(image), "--source", PROMPT, "--target", TARGET, "--steps", "4",
            "--iterations", "2", "--out", str(out), *extra]


def _patch_grid(out, *extra):
    return ["patch-grid", "--attribute", "color", "--from", "red", "--to", "blue", "--n", "1",
            "--sites", "blocks.0.resid_out.*", "--steps", "0", "--inference-steps", "2", "--out", str(out), *extra]


def _edit_bench(*extra):
    return ["edit-bench", "--n", "1", "--methods", "ems", "--no-sde", "--batch-size", "1", "--json", *extra]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return path


@pytest.mark.parametrize("command", ["segment", "edit", "patch-grid", "edit-bench"])
@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda:99", "--device 'cuda:99': this machine has"), ("gpu0", "--device 'gpu0' is not a device")],
)
def test_a_bad_device_is_refused_before_the_model_loads(command, device, message, image, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when --device is bad")

    monkeypatch.setattr(latentlens.models, "load_pipeline", no_model)  # latentlens.load_pipeline follows it
    out = tmp_path / "out"
    args = {
        "segment": lambda: _segment(out, "--device", device),
        "edit": lambda: _edit(image, out / "edited.png", "--device", device),
        "patch-grid": lambda: _patch_grid(out, "--device", device),
        "edit-bench": lambda: _edit_bench("--device", device),
    }[command]()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists(), "a bad --device leaves no output behind"


@pytest.mark.slow
def test_bfloat16_weights_run_segment_edit_patch_grid_and_edit_bench_on_cpu(image, tmp_path, capsys):
    """The four commands run a bfloat16 model end to end: masks, an edited image, a saved grid, a judged edit."""
    seg = tmp_path / "seg"
    assert main(_segment(seg, "--device", "cpu", "--model-dtype", "bfloat16", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert Image.open(seg / "masks" / "circle.png").size == (32, 32) and 0 < doc["area"]["circle"] < 1

    edited = tmp_path / "edited.png"
    assert main(_edit(seg / "image.png", edited, "--device", "cpu", "--model-dtype", "bfloat16", "--json")) == 0
    capsys.readouterr()
    assert Image.open(edited).size == (32, 32)

    grid = tmp_path / "grid"
    assert main(_patch_grid(grid, "--device", "cpu", "--model-dtype", "bfloat16", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (grid / "analysis" / "patching").is_dir() and doc["saved"]

    assert main(_edit_bench("--device", "cpu", "--model-dtype", "bfloat16")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 1 and list(doc["summary"]) == ["ems"]
    assert doc["sources_matching_prompt"] == 1.0  # the bfloat16 model drew the source the oracle reads as its prompt

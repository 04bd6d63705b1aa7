"""A quiet, careful CLI: arguments checked before the model loads, files 0644, no folders above the output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentlens.cli import main

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("side", [1, 7])
def test_edit_refuses_tiny_images_before_loading_the_model(tmp_path, capsys, side):
    image = _image(tmp_path / "tiny.png", side)
    started = time.perf_counter()
    assert (
        main(
            [
                "edit",
                "--image",
                str(image),
                "--target",
                "a red circle",
                "--out",
                str(tmp_path / "o.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{side}x{side} pixels" in err and "at least 8" in err
    assert time.perf_counter() - started < 2.0, "refused before any model load"


def test_edit_creates_no_folders_above_the_outputs_parent(tmp_path, capsys):
    image = _image(tmp_path / "in.png", 32)
    deep = tmp_path / "a" / "b" / "c" / "out.png"
    assert (
        main(
            [
                "edit",
                "--image",
                str(image),
                "--target",
                "a red circle",
                "--out",
                str(deep),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert (
        main(
            [
                "edit",
                "--image",
                str(tmp_path / "missing.png"),
                "--target",
                "x",
                "--out",
                str(tmp_path / "o.png"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_saved_images_are_ordinary_0644_files(tmp_path):
    from latentlens.editor.images import save_image

    old = os.umask(0o022)
    try:
        path = save_image(Image.new("RGB", (8, 8)), tmp_path / "new" / "edit.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    from latentlens.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        save_image(Image.new("RGB", (8, 8)), tmp_path / "x" / "y" / "edit.png")


def test_unrelated_targets_are_warned_about():
    from latentlens.cli.commands.edit import unrelated_target_warning

    assert unrelated_target_warning(
        "a small red circle on the left", "a dog riding a bicycle"
    )
    assert (
        unrelated_target_warning(
            "a small red circle on the left", "a small blue circle on the left"
        )
        is None
    )


def test_generate_creates_only_its_folder_and_removes_it_when_it_fails(
    tmp_path, capsys
):
    deep = tmp_path / "x" / "y"
    assert (
        main(
            ["generate", "--prompt", "a red circle", "--seed", "0", "--out", str(deep)]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()
    out = tmp_path / "imgs"
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "no-such-model"),
                "--prompt",
                "a red circle",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert not out.exists(), "a failed generate leaves no empty folder behind"


@pytest.mark.slow
def test_generate_prints_no_third_party_noise_unless_verbose(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "latentlens",
        "generate",
        "--prompt",
        "a red circle",
        "--seed",
        "0",
        "--num-inference-steps",
        "2",
    ]
    quiet = subprocess.run(
        [*command, "--out", str(tmp_path / "q")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines == [
        "latentlens generate: 1/1 images written to " + str(tmp_path / "q")
    ], lines
    loud = subprocess.run(
        [*command, "--out", str(tmp_path / "v"), "--verbose"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loud.returncode == 0 and len(loud.stderr.splitlines()) > 1


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--prompt", "x", "--seed", "0", "--out", "o"],
        ["edit", "--image", "i.png", "--target", "t", "--out", "o.png"],
    ],
)
def test_one_name_for_denoising_steps_and_the_old_spelling_still_works(command, capsys):
    from latentlens.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*command, "--num-inference-steps", "3"]).steps == 3
    assert "deprecated" not in capsys.readouterr().err
    assert parser.parse_args([*command, "--steps", "4"]).steps == 4
    assert (
        "--steps is deprecated here; use --num-inference-steps"
        in capsys.readouterr().err
    )
    record = parser.parse_args(
        [
            "record",
            "--prompts",
            "p",
            "--out",
            "o",
            "--steps",
            "0,5",
            "--num-inference-steps",
            "9",
        ]
    )
    assert (record.steps, record.num_inference_steps) == (
        "0,5",
        9,
    )  # --steps: recorded steps

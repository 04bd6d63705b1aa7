"""``latentlens generate`` and ``latentlens train-toy`` from the command line (in-process, tiny model)."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest

import latentlens.models
from latentlens.cli import main
from latentlens.toy.pipeline import tiny_toy_pipeline

PROMPTS = ["a small red circle on the left on a gray background", "a large blue cross at the top on a white background"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_toy")
    tiny_toy_pipeline(seed=1).save_pretrained(folder)
    return folder


def _png(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


def test_generate_names_files_and_seeds_image_i_with_seed_plus_i(model_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    code = main(["generate", "--model", str(model_dir), "--prompt", *PROMPTS, "--seed", "5", "--steps", "2",
                 "--out", str(out), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["images"] == [str(out / "0000.png"), str(out / "0001.png")]
    assert document["seeds"] == [5, 6] and document["seconds"] > 0
    assert sorted(os.listdir(out)) == ["0000.png", "0001.png"]
    assert _png(out / "0000.png").shape == (32, 32, 3)

    # Image 1 alone with seed 6 is the same image: per-image seeding does not depend on the batch.
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text(PROMPTS[1] + "\n\n")
    code = main(["generate", "--model", str(model_dir), "--prompts", str(prompts_file), "--seed", "6",
                 "--steps", "2", "--out", str(tmp_path / "alone")])
    assert code == 0
    np.testing.assert_array_equal(_png(tmp_path / "alone" / "0000.png"), _png(out / "0001.png"))


def test_generate_warns_about_words_unknown_to_the_shapes_world(model_dir, tmp_path, capsys):
    code = main(["generate", "--model", str(model_dir), "--prompt", "a small red dragon on the left",
                 "--seed", "0", "--steps", "1", "--out", str(tmp_path / "o")])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning" in err and "dragon" in err
    assert (tmp_path / "o" / "0000.png").is_file()


def test_generate_warns_when_a_two_object_prompt_names_the_right_object_first(model_dir, tmp_path, capsys):
    right_first = "a small red circle on the right and a large blue square on the left on a gray background"
    code = main(["generate", "--model", str(model_dir), "--prompt", right_first,
                 "--seed", "0", "--num-inference-steps", "1", "--out", str(tmp_path / "o")])
    assert code == 0
    err = capsys.readouterr().err
    assert "names the right or bottom object first" in err and (tmp_path / "o" / "0000.png").is_file()
    left_first = "a large blue square on the left and a small red circle on the right on a gray background"
    assert main(["generate", "--model", str(model_dir), "--prompt", left_first,
                 "--seed", "0", "--num-inference-steps", "1", "--out", str(tmp_path / "p")]) == 0
    assert "object first" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_bad_out_is_an_error_before_any_model_work(model_dir, tmp_path, capsys, monkeypatch, kind):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when --out is bad")

    monkeypatch.setattr(latentlens.models, "load_pipeline", no_model)
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out = blocker if kind == "file" else blocker / "sub"
    code = main(["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--seed", "0", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "Traceback" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_an_error(model_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--seed", "0", "--out", str(locked)])
    finally:
        locked.chmod(0o700)
    assert code == 2 and "Cannot write" in capsys.readouterr().err


def test_generate_input_errors(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompts", str(tmp_path / "missing.txt"),
                 "--seed", "0", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--seed", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_generate_device_and_model_dtype(model_dir, tmp_path, capsys, monkeypatch):
    assert main(["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--seed", "0", "--steps", "1",
                 "--device", "cpu", "--model-dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    assert _png(tmp_path / "bf16" / "0000.png").shape == (32, 32, 3)

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when --device is bad")

    monkeypatch.setattr(latentlens.models, "load_pipeline", no_model)
    for device, message in [("cuda:99", "--device 'cuda:99': this machine has"), ("gpu0", "is not a device")]:
        assert main(["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--seed", "0",
                     "--device", device, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "o").exists(), "a bad --device creates no output folder"


def test_train_toy_cli_refuses_resume_without_checkpoint(tmp_path, capsys):
    code = main(["train-toy", "--out", str(tmp_path / "run"), "--resume", "--steps", "1"])
    assert code == 2
    assert "--resume" in capsys.readouterr().err

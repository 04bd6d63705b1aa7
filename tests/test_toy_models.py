"""``load_pipeline``: the bundled toy model offline, local folders, and clear errors for bad weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import latentlens
import latentlens.toy
from latentlens.errors import ConfigError, StoreError, UnknownNameError
from latentlens.models import load_pipeline
from latentlens.toy.pipeline import ToyPipeline, tiny_toy_pipeline

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_toy")
    tiny_toy_pipeline(seed=2).save_pretrained(folder)
    return folder


def test_load_pipeline_toy_is_offline_and_exported():
    pipe = latentlens.load_pipeline("toy")
    assert isinstance(pipe, latentlens.ToyPipeline)
    assert pipe.transformer.dtype == torch.float32
    assert type(pipe.transformer).__name__ == "SD3Transformer2DModel"
    assert pipe.transformer.config.in_channels == 3 and pipe.transformer.config.sample_size == 32


def test_load_pipeline_from_a_saved_folder(saved):
    pipe = load_pipeline(saved)
    assert isinstance(pipe, ToyPipeline)
    out = pipe("a red circle", num_inference_steps=1, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_missing_weights_file_names_the_file_and_the_fix(saved, tmp_path, monkeypatch):
    broken = tmp_path / "weights"
    shutil.copytree(saved, broken)
    (broken / WEIGHTS).unlink()
    with pytest.raises(StoreError, match="diffusion_pytorch_model.safetensors"):
        load_pipeline(broken)
    monkeypatch.setattr(latentlens.toy, "WEIGHTS_DIR", broken)
    with pytest.raises(StoreError, match="git checkout latentlens/toy/weights") as info:
        load_pipeline("toy")
    assert "MODEL_CARD.md" in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garble", "lfs_pointer"])
def test_corrupt_weights_file_is_an_error(saved, tmp_path, monkeypatch, damage):
    broken = tmp_path / "weights"
    shutil.copytree(saved, broken)
    path = broken / WEIGHTS
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        path.write_bytes(b"\xff" * 64 + data[64:])
    else:
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    monkeypatch.setattr(latentlens.toy, "WEIGHTS_DIR", broken)
    with pytest.raises(StoreError, match="corrupt") as info:
        load_pipeline("toy")
    assert str(path) in str(info.value) and "git checkout" in str(info.value)


def test_missing_model_index_and_bad_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="model_index.json"):
        load_pipeline(tmp_path / "empty")
    with pytest.raises(UnknownNameError, match="neither"):
        load_pipeline("no-such-model")
    with pytest.raises(ConfigError):
        load_pipeline("")
    with pytest.raises(StoreError, match="local files"):
        load_pipeline("nobody/not-cached-anywhere")

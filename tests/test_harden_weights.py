"""Weights are verified: the bundled toy weights by checksum, any pipeline's first outputs for NaN/inf."""

from __future__ import annotations

import shutil

import pytest
import torch

from latentlens.errors import StoreError
from latentlens.models import load_pipeline
from latentlens.toy import WEIGHTS_DIR
from latentlens.weights import CHECKSUMS, verify_checksums, write_checksums

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def test_the_bundled_weights_carry_a_checksum_that_matches():
    assert (WEIGHTS_DIR / CHECKSUMS).is_file()
    assert verify_checksums(WEIGHTS_DIR, "hint", required=True)


def test_flipped_data_bytes_are_refused_naming_the_file(tmp_path):
    folder = tmp_path / "toy"
    shutil.copytree(WEIGHTS_DIR, folder)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1000:-990] = bytes(
        b ^ 0xFF for b in data[-1000:-990]
    )  # tensor data, header intact
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(
        StoreError,
        match=r"diffusion_pytorch_model\.safetensors does not match its checksum",
    ):
        load_pipeline(folder)


def test_nan_weights_fail_on_the_first_call_naming_the_component(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "toy"
    shutil.copytree(WEIGHTS_DIR, folder)
    tensors = load_file(str(folder / WEIGHTS))
    name = next(k for k in tensors if k.endswith("proj_out.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    write_checksums(folder)  # consistent checksums: only the values are bad
    pipe = load_pipeline(folder)
    with pytest.raises(
        StoreError,
        match="The transformer of this pipeline produced NaN or infinite values",
    ):
        pipe("a red circle", num_inference_steps=2, output_type="np")


def test_good_weights_generate_and_the_screen_then_costs_nothing():
    pipe = load_pipeline("toy")
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape[-1] == 3
    assert not pipe.transformer._forward_hooks, (
        "the screening hook removed itself after a finite output"
    )


def test_saved_toy_pipelines_carry_checksums(tmp_path):
    pipe = load_pipeline("toy")
    pipe.save_pretrained(tmp_path / "saved")
    assert verify_checksums(tmp_path / "saved", "hint", required=True)

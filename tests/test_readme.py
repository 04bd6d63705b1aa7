"""The README's Python examples run as written and do what they say (fewer denoising steps to stay fast)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run_and_steer_red_to_blue():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "the README lost its quick-start examples"
    namespace: dict = {}
    torch.manual_seed(0)  # the first example draws its noise from torch's global generator
    exec(blocks[0].replace("num_inference_steps=20", "num_inference_steps=4"), namespace)  # noqa: S102 - our own docs
    assert tuple(namespace["rec"]["blocks.3.resid_out.img"].shape[:2]) == (4, 1)
    exec(blocks[1], namespace)  # noqa: S102
    from latentlens import shapes

    read = shapes.read_attributes(np.asarray(namespace["blue"]))
    assert read.color == "blue" and read.shape == "circle" and read.position == "center", read

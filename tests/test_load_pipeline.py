"""``load_pipeline(..., torch_dtype=...)`` runs every component in that dtype, whatever diffusers' load path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentlens.models import load_pipeline

CALL = {
    "sd3": {"max_sequence_length": 8},
    "flux": {"max_sequence_length": 8, "height": 16, "width": 16},
    "pixart": {"max_sequence_length": 8, "use_resolution_binning": False, "clean_caption": False},
}


@pytest.mark.parametrize("kind", sorted(CALL))
def test_a_saved_pipeline_loads_and_runs_in_bfloat16(kind, saved_pipe):
    pipe = load_pipeline(str(saved_pipe(kind)), torch_dtype=torch.bfloat16)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and not getattr(component, "_keep_in_fp32_modules", None):
            dtypes = {p.dtype for p in component.parameters() if p.is_floating_point()}
            assert dtypes <= {torch.bfloat16}, f"{name} holds {dtypes}"
    image = pipe("a red circle", num_inference_steps=2, output_type="np", **CALL[kind]).images
    assert np.isfinite(image).all()

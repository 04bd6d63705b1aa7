"""The run format is the dashboard's only contract: kinds and steps come from the store, imports are public."""

from __future__ import annotations

import ast
from pathlib import Path

from latentlens import open_run, record_prompts
from latentlens.testing import tiny_sd3_pipeline

from dashboards import data

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"


def _tiny_run(tmp_path, **kwargs):
    pipe = tiny_sd3_pipeline(dual_attention=True, qk_norm="rms_norm", num_layers=2)
    out = tmp_path / "run"
    record_prompts(pipe, ["a red circle", "a blue square"], out, num_inference_steps=4, save_images=False,
                   progress=False, pipeline_kwargs={"max_sequence_length": 8}, **kwargs)
    return open_run(out)


def test_dual_attention_maps_are_not_offered_as_activations(tmp_path):
    """SD3.5's second attention (``blocks.{i}.attn2.img2img``) is a map, whatever its name looks like."""
    run = _tiny_run(tmp_path, sites=["blocks.0.attn2_out.img", "blocks.0.resid_out.img"],
                    attention=["blocks.0.attn2.img2img", "blocks.0.attn.img2txt"])
    assert run.kind("blocks.0.attn2.img2img") == "map"
    assert data.activation_sites(run) == ["blocks.0.attn2_out.img", "blocks.0.resid_out.img"]


def test_slice_steps_keep_their_denoising_step_labels(tmp_path):
    """``record_prompts(steps=slice(...))`` stores ``{"slice": ...}``; the pages must still name steps 1 and 3."""
    run = _tiny_run(tmp_path, sites="blocks.0.resid_out.img", steps=slice(1, 4, 2))
    assert run.manifest["recording"]["steps"] == {"slice": [1, 4, 2]}
    n_axis = run["blocks.0.resid_out.img"].shape[1]
    assert data.recorded_steps(run, n_axis) == [1, 3]
    assert data.step_position(run, "blocks.0.resid_out.img", 3) == 1


def _imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
    return out


def test_dashboards_import_only_public_names():
    bad = []
    for path in sorted(DASHBOARDS.rglob("*.py")):
        for module, name in _imports(path):
            if not module.split(".")[0] in ("latentlens", "dashboards"):
                continue
            parts = module.split(".") + ([name] if name else [])
            if any(p.startswith("_") and p != "__future__" for p in parts):
                bad.append(f"{path.relative_to(DASHBOARDS)}: from {module} import {name}")
    assert not bad, "dashboards/ must use latentlens' public API only:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_latentlens_modules():
    """Modules talk through public names only (a ``_private`` name is its module's own business)."""
    root = DASHBOARDS.parent / "latentlens"
    bad = []
    for path in sorted(root.rglob("*.py")):
        for module, name in _imports(path):
            if module.split(".")[0] != "latentlens" or not name:
                continue
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{path.relative_to(root.parent)}: from {module} import {name}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)

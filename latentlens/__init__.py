"""latentlens: look inside Diffusion Transformers and edit images through what you find there.

The public API is re-exported here and imported lazily, so ``import latentlens``
stays fast and does not import torch until a tool is used.

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")
    with latentlens.record(pipe, sites="blocks.*.resid_out.img") as rec:
        pipe("a small red circle on the left on a gray background")
    rec["blocks.0.resid_out.img"].shape  # [step, batch, token, channel]
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it. Add one line per public name.
_EXPORTS: dict[str, str] = {
    "LatentlensError": "latentlens.errors",
    "load_pipeline": "latentlens.models",
    "installed_toy_models": "latentlens.models",
    "ToyPipeline": "latentlens.toy.pipeline",
    "record": "latentlens.recorder",
    "Recording": "latentlens.capture.recording",
    "site_names": "latentlens.recorder",
    "steer": "latentlens.interventions",
    "patch": "latentlens.interventions",
    "ablate": "latentlens.interventions",
    "Direction": "latentlens.direction",
    "load_probe_spec": "latentlens.analysis.spec",
    "ProbeSpec": "latentlens.analysis.spec",
    "LinearProbe": "latentlens.analysis.probes",
    "LinearProbeGrid": "latentlens.analysis.probes",
    "PCA": "latentlens.analysis.pca",
    "StreamingPCA": "latentlens.analysis.pca",
    "analyze_run": "latentlens.analysis.run",
    "patch_grid": "latentlens.analysis.patching",
    "ablate_direction": "latentlens.analysis.patching",
    "PatchGrid": "latentlens.analysis.patching",
    "PatchPair": "latentlens.analysis.patching",
    "class_mean_direction": "latentlens.analysis.directions",
    "text_direction": "latentlens.analysis.directions",
    "cosine_matrix": "latentlens.metrics",
    "sde": "latentlens.metrics",
    "psnr": "latentlens.metrics",
    "SparseAutoencoder": "latentlens.analysis.sae",
    "train_run_sae": "latentlens.analysis.sae_run",
    "RunStore": "latentlens.store",
    "open_run": "latentlens.store",
    "VerifyReport": "latentlens.store",
    "record_prompts": "latentlens.runs",
    "load_results": "latentlens.results",
    "edit": "latentlens.editor.editor",
    "EMSEditor": "latentlens.editor.editor",
    "EditResult": "latentlens.editor.editor",
    "CompatNotice": "latentlens.compat",
    "plan_record": "latentlens.size_plan",
    "check_concepts": "latentlens.concepts",
    "segment": "latentlens.analysis.segment",
    "Segmentation": "latentlens.analysis.segment",
}


# subpackages reachable as attributes, e.g. ``latentlens.shapes.render(...)``
_SUBPACKAGES = ("shapes", "toy", "analysis", "adapters", "testing", "editor")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"latentlens.{name}")
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'latentlens' has no attribute {name!r}")
    # not cached here: the name always follows its home module (a patched latentlens.models.load_pipeline too)
    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)

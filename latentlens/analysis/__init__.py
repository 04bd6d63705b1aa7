"""The analysis layer: probe specs, linear probes, PCA, directions, patching grids and disentanglement metrics.

Every estimator follows scikit-learn's conventions (``__init__`` stores parameters, ``fit``
returns ``self``, fitted state ends in ``_``). Results feed :class:`latentlens.Direction`.
Patching names (``patch_grid``, ``ablate_direction``, ``shapes_pairs`` ...) import torch lazily.

Example::

    from latentlens.analysis import patch_grid, shapes_pairs
    grid = patch_grid(pipe, shapes_pairs("color", "red", "blue", n=8), sites="blocks.*.resid_out.txt")
"""

from __future__ import annotations

import importlib
from typing import Any

from latentlens.analysis.spec import ProbeSample, ProbeSpec, load_probe_spec

_LAZY = {
    name: "latentlens.analysis.patching"
    for name in (
        "PatchGrid",
        "PatchPair",
        "ablate_direction",
        "load_pairs",
        "patch_grid",
        "shapes_pairs",
    )
}
_LAZY["SparseAutoencoder"] = "latentlens.analysis.sae"
_LAZY["AnalysisWriter"] = "latentlens.analysis.folder"  # torch-backed estimators load on first use


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'latentlens.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["ProbeSample", "ProbeSpec", "load_probe_spec", *sorted(_LAZY)]

"""The analysis layer: probe specs, linear probes, PCA, directions and disentanglement metrics.

Every estimator follows scikit-learn's conventions (``__init__`` stores parameters, ``fit``
returns ``self``, fitted state ends in ``_``). Results feed :class:`latentlens.Direction`.
"""

from __future__ import annotations

from latentlens.analysis.spec import ProbeSample, ProbeSpec, load_probe_spec

__all__ = ["ProbeSample", "ProbeSpec", "SparseAutoencoder", "load_probe_spec"]


def __getattr__(name: str) -> object:
    # torch-backed estimators are imported on first use, so importing the package stays light
    if name == "SparseAutoencoder":
        from latentlens.analysis.sae import SparseAutoencoder

        return SparseAutoencoder
    raise AttributeError(f"module 'latentlens.analysis' has no attribute {name!r}")

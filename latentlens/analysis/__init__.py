"""The analysis layer: probe specs, linear probes, PCA, directions and disentanglement metrics.

Every estimator follows scikit-learn's conventions (``__init__`` stores parameters, ``fit``
returns ``self``, fitted state ends in ``_``). Results feed :class:`latentlens.Direction`.
"""

from __future__ import annotations

from latentlens.analysis.spec import ProbeSample, ProbeSpec, load_probe_spec

__all__ = ["ProbeSample", "ProbeSpec", "load_probe_spec"]

"""The capture layer's parts, one job each; :func:`latentlens.record` puts them together.

- :mod:`~latentlens.capture.recording` — :class:`Recording`, what a recording holds (and its store reads);
- :mod:`~latentlens.capture.options` — the recording options (CFG branch, heads, reductions) validated once;
- :mod:`~latentlens.capture.sites` — reading one tensor site and applying token selection and reductions;
- :mod:`~latentlens.capture.maps` — exact attention maps: q/k capture, the SDPA log-sum-exp mode's lifetime;
- :mod:`~latentlens.capture.accumulator` — per-step accumulation and the final ``[step, batch, ...]`` tensors.
"""

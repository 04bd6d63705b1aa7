"""The one writer of the analysis folder format (``RUN_DIR/analysis/``) that :mod:`latentlens.results` reads.

``latentlens analyze`` and anything else that produces analysis results (the dashboard's synthetic
runs, notebooks) write through :class:`AnalysisWriter`: files go to a folder beside the analysis,
then only latentlens' own files are swapped in, so a user's notes and hand-saved files stay.

Layout::

    analysis/probes.json                      {"records": [cell, ...], "attributes": {attribute: [class]}, "settings": {...}}
    analysis/pca.json                         per (site, step): explained_variance_ratio of the top components
    analysis/embeddings/SITE@STEP.npz + .json pca [sample, component], umap [sample, 2], sample [sample], label_<attribute> [sample]
    analysis/directions/<attribute>/<value>.json + .safetensors
    analysis/cosine.json                      cosine matrix of the value directions at one shared cell
    analysis/summary.json                     what `latentlens analyze --json` prints

Example::

    with AnalysisWriter("runs/shapes") as out:
        out.probes(records, attributes={"color": ["red", "blue"]})
        out.direction("color/red", direction)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentlens.analysis.ownfiles import swap_in

ANALYSIS = "analysis"


def cell_name(site: str, step: int) -> str:
    """The file stem of one (site, step) cell, e.g. ``blocks.3.resid_out.img@5``."""
    return f"{site}@{step}"


def json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays (everything else as its string)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=json_default, allow_nan=True) + "\n"


class AnalysisWriter:
    """Write ``RUN_DIR/analysis/`` atomically; use as a context manager (nothing is swapped in on error)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.out = self.run_dir / ANALYSIS
        self.tmp = self.run_dir / f".{ANALYSIS}.tmp"

    def __enter__(self) -> AnalysisWriter:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)  # our own leftover from an interrupted write
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            swap_in(self.tmp, self.out)  # only latentlens' own files are replaced or removed
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def probes(
        self,
        records: Sequence[Mapping[str, Any]],
        attributes: Mapping[str, Sequence[str]],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """The probe grid: one record per (attribute, site, step) cell."""
        doc: dict[str, Any] = {
            "records": list(records),
            "attributes": {a: [str(c) for c in v] for a, v in attributes.items()},
        }
        if settings is not None:
            doc["settings"] = dict(settings)
        (self.tmp / "probes.json").write_text(_dump(doc))

    def pca(self, info: Any) -> None:
        """Explained variance per (site, step)."""
        (self.tmp / "pca.json").write_text(_dump(info))

    def embedding(self, site: str, step: int, arrays: Mapping[str, np.ndarray], method: str | None) -> None:
        """A 2-D embedding of one cell (``pca`` / ``umap`` / ``sample`` / ``label_*`` arrays)."""
        folder = self.tmp / "embeddings"
        folder.mkdir(exist_ok=True)
        stem = cell_name(site, step)
        np.savez(folder / f"{stem}.npz", **arrays)  # type: ignore[arg-type]
        (folder / f"{stem}.json").write_text(_dump({"site": site, "step": int(step), "embedding": method}))

    def direction(self, name: str, direction: Any) -> None:
        """A :class:`~latentlens.Direction` saved as ``directions/<name>`` (e.g. ``color/red``)."""
        direction.save(self.tmp / "directions" / name)

    def cosine(self, doc: Any) -> None:
        (self.tmp / "cosine.json").write_text(_dump(doc))

    def summary(self, doc: Any) -> None:
        (self.tmp / "summary.json").write_text(_dump(doc))


__all__ = ["ANALYSIS", "AnalysisWriter", "cell_name", "json_default"]

"""Read what ``latentlens analyze`` wrote into ``RUN_DIR/analysis/`` (read-only, no pickle).

The dashboard and notebooks use this module to find probe grids, 2-D embeddings
and saved directions of a run without knowing file names. Everything is read
from JSON, ``.npz`` (``allow_pickle=False``) or safetensors files.

Layout read (every part optional; :attr:`AnalysisResults.missing` lists what is absent)::

    RUN_DIR/analysis/
      probes.json            [{attribute, site, stream, block, step, accuracy, selectivity, ...}, ...]
                             (or {"records": [...], "attributes": {attribute: [class]}}; probes.jsonl also works)
      embeddings/*.npz       one file per (site, step): arrays ``pca`` [sample, component], optional ``umap`` [sample, 2],
                             ``sample`` [sample] (sample ids); the JSON twin ``*.json`` names ``site`` and ``step``
      directions/NAME.json   + NAME.safetensors, written by :meth:`latentlens.Direction.save`
      patching/NAME/grid.json + images.npz, written by :meth:`latentlens.PatchGrid.save`

Example::

    from latentlens.results import load_results
    res = load_results("runs/shapes")
    res.attributes                        # ['background', 'color', ...]
    blocks, steps, table, sites = res.probe_grid("color", "img")   # table [block, step]
    res.load_direction(res.direction_names[0])                      # a latentlens.Direction
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latentlens.errors import ConfigError, StoreError, UnknownNameError
from latentlens.safepath import confined

ANALYSIS = "analysis"
PROBES_FILES = ("probes.json", "probes.jsonl")
EMBEDDINGS = "embeddings"
DIRECTIONS = "directions"
PATCHING = "patching"
_BLOCK_PREFIX = "blocks."


def _block_of(site: str) -> int | None:
    parts = site.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("blocks", "single_blocks") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _stream_of(site: str) -> str:
    if site.startswith("text."):
        return "txt"
    last = site.rsplit(".", 1)[-1]
    return last if last in ("img", "txt") else ""


def _read_probe_records(folder: Path) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    for name in PROBES_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            if name.endswith(".jsonl"):
                payload: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                payload = json.loads(text)
        except (OSError, ValueError) as error:
            raise StoreError(
                f"The probe results {path} cannot be read ({error}); rerun `latentlens analyze`."
            ) from error
        classes: dict[str, list[Any]] = {}
        if isinstance(payload, dict):
            classes = dict(payload.get("attributes") or payload.get("classes") or {})
            payload = payload.get("records") or payload.get("cells") or payload.get("probes") or []
        if not isinstance(payload, list):
            raise StoreError(f"The probe results {path} hold no list of cells; rerun `latentlens analyze`.")
        records = []
        for row in payload:
            if not isinstance(row, dict) or "site" not in row or "attribute" not in row:
                continue
            row = dict(row)
            row.setdefault("stream", _stream_of(str(row["site"])))
            row.setdefault("block", _block_of(str(row["site"])))
            row["step"] = int(row.get("step", 0))
            records.append(row)
        return records, classes
    return [], {}


@dataclass
class AnalysisResults:
    """The analysis of one run: probe cells, embedding files and directions (loaded lazily)."""

    run: Path
    probes: list[dict[str, Any]] = field(default_factory=list)
    classes: dict[str, list[Any]] = field(default_factory=dict)
    embeddings: dict[tuple[str, int], Path] = field(default_factory=dict)
    directions: dict[str, Path] = field(default_factory=dict)
    patch_grids: dict[str, Path] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.run / ANALYSIS

    @property
    def missing(self) -> list[str]:
        """Parts of the analysis that are absent, e.g. ``['probes', 'directions']``."""
        out = []
        if not self.probes:
            out.append("probes")
        if not self.embeddings:
            out.append("embeddings")
        if not self.directions:
            out.append("directions")
        return out

    @property
    def attributes(self) -> list[str]:
        return sorted({str(r["attribute"]) for r in self.probes})

    @property
    def streams(self) -> list[str]:
        return sorted({str(r["stream"]) for r in self.probes if r.get("stream")})

    @property
    def direction_names(self) -> list[str]:
        return sorted(self.directions)

    def probe_grid(
        self, attribute: str, stream: str, value: str = "accuracy"
    ) -> tuple[list[int], list[int], np.ndarray, list[list[str | None]]]:
        """``(blocks, steps, table [block, step], sites [block][step])`` of one attribute and stream."""
        if attribute not in self.attributes:
            raise UnknownNameError(
                f"The probe results have no attribute {attribute!r}; they have: {', '.join(self.attributes) or 'none'}."
            )
        rows = [
            r for r in self.probes if r["attribute"] == attribute and r["stream"] == stream and r["block"] is not None
        ]
        if not rows:
            raise ConfigError(
                f"The probe results have no block cells for attribute {attribute!r} in stream {stream!r}; "
                f"streams with results: {', '.join(self.streams) or 'none'}."
            )
        blocks = sorted({int(r["block"]) for r in rows})
        steps = sorted({int(r["step"]) for r in rows})
        table = np.full((len(blocks), len(steps)), np.nan)
        sites: list[list[str | None]] = [[None] * len(steps) for _ in blocks]
        for r in rows:
            i, j = blocks.index(int(r["block"])), steps.index(int(r["step"]))
            v = r.get(value)
            table[i, j] = math.nan if v is None else float(v)
            sites[i][j] = str(r["site"])
        return blocks, steps, table, sites

    def best_cell(self, attribute: str, stream: str | None = None) -> dict[str, Any] | None:
        """The probe cell with the highest accuracy for ``attribute`` (optionally in one stream)."""
        rows = [
            r
            for r in self.probes
            if r["attribute"] == attribute
            and (stream is None or r["stream"] == stream)
            and r.get("accuracy") is not None
            and not math.isnan(float(r["accuracy"]))
        ]
        return dict(max(rows, key=lambda r: float(r["accuracy"]))) if rows else None

    def embedding(self, site: str, step: int) -> dict[str, np.ndarray]:
        """Arrays of the stored embedding of ``(site, step)`` (``pca``, ``umap``, ``sample``...)."""
        path = self.embeddings.get((site, int(step)))
        if path is None:
            raise UnknownNameError(f"No stored embedding for site {site!r} at step {step} in {self.folder}.")
        confined(path, self.run)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as error:
            raise StoreError(
                f"The embedding file {path} cannot be read ({error}); rerun `latentlens analyze`."
            ) from error

    def load_direction(self, name: str) -> Any:
        """The saved :class:`latentlens.Direction` called ``name``."""
        from latentlens.direction import Direction

        if name not in self.directions:
            raise UnknownNameError(
                f"The run has no direction {name!r}; it has: {', '.join(self.direction_names) or 'none'}."
            )
        path = self.directions[name]
        for suffix in (".json", ".safetensors"):
            confined(path.with_name(path.name + suffix), self.run)
        return Direction.load(path)

    def direction_effects(self, labels: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any] | None]]:
        """``[(name, validation)]`` of every saved direction, best measured edit first (``analyze --validate``);
        unvalidated directions (``validation`` None) last, by name.

        ``labels`` (one sample's, e.g. ``{"color": "red", "shape": "circle"}``) keeps only the directions that
        apply to that sample: a from–to direction only from the sample's own value (``edit/color/red-to-blue``
        for a red sample), and none toward the value it already has.

        Example: ``res.direction_effects({"color": "red"})[0]`` → ``('edit/color/red-to-blue', {'score': 1.0, ...})``.
        """
        rows = []
        for name in self.direction_names:
            try:
                meta = json.loads(self.directions[name].with_name(self.directions[name].name + ".json").read_text())
            except (OSError, ValueError):
                meta = {}
            provenance = (meta.get("provenance") or {}) if isinstance(meta, dict) else {}
            if labels is not None and not _applies(provenance, labels):
                continue
            validation = provenance.get("validation")
            rows.append((name, validation if isinstance(validation, dict) else None))

        def key(row: tuple[str, dict[str, Any] | None]) -> tuple[int, float, str]:
            score = (row[1] or {}).get("score")
            if isinstance(score, (int, float)) and not math.isnan(float(score)):
                return (0, -float(score), row[0])
            return (1, 0.0, row[0])

        return sorted(rows, key=key)

    @property
    def patch_grid_names(self) -> list[str]:
        return sorted(self.patch_grids)

    def load_patch_grid(self, name: str) -> Any:
        """The saved :class:`latentlens.PatchGrid` called ``name`` (``latentlens patch-grid --out RUN_DIR``)."""
        from latentlens.analysis.patching import PatchGrid

        if name not in self.patch_grids:
            raise UnknownNameError(
                f"The run has no patching grid {name!r}; it has: {', '.join(self.patch_grid_names) or 'none'} "
                f"(`latentlens patch-grid --out {self.run}` writes one)."
            )
        return PatchGrid.load(self.patch_grids[name])


def _applies(provenance: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Whether a direction (its provenance) edits a sample with ``labels``: it starts from the sample's value
    (when it names one) and leads to another value."""
    attribute = provenance.get("attribute")
    if not isinstance(attribute, str) or attribute not in labels:
        return True
    own = str(labels[attribute])
    start, to = provenance.get("from"), provenance.get("to")
    return (start is None or str(start) == own) and (to is None or str(to) != own)


def _scan_embeddings(folder: Path) -> dict[tuple[str, int], Path]:
    out: dict[tuple[str, int], Path] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.npz")):
        meta_path = path.with_suffix(".json")
        site, step = None, None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                site, step = str(meta["site"]), int(meta["step"])
            except (OSError, ValueError, KeyError, TypeError):
                site = None
        if site is None and "@" in path.stem:  # NAME = "{site}@{step}"
            left, _, right = path.stem.rpartition("@")
            if right.isdigit():
                site, step = left, int(right)
        if site is not None and step is not None:
            out[(site, step)] = path
    return out


def _scan_directions(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for meta in sorted(folder.rglob("*.json")):
        if meta.with_suffix(".safetensors").is_file():
            name = meta.relative_to(folder).with_suffix("").as_posix()
            out[name] = meta.with_suffix("")
    return out


def _scan_patch_grids(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(folder.glob("*/grid.json"))}


def has_analysis(run_dir: str | Path) -> bool:
    """Whether ``run_dir/analysis/`` exists."""
    return (Path(run_dir) / ANALYSIS).is_dir()


def load_results(run_dir: str | Path) -> AnalysisResults:
    """Index the analysis of ``run_dir`` (cheap: probe JSON is parsed, arrays are read on demand).

    Raises :class:`~latentlens.errors.StoreError` when the run has no ``analysis/`` folder yet.
    """
    run = Path(run_dir)
    folder = run / ANALYSIS
    if not folder.is_dir():
        raise StoreError(
            f"The run {run} has not been analysed yet (no {ANALYSIS}/ folder). "
            f"Run `latentlens analyze {run}` to compute probes, embeddings and directions."
        )
    probes, classes = _read_probe_records(folder)
    return AnalysisResults(
        run=run,
        probes=probes,
        classes=classes,
        embeddings=_scan_embeddings(folder / EMBEDDINGS),
        directions=_scan_directions(folder / DIRECTIONS),
        patch_grids=_scan_patch_grids(folder / PATCHING),
    )


__all__ = ["AnalysisResults", "load_results", "has_analysis"]

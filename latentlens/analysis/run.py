"""Analyse a recorded run: probe grid, PCA, embeddings, directions and their cosine matrix.

:func:`analyze_run` reads a run folder written by ``latentlens record`` (the
:mod:`latentlens.store` layout), turns every (site, step) into one feature
vector per sample (the mean over tokens; ``features="mean+grid"`` adds 2×2
spatial pooling of square image-token grids), fits every probe in one batched
solve and writes ``RUN_DIR/analysis/`` in the layout :mod:`latentlens.results`
reads::

    analysis/
      probes.json            {"records": [cell, ...], "attributes": {attribute: [classes]}, "settings": {...}}
      pca.json               per (site, step): explained_variance_ratio of the top components
      embeddings/SITE@STEP.npz + .json   pca [n, 10], umap [n, 2] (best cells), sample [n], label_<attribute> [n]
      directions/<attribute>/<value>.json + .safetensors   class-mean directions (value vs. the rest) at the
                             best image-stream cell (and text-stream cell, under directions/txt/)
      cosine.json            cosine matrix of the value directions at one shared cell
      patching/              patching grids (`latentlens patch-grid`; kept when analyze reruns)
      summary.json           what `latentlens analyze --json` prints

Example::

    from latentlens.analysis.run import analyze_run
    summary = analyze_run("runs/shapes")
    summary["probes"][0]     # {'attribute': 'color', 'stream': 'img', 'site': ..., 'step': ..., 'accuracy': ...}
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentlens.errors import ConfigError, LatentlensError, StoreError, UnknownNameError

ANALYSIS = "analysis"
FEATURES = ("mean", "mean+grid")


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def open_analysable_run(run_dir: str | Path) -> Any:
    """Open ``run_dir`` as a run, with a clear error when it is not one."""
    from latentlens.store import open_run

    path = Path(run_dir)
    if not path.exists():
        raise StoreError(f"The run folder {path} does not exist; give the folder `latentlens record` wrote.")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a run folder; give the folder `latentlens record` wrote.")
    return open_run(path)


def recorded_steps(manifest: dict[str, Any], n_steps_axis: int) -> list[int]:
    """Denoising step index of every position of a stored array's step axis."""
    spec = (manifest.get("recording") or {}).get("steps")
    steps: list[int] | None = None
    if isinstance(spec, list) and all(isinstance(s, int) for s in spec):
        steps = sorted(set(spec))
    elif isinstance(spec, dict) and "range" in spec:
        steps = list(range(*[v for v in spec["range"] if v is not None]))
    elif isinstance(spec, int):
        steps = [spec]
    if steps is None or len(steps) != n_steps_axis:
        steps = list(range(n_steps_axis))
    return steps


def feature_sites(run: Any) -> list[str]:
    """Recorded arrays that are per-sample activations ``[sample, step, (token,) channel]``."""
    sites = []
    for name in run.names:
        dims = tuple(run[name].dims)
        if dims[:2] == ("sample", "step") and dims[-1] == "channel" and len(dims) in (3, 4):
            sites.append(name)
    return sites


def select_sites(available: Sequence[str], wanted: Sequence[str] | str | None) -> list[str]:
    """Filter ``available`` by names or globs; an unknown name lists what the run recorded."""
    if wanted is None:
        return list(available)
    patterns = [wanted] if isinstance(wanted, str) else list(wanted)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [s for s in available if fnmatch.fnmatchcase(s, pattern)]
        if not hits:
            import difflib

            close = difflib.get_close_matches(pattern, available, n=3)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise UnknownNameError(
                f"The run did not record site {pattern!r}.{hint} It recorded: {', '.join(available) or 'no activation sites'}."
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def token_features(x: np.ndarray, how: str = "mean") -> np.ndarray:
    """``[n, tokens, channel]`` (or ``[n, channel]``) → ``[n, features]`` float32.

    ``"mean"``: the mean over tokens. ``"mean+grid"``: the mean followed by the means of the four
    quadrants of a square token grid (image tokens), 5 × channel features.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        return x
    mean = x.mean(axis=1)  # [n, c]
    if how == "mean":
        return mean
    n, t, c = x.shape
    side = int(round(math.sqrt(t)))
    if side * side != t or side < 2:
        return mean
    grid = x.reshape(n, side, side, c)
    h = side // 2
    quads = [grid[:, :h, :h], grid[:, :h, h:], grid[:, h:, :h], grid[:, h:, h:]]
    return np.concatenate([mean] + [q.mean(axis=(1, 2)) for q in quads], axis=1)


def load_features(
    run: Any, sites: Sequence[str], samples: Sequence[int], steps: Sequence[int] | None = None,
    how: str = "mean", quiet: bool = True,
) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, list[int]]]:
    """``{(site, step): [n_samples, features]}`` for every chosen site and recorded step."""
    features: dict[tuple[str, int], np.ndarray] = {}
    site_steps: dict[str, list[int]] = {}
    index = np.asarray(samples, dtype=np.int64)
    contiguous = len(index) > 0 and np.array_equal(index, np.arange(index[0], index[0] + len(index)))
    for site in sites:
        array = run[site]
        axis_steps = recorded_steps(run.manifest, array.shape[1])
        missing = [s for s in (steps or []) if s not in axis_steps]
        if missing:
            raise UnknownNameError(
                f"Step {missing[0]} was not recorded at site {site!r}; recorded steps: {axis_steps}."
            )
        keep = [(k, s) for k, s in enumerate(axis_steps) if steps is None or s in steps]
        site_steps[site] = [s for _, s in keep]
        for k, step in keep:
            if contiguous:
                raw = array[int(index[0]) : int(index[0]) + len(index), k]
            else:
                raw = array[index.tolist(), k]
            features[(site, step)] = token_features(raw, how)
        _log(f"analyze: read {site} ({len(keep)} steps)", quiet)
    return features, site_steps


def _labels(run: Any, samples: Sequence[int]) -> dict[str, list[str]]:
    manifest_labels = run.manifest.get("labels") or []
    journal = run.samples
    rows: list[dict[str, Any]] = []
    for i in samples:
        row = None
        if i < len(manifest_labels):
            row = manifest_labels[i]
        if row is None:
            row = (journal.get(i) or {}).get("labels")
        rows.append(row or {})
    names = sorted({k for r in rows for k in r})
    out: dict[str, list[str]] = {}
    for name in names:
        if all(name in r and r[name] is not None for r in rows):
            out[name] = [str(r[name]) for r in rows]
    return out


def _cell_name(site: str, step: int) -> str:
    return f"{site}@{step}"


def analyze_run(
    run_dir: str | Path,
    *,
    sites: Sequence[str] | str | None = None,
    steps: Sequence[int] | None = None,
    attributes: Sequence[str] | None = None,
    features: str = "mean",
    C: float = 1.0,
    max_features: int | None = 64,
    test_size: float = 0.2,
    umap: str = "best",
    random_state: int = 0,
    write: bool = True,
    quiet: bool = False,
    validate: int = 0,
    pipeline: Any = None,
) -> dict[str, Any]:
    """Analyse ``run_dir`` and (``write=True``) store the results in ``run_dir/analysis/``.

    Args:
        sites: names or globs of recorded sites (default: every activation site).
        steps: denoising steps to analyse (default: every recorded step).
        attributes: label names to probe (default: every label present on all samples).
        features: ``"mean"`` (token mean) or ``"mean+grid"`` (plus 2×2 spatial pooling of image tokens).
        umap: embed with UMAP the ``"best"`` cells, ``"all"`` cells or ``"none"``; the fallback
            without umap-learn is PCA (marked in the embedding's JSON).
        validate: steer that many of the run's samples with every saved direction and store the measured
            effect with it (``provenance["validation"]``; 0 = skip); uses ``pipeline`` or the run's model.

    Besides the class means at the best probe cells, shapes-world runs that recorded a text site of
    block 0 get token-wise edit directions ``edit/<attribute>/<value>`` (:mod:`latentlens.analysis.validate`).

    Returns the summary (the ``--json`` document): best cell per attribute and stream, NaN cells,
    directions written, cosine matrix, timings.
    """
    from latentlens.analysis.directions import class_mean_direction
    from latentlens.analysis.embed import embed_2d
    from latentlens.analysis.metrics import cosine_matrix
    from latentlens.analysis.pca import PCA
    from latentlens.analysis.probes import LinearProbeGrid, site_block, site_stream

    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}.")
    if umap not in ("best", "all", "none"):
        raise ConfigError(f"umap must be 'best', 'all' or 'none', got {umap!r}.")
    started = time.perf_counter()
    run = open_analysable_run(run_dir)
    samples = sorted(run.completed)
    if len(samples) < 4:
        raise StoreError(f"The run {run_dir} has {len(samples)} finished samples; analysis needs at least 4.")
    available = feature_sites(run)
    if not available:
        raise StoreError(
            f"The run {run_dir} recorded no activation sites (only {', '.join(run.names) or 'nothing'}); "
            "record e.g. --sites 'blocks.*.resid_out.*'."
        )
    chosen = select_sites(available, sites)
    labels = _labels(run, samples)
    if attributes is not None:
        missing = [a for a in attributes if a not in labels]
        if missing:
            raise UnknownNameError(
                f"The run has no label {missing[0]!r} on every sample; its labels: {', '.join(labels) or 'none'}."
            )
        labels = {a: labels[a] for a in attributes}
    labels = {a: v for a, v in labels.items() if len(set(v)) >= 2}

    t0 = time.perf_counter()
    feats, site_steps = load_features(run, chosen, samples, steps, features, quiet)
    read_seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "run": str(run_dir), "samples": len(samples), "sites": chosen, "steps": sorted({s for v in site_steps.values() for s in v}),
        "features": features, "attributes": {}, "probes": [], "nan_cells": [], "directions": [], "cosine": None,
    }
    grid = None
    t0 = time.perf_counter()
    if labels:
        prompts = run.manifest.get("prompts") or []
        groups = [prompts[i] if i < len(prompts) else i for i in samples]
        grid = LinearProbeGrid(C=C, test_size=test_size, max_features=max_features, random_state=random_state)
        grid.fit(feats, labels, groups=groups)
        summary["attributes"] = {a: [str(c) for c in v] for a, v in grid.attributes_.items()}
        summary["nan_cells"] = grid.nan_cells_
        summary["solver"] = {"n_iter": int(grid.n_iter_), "max_iter": int(grid.max_iter),
                             "converged": int(grid.n_iter_) < int(grid.max_iter)}
        if not summary["solver"]["converged"]:
            _log(f"analyze: warning: the probe solver stopped at its {grid.max_iter}-iteration cap; accuracies may "
                 "be slightly below the optimum (LinearProbeGrid(max_iter=...) raises the cap).", quiet)
        for attribute in grid.attributes_:
            for stream in ("img", "txt"):
                best = grid.best(attribute, stream)
                if best is not None:
                    summary["probes"].append(best)
        _log(f"analyze: probe grid of {len(grid.cells_)} cells x {len(labels)} attributes "
             f"in {time.perf_counter() - t0:.1f} s", quiet)
    else:
        nan_cells = []
        for (site, step), x in feats.items():
            bad = int((~np.isfinite(x)).sum())
            if bad:
                nan_cells.append({"site": site, "step": int(step), "nan_count": bad})
        summary["nan_cells"] = nan_cells
        summary["note"] = "The run has no labels with at least 2 classes; only PCA and embeddings were computed."
    probe_seconds = time.perf_counter() - t0
    for cell in summary["nan_cells"]:
        _log(f"analyze: warning: {cell['nan_count']} NaN/inf values at site {cell['site']} step {cell['step']}; "
             "that cell is left out.", quiet)

    t0 = time.perf_counter()
    nan_set = {(c["site"], c["step"]) for c in summary["nan_cells"]}
    pca_info: list[dict[str, Any]] = []
    embeddings: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    best_cells = {(p["site"], p["step"]) for p in summary["probes"]}
    for cell, x in feats.items():
        if cell in nan_set:
            continue
        k = int(min(10, x.shape[0] - 1, x.shape[1]))
        pca = PCA(n_components=k).fit(x)
        pca_info.append({"site": cell[0], "step": int(cell[1]), "stream": site_stream(cell[0]),
                         "block": site_block(cell[0]),
                         "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]})
        arrays = {"pca": pca.transform(x).astype(np.float32), "sample": np.asarray(samples, dtype=np.int64)}
        if umap == "all" or (umap == "best" and cell in best_cells):
            embedded = embed_2d(x, method="auto", random_state=random_state)
            arrays["umap" if embedded["method"] == "umap" else "pca2d"] = embedded["coords"]
        for attribute, values in labels.items():
            arrays[f"label_{attribute}"] = np.asarray(values)
        embeddings[cell] = arrays
    embed_seconds = time.perf_counter() - t0

    # Directions: class mean of each value vs. the rest, at the best cell per attribute and stream.
    directions: dict[str, Any] = {}
    if grid is not None:
        for best in summary["probes"]:
            attribute, site, step, stream = best["attribute"], best["site"], best["step"], best["stream"]
            x = feats[(site, step)]
            if features != "mean":
                x = token_features(np.asarray(run[site][samples, recorded_steps(run.manifest, run[site].shape[1]).index(step)]), "mean")
            for value in grid.attributes_[attribute]:
                d = class_mean_direction(
                    x, labels[attribute], to=str(value), site=site, steps=[int(step)], attribute=attribute,
                    run=str(run_dir), accuracy=best["accuracy"], selectivity=best["selectivity"],
                )
                name = f"{attribute}/{value}" if stream == "img" else f"txt/{attribute}/{value}"
                directions[name] = d
        directions.update(_edit_directions(run, samples, labels, str(run_dir), quiet))
        summary["directions"] = sorted(directions)
        if validate > 0:
            t0 = time.perf_counter()
            try:
                summary["direction_effects"] = _validate(run, samples, labels, directions, validate, pipeline, quiet)
            except LatentlensError as error:  # no model to steer: the directions are saved unvalidated
                summary["validation_note"] = f"Directions were not validated: {error}"
                _log(f"analyze: warning: {summary['validation_note']}", quiet)
            summary["seconds_validate"] = round(time.perf_counter() - t0, 3)
        summary["cosine"] = _cosine_summary(feats, labels, grid, features, cosine_matrix, class_mean_direction)
    summary["seconds"] = {"read": round(read_seconds, 3), "probes": round(probe_seconds, 3),
                          "pca_embed": round(embed_seconds, 3), "total": round(time.perf_counter() - started, 3)}

    if write:
        _write(Path(run_dir), summary, grid, pca_info, embeddings, directions)
        summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
        (Path(run_dir) / ANALYSIS / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _edit_directions(run: Any, samples: list[int], labels: dict[str, list[str]], run_dir: str,
                     quiet: bool) -> dict[str, Any]:
    """Token-wise edit directions at block 0's text stream (shapes-world runs that recorded it)."""
    from latentlens.analysis.validate import (
        EDIT_SITES,
        canonical_mask,
        edit_directions,
        is_shapes_world,
    )

    site = next((s for s in EDIT_SITES if s in feature_sites(run) and len(run[s].dims) == 4), None)
    if site is None or not is_shapes_world(labels):
        return {}
    prompts = run.manifest.get("prompts") or []
    if len(prompts) <= max(samples):
        return {}
    canonical = canonical_mask([prompts[i] for i in samples], labels)
    idx = [i for i, c in zip(samples, canonical) if c]
    if len(idx) < 4:
        _log(f"analyze: only {len(idx)} canonical-caption samples; no edit directions.", quiet)
        return {}
    array = run[site]
    # block 0's text input does not depend on the step; a block output is averaged over the recorded steps
    x = np.mean([np.asarray(array[idx, k], dtype=np.float32) for k in range(array.shape[1] if site.startswith("blocks.0.resid_out") else 1)], axis=0)
    sub = {a: [v for v, c in zip(values, canonical) if c] for a, values in labels.items()}
    return edit_directions(x, sub, site, run=run_dir, samples=f"{len(idx)} canonical-caption samples")


def _validate(run: Any, samples: list[int], labels: dict[str, list[str]], directions: dict[str, Any], n: int,
              pipeline: Any, quiet: bool) -> list[dict[str, Any]]:
    """Steer with every direction; store the report in its provenance; the reports, best score first."""
    from latentlens.analysis.validate import validate_direction

    manifest = run.manifest
    prompts, seeds = manifest.get("prompts") or [], manifest.get("seeds") or []
    if len(prompts) <= max(samples) or len(seeds) <= max(samples):
        raise StoreError("The run's manifest lacks prompts or seeds for its samples; cannot validate directions.")
    if pipeline is None:
        from latentlens.models import load_pipeline

        model = manifest.get("model") or {}
        model_id = model.get("id") if isinstance(model, dict) else model
        if not model_id or model_id == "synthetic":
            raise StoreError("the run's manifest names no model to steer (pass a pipeline to validate directions)")
        try:
            pipeline = load_pipeline(str(model_id))
        except LatentlensError:
            raise
        except Exception as error:  # a hub id that is not cached, a moved folder...
            raise StoreError(f"the run's model {model_id!r} cannot be loaded ({type(error).__name__}: {error})") from error
    steps = (manifest.get("generation") or {}).get("num_inference_steps")
    p = [prompts[i] for i in samples]
    s = [seeds[i] for i in samples]
    reports = []
    for k, (name, direction) in enumerate(sorted(directions.items())):
        attribute, to = direction.provenance.get("attribute"), direction.provenance.get("to")
        if attribute not in labels or to is None:
            continue
        report = validate_direction(pipeline, direction, p, s, labels, attribute=attribute, to=str(to), n=n,
                                    num_inference_steps=steps, seed=k)
        direction.provenance["validation"] = report
        reports.append({"name": name, **report})
        _log(f"analyze: validated {name}: score {report['score']:.2f} ({k + 1}/{len(directions)})", quiet)
    return sorted(reports, key=lambda r: -float(r["score"]))


def _cosine_summary(feats, labels, grid, features, cosine_matrix, class_mean_direction) -> dict[str, Any] | None:
    """Cosine matrix of every (attribute=value vs. rest) class-mean direction at the image cell where the
    attributes are, on average, best decoded."""
    rows = [r for r in grid.results_ if r.stream == "img" and not r.nan]
    if not rows:
        rows = [r for r in grid.results_ if not r.nan]
    if not rows:
        return None
    by_cell: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        by_cell.setdefault((r.site, r.step), []).append(r.accuracy)
    site, step = max(by_cell, key=lambda c: (np.mean(by_cell[c]), -c[1]))
    x = feats[(site, step)]
    vectors = {}
    for attribute, values in grid.attributes_.items():
        for value in values:
            vectors[f"{attribute}={value}"] = class_mean_direction(x, labels[attribute], to=str(value), site=site).vector
    names, matrix = cosine_matrix(vectors)
    attrs = list(grid.attributes_)
    owner = [n.split("=", 1)[0] for n in names]
    summary = np.zeros((len(attrs), len(attrs)))
    for i, a in enumerate(attrs):
        for j, b in enumerate(attrs):
            block = np.abs(matrix[np.ix_([k for k, o in enumerate(owner) if o == a], [k for k, o in enumerate(owner) if o == b])])
            summary[i, j] = 1.0 if i == j else float(np.nanmax(block))
    return {"site": site, "step": int(step), "features": features, "names": names,
            "matrix": np.round(matrix, 4).tolist(), "attributes": attrs,
            "attribute_max_abs_cosine": np.round(summary, 4).tolist()}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write(run_dir: Path, summary, grid, pca_info, embeddings, directions) -> None:
    out = run_dir / ANALYSIS
    tmp = run_dir / f".{ANALYSIS}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dump = lambda obj: json.dumps(obj, indent=1, default=_json_default, allow_nan=True) + "\n"  # noqa: E731
    if grid is not None:
        (tmp / "probes.json").write_text(dump({
            "records": grid.records(),
            "attributes": {a: [str(c) for c in v] for a, v in grid.attributes_.items()},
            "settings": {"C": grid.C, "test_size": grid.test_size, "max_features": grid.max_features,
                         "features": summary["features"], "random_state": grid.random_state,
                         "control": "Hewitt & Liang: a random class per label combination"},
        }))
    (tmp / "pca.json").write_text(dump(pca_info))
    emb = tmp / "embeddings"
    emb.mkdir()
    for (site, step), arrays in embeddings.items():
        stem = _cell_name(site, step)
        np.savez(emb / f"{stem}.npz", **arrays)
        method = "umap" if "umap" in arrays else ("pca" if "pca2d" in arrays else None)
        (emb / f"{stem}.json").write_text(dump({"site": site, "step": int(step), "embedding": method}))
    for name, direction in directions.items():
        direction.save(tmp / "directions" / name)
    if summary.get("cosine") is not None:
        (tmp / "cosine.json").write_text(dump(summary["cosine"]))
    (tmp / "summary.json").write_text(dump(summary))
    if (out / "patching").is_dir():  # written by `latentlens patch-grid`, not by analyze: keep it
        (out / "patching").rename(tmp / "patching")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)

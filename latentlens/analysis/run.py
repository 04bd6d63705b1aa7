"""Analyse a recorded run: probe grid, PCA, embeddings, directions and their cosine matrix.

:func:`analyze_run` reads a run folder written by ``latentlens record`` (the
:mod:`latentlens.store` layout), turns every (site, step) into one feature
vector per sample (the mean over tokens; ``features="mean+grid"`` adds 2×2
spatial pooling of square image-token grids), fits every probe in one batched
solve and writes ``RUN_DIR/analysis/`` in the layout :mod:`latentlens.results`
reads::

    analysis/
      probes.json            {"records": [cell, ...], "attributes": {attribute: [class]}, "settings": {...}}
      pca.json               per (site, step): explained_variance_ratio of the top components
      embeddings/SITE@STEP.npz + .json   pca [sample, 10], umap [sample, 2] (best cells), sample [sample], label_<attribute> [sample]
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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentlens.analysis.folder import ANALYSIS, AnalysisWriter, json_default
from latentlens.analysis.ownfiles import has_probes
from latentlens.errors import ConfigError, LatentlensError, StoreError, UnknownNameError

FEATURES = ("mean", "mean+grid")
#: Default bound on the raw activations read at once (a block of samples of one site and step).
MAX_READ_BYTES = 256 * 2**20


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
    """``[sample, token, channel]`` (or ``[sample, channel]``) → ``[sample, channel]`` float32.

    ``"mean"``: the mean over tokens. ``"mean+grid"``: the mean followed by the means of the four
    quadrants of a square token grid (image tokens), 5 × channel features.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        return x
    mean = x.mean(axis=1)  # [sample, channel]
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


def cell_features(
    array: Any,
    samples: Sequence[int],
    step_index: int,
    how: str = "mean",
    max_read_bytes: int | None = MAX_READ_BYTES,
) -> np.ndarray:
    """``[sample, channel]`` of one (site, step), read in blocks of whole chunks of samples.

    Never more than ``max_read_bytes`` of raw activations (``[block, token, channel]``) are in
    memory at once (``None``: the whole cell in one read), so a run far larger than memory is
    reduced to its features (token-count times smaller) one block at a time.
    """
    index = np.asarray(samples, dtype=np.int64)
    n = len(index)
    per_sample = int(np.prod(array.shape[2:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
    block = n
    if max_read_bytes is not None:
        spc = int(array.chunks[0])
        block = max(1, int(max_read_bytes) // max(per_sample, 1))
        block = max(spc, block // spc * spc) if block >= spc else block  # whole chunks where they fit
    out: np.ndarray | None = None
    for start in range(0, max(n, 1), max(block, 1)):
        ids = index[start : start + block]
        if not len(ids):
            break
        if np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            raw = array[int(ids[0]) : int(ids[0]) + len(ids), step_index]  # [block, (token,) channel]
        else:
            raw = array[ids.tolist(), step_index]
        part = token_features(raw, how)  # [sample, channel]
        del raw
        if out is None:
            out = np.empty((n, part.shape[1]), dtype=np.float32)
        out[start : start + len(ids)] = part
    if out is None:
        out = np.empty((0, 0), dtype=np.float32)
    return out


def load_features(
    run: Any,
    sites: Sequence[str],
    samples: Sequence[int],
    steps: Sequence[int] | None = None,
    how: str = "mean",
    quiet: bool = True,
    max_read_bytes: int | None = MAX_READ_BYTES,
) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, list[int]]]:
    """``{(site, step): [sample, channel]}`` for every chosen site and recorded step.

    Raw activations are streamed (see :func:`cell_features`); only the features stay in memory.
    """
    features: dict[tuple[str, int], np.ndarray] = {}
    site_steps: dict[str, list[int]] = {}
    for site in sites:
        array = run[site]
        axis_steps = run.recorded_steps(array.shape[1])
        missing = [s for s in (steps or []) if s not in axis_steps]
        if missing:
            raise UnknownNameError(
                f"Step {missing[0]} was not recorded at site {site!r}; recorded steps: {axis_steps}."
            )
        keep = [(k, s) for k, s in enumerate(axis_steps) if steps is None or s in steps]
        site_steps[site] = [s for _, s in keep]
        for k, step in keep:
            features[(site, step)] = cell_features(array, samples, k, how, max_read_bytes)
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
    max_read_bytes: int | None = MAX_READ_BYTES,
    validate: int = 0,
    pipeline: Any = None,
    validate_early_stop: bool = True,
    validate_only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Analyse ``run_dir`` and (``write=True``) store the results in ``run_dir/analysis/``.

    Args:
        sites: names or globs of recorded sites (default: every activation site).
        steps: denoising steps to analyse (default: every recorded step).
        attributes: label names to probe (default: every label present on all samples).
        features: ``"mean"`` (token mean) or ``"mean+grid"`` (plus 2×2 spatial pooling of image tokens).
        umap: embed with UMAP the ``"best"`` cells, ``"all"`` cells or ``"none"``; the fallback
            without umap-learn is PCA (marked in the embedding's JSON).
        max_read_bytes: raw activations read at once (``None``: a whole (site, step) at once). The
            run is streamed block by block and only its features (``[sample, channel]`` per cell,
            5x that for ``"mean+grid"``) are held, so runs larger than memory can be analysed.
        validate: steer up to that many of the run's samples with every saved direction and store the
            measured effect with it (``provenance["validation"]``; 0 = skip); uses ``pipeline`` or the run's model.
        validate_early_stop: in the shapes world, stop a direction's check once it provably misses the
            edit goal and try a token-wise direction's larger alpha only when the smaller misses it
            (:func:`latentlens.analysis.validate.validate_direction`); each report states the samples it used.
        validate_only: globs of the direction names to validate (default: all), e.g. ``["edit/color/*"]``.

    Besides the class means at the best probe cells, shapes-world runs that recorded a text site of
    block 0 get token-wise edit directions ``edit/<attribute>/<value>`` and ``edit/<attribute>/<from>-to-<to>``
    (:mod:`latentlens.analysis.validate`); with ``validate``, ``summary["validation"]["targets"]`` pools the
    from–to checks per target value.

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
    usable = [a for a, v in labels.items() if len(set(v)) >= 2]
    if attributes is not None:
        missing = [a for a in attributes if a not in labels]
        if missing:
            raise UnknownNameError(
                f"The run has no label {missing[0]!r} on every sample; its labels: {', '.join(labels) or 'none'}."
            )
        labels = {a: labels[a] for a in attributes}
    if attributes is not None:
        single = [a for a in attributes if len(set(labels[a])) < 2]
        if single:
            raise ConfigError(
                f"The label {single[0]!r} has the single value {labels[single[0]][0]!r} on all {len(samples)} "
                "finished samples, so there is nothing to probe; choose labels with at least 2 values "
                f"(the run's labels with at least 2 values: {', '.join(usable) or 'none'})."
            )
    labels = {a: v for a, v in labels.items() if len(set(v)) >= 2}
    if write and not labels and has_probes(Path(run_dir) / ANALYSIS):
        raise StoreError(
            f"{Path(run_dir) / ANALYSIS} holds probe results, and this analysis would have none (no label with "
            "at least 2 values); it was not replaced. Analyse labels with at least 2 values, or move that "
            "folder away first to replace it with an analysis without probes."
        )

    if validate > 0 and validate_only is not None:
        _check_validate_only(validate_only, labels)  # before the activations are read

    t0 = time.perf_counter()
    feats, site_steps = load_features(run, chosen, samples, steps, features, quiet, max_read_bytes)
    read_seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "run": str(run_dir),
        "samples": len(samples),
        "sites": chosen,
        "steps": sorted({s for v in site_steps.values() for s in v}),
        "features": features,
        "attributes": {},
        "probes": [],
        "nan_cells": [],
        "directions": [],
        "cosine": None,
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
        summary["solver"] = {
            "n_iter": int(grid.n_iter_),
            "max_iter": int(grid.max_iter),
            "converged": int(grid.n_iter_) < int(grid.max_iter),
        }
        if not summary["solver"]["converged"]:
            _log(
                f"analyze: warning: the probe solver stopped at its {grid.max_iter}-iteration cap; accuracies may "
                "be slightly below the optimum (LinearProbeGrid(max_iter=...) raises the cap).",
                quiet,
            )
        for attribute in grid.attributes_:
            for stream in ("img", "txt"):
                best = grid.best(attribute, stream)
                if best is not None:
                    summary["probes"].append(best)
        _log(
            f"analyze: probe grid of {len(grid.cells_)} cells x {len(labels)} attributes "
            f"in {time.perf_counter() - t0:.1f} s",
            quiet,
        )
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
        _log(
            f"analyze: warning: {cell['nan_count']} NaN/inf values at site {cell['site']} step {cell['step']}; "
            "that cell is left out.",
            quiet,
        )

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
        pca_info.append(
            {
                "site": cell[0],
                "step": int(cell[1]),
                "stream": site_stream(cell[0]),
                "block": site_block(cell[0]),
                "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
            }
        )
        arrays: dict[str, Any] = {
            "pca": pca.transform(x).astype(np.float32),
            "sample": np.asarray(samples, dtype=np.int64),
        }
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
                k = run.recorded_steps(run[site].shape[1]).index(step)
                x = cell_features(run[site], samples, k, "mean", max_read_bytes)
            for value in grid.attributes_[attribute]:
                d = class_mean_direction(
                    x,
                    labels[attribute],
                    to=str(value),
                    site=site,
                    steps=[int(step)],
                    attribute=attribute,
                    run=str(run_dir),
                    accuracy=best["accuracy"],
                    selectivity=best["selectivity"],
                )
                directions[_mean_name(attribute, str(value), stream)] = d
        directions.update(_edit_directions(run, samples, labels, str(run_dir), quiet))
        summary["directions"] = sorted(directions)
        if validate > 0:
            t0 = time.perf_counter()
            try:
                checked = _matching(directions, validate_only)
                summary["direction_effects"] = _validate(
                    run, samples, labels, checked, validate, pipeline, quiet, validate_early_stop
                )
                summary["validation"] = _validation_totals(summary["direction_effects"], validate, validate_early_stop)
            except LatentlensError as error:  # no model to steer: the directions are saved unvalidated
                summary["validation_note"] = f"Directions were not validated: {error}"
                _log(f"analyze: warning: {summary['validation_note']}", quiet)
            summary["seconds_validate"] = round(time.perf_counter() - t0, 3)
        summary["cosine"] = _cosine_summary(feats, labels, grid, features, cosine_matrix, class_mean_direction)
    summary["seconds"] = {
        "read": round(read_seconds, 3),
        "probes": round(probe_seconds, 3),
        "pca_embed": round(embed_seconds, 3),
        "total": round(time.perf_counter() - started, 3),
    }

    if write:
        _write(Path(run_dir), summary, grid, pca_info, embeddings, directions)
        summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
        (Path(run_dir) / ANALYSIS / "summary.json").write_text(
            json.dumps(summary, indent=2, default=json_default) + "\n"
        )
    return summary


def _edit_directions(
    run: Any, samples: list[int], labels: dict[str, list[str]], run_dir: str, quiet: bool
) -> dict[str, Any]:
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
    x = np.mean(
        [
            np.asarray(array[idx, k], dtype=np.float32)
            for k in range(array.shape[1] if site.startswith("blocks.0.resid_out") else 1)
        ],
        axis=0,
    )
    sub = {a: [v for v, c in zip(values, canonical) if c] for a, values in labels.items()}
    return edit_directions(x, sub, site, run=run_dir, samples=f"{len(idx)} canonical-caption samples")


def _validate(
    run: Any,
    samples: list[int],
    labels: dict[str, list[str]],
    directions: dict[str, Any],
    n: int,
    pipeline: Any,
    quiet: bool,
    early_stop: bool = True,
) -> list[dict[str, Any]]:
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
            raise StoreError(
                f"the run's model {model_id!r} cannot be loaded ({type(error).__name__}: {error})"
            ) from error
    steps = (manifest.get("generation") or {}).get("num_inference_steps")
    p = [prompts[i] for i in samples]
    s = [seeds[i] for i in samples]
    reports = []
    for k, (name, direction) in enumerate(sorted(directions.items())):
        attribute, to = direction.provenance.get("attribute"), direction.provenance.get("to")
        if attribute not in labels or to is None:
            continue
        report = validate_direction(
            pipeline,
            direction,
            p,
            s,
            labels,
            attribute=attribute,
            to=str(to),
            n=n,
            num_inference_steps=steps,
            seed=k,
            early_stop=early_stop,
        )
        direction.provenance["validation"] = report
        reports.append({"name": name, **report})
        _log(
            f"analyze: validated {name}: score {report['score']:.2f} on {report['n']} samples"
            + (" (stopped early)" if report.get("stopped_early") else "")
            + f" ({k + 1}/{len(directions)})",
            quiet,
        )
    return sorted(reports, key=lambda r: -float(r["score"]))


def _mean_name(attribute: str, value: str, stream: str) -> str:
    """The saved name of a class mean at an attribute's best probe cell: ``color/red`` (image stream),
    ``txt/color/red`` (text stream)."""
    return f"{attribute}/{value}" if stream == "img" else f"txt/{attribute}/{value}"


def _matching(directions: dict[str, Any], globs: Sequence[str] | None) -> dict[str, Any]:
    """The directions whose names match one of ``globs`` (all of them for None)."""
    if globs is None:
        return directions
    return {n: d for n, d in directions.items() if any(fnmatch.fnmatchcase(n, g) for g in globs)}


def _check_validate_only(globs: Sequence[str], labels: dict[str, list[str]]) -> None:
    """Every glob must match a name analyze can save for these labels (``color/red``, ``txt/color/red``,
    ``edit/color/red``, ``edit/color/red-to-blue``); a clear error names the first that cannot."""
    from latentlens.analysis.validate import edit_name

    names = []
    for attribute, raw in labels.items():
        values = sorted(set(map(str, raw)))
        names += [_mean_name(attribute, v, stream) for stream in ("img", "txt") for v in values]
        names += [edit_name(attribute, t, f) for f in [None, *values] for t in values if f != t]
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise ConfigError(
                f"--validate-only {glob!r} matches no direction analyze can save for this run's labels "
                f"({', '.join(labels) or 'none'}); names look like {', '.join(names[:3])} or edit/<attribute>/<from>-to-<to>."
            )


def _validation_totals(reports: list[dict[str, Any]], n: int, early_stop: bool) -> dict[str, Any]:
    """What the validation cost: directions, planned samples, steered generations, early stops."""
    from latentlens.analysis.validate import target_totals

    return {
        "directions": len(reports),
        "targets": target_totals(reports),  # from–to edits pooled per target value
        "n_planned": n,
        "early_stop": early_stop,
        "stopped_early": sum(bool(r.get("stopped_early")) for r in reports),
        "steered_images": sum(int(r.get("steered_images", r["n"])) for r in reports),
    }


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
            vectors[f"{attribute}={value}"] = class_mean_direction(
                x, labels[attribute], to=str(value), site=site
            ).vector
    names, matrix = cosine_matrix(vectors)
    attrs = list(grid.attributes_)
    owner = [n.split("=", 1)[0] for n in names]
    summary = np.zeros((len(attrs), len(attrs)))
    for i, a in enumerate(attrs):
        for j, b in enumerate(attrs):
            block = np.abs(
                matrix[np.ix_([k for k, o in enumerate(owner) if o == a], [k for k, o in enumerate(owner) if o == b])]
            )
            summary[i, j] = 1.0 if i == j else float(np.nanmax(block))
    return {
        "site": site,
        "step": int(step),
        "features": features,
        "names": names,
        "matrix": np.round(matrix, 4).tolist(),
        "attributes": attrs,
        "attribute_max_abs_cosine": np.round(summary, 4).tolist(),
    }


def _write(run_dir: Path, summary, grid, pca_info, embeddings, directions) -> None:
    with AnalysisWriter(run_dir) as out:
        if grid is not None:
            out.probes(
                grid.records(),
                grid.attributes_,
                settings={
                    "C": grid.C,
                    "test_size": grid.test_size,
                    "max_features": grid.max_features,
                    "features": summary["features"],
                    "random_state": grid.random_state,
                    "control": "Hewitt & Liang: a random class per label combination",
                },
            )
        out.pca(pca_info)
        for (site, step), arrays in embeddings.items():
            method = "umap" if "umap" in arrays else ("pca" if "pca2d" in arrays else None)
            out.embedding(site, step, arrays, method)
        for name, direction in directions.items():
            out.direction(name, direction)
        if summary.get("cosine") is not None:
            out.cosine(summary["cosine"])
        out.summary(summary)

"""The dashboard's data layer: which runs exist under the root, and cached reads from them.

Pages never touch paths given by the browser: a run is named by its *run id* (its
path relative to the configured root) and :meth:`RunIndex.path` accepts only ids
of runs found by scanning the root, so ``../`` tricks, absolute paths and
symlinks that leave the root are refused. Every read goes through latentlens'
public API (:func:`latentlens.open_run`, :mod:`latentlens.results`).

Example::

    index = RunIndex("runs")
    [r.run_id for r in index.runs()]          # ['shapes', 'colors']
    x = features(index, "shapes", "blocks.2.resid_out.img", 5)   # [sample, channel]
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import latentlens
from latentlens.adapters import offline_tokenizer
from latentlens.errors import LatentlensError, StoreError
from latentlens.results import AnalysisResults, has_analysis, load_results
from latentlens.safepath import is_inside

MANIFEST = "manifest.json"
SCAN_DEPTH = 2  # runs are found at ROOT, ROOT/x and ROOT/x/y
_LOG = logging.getLogger("latentlens.dashboard")


class DashboardError(LatentlensError):
    """A problem the dashboard shows as a message in the page (bad run id, missing analysis...)."""


@dataclass(frozen=True)
class RunInfo:
    """One run under the root, as listed on the runs page."""

    run_id: str
    path: Path
    model: str
    prompts: int
    completed: int
    sites: list[str]
    steps: int | None
    size_bytes: int
    analysed: bool
    error: str | None = None


def _folder_size(path: Path) -> int:
    return _folder_size_cached(str(path), int(time.monotonic() // 30))  # re-walked at most every 30 s


@functools.lru_cache(maxsize=64)
def _folder_size_cached(path: str, _bucket: int) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _looks_like_a_run(folder: Path) -> bool:
    """A run folder that lost its manifest: it still has the journal or the array store."""
    return (folder / "completed.jsonl").is_file() or (folder / "arrays" / "zarr.json").is_file()


class RunIndex:
    """The runs under one root folder; the only way pages turn a run id into a path."""

    def __init__(self, root: str | Path, cache_seconds: float = 5.0) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise StoreError(f"The dashboard root {root} is not a folder; give a run folder or a folder of runs.")
        self._cache_seconds = cache_seconds
        self._scanned: tuple[float, dict[str, Path]] | None = None
        self._lock = threading.Lock()

    def _scan(self) -> dict[str, Path]:
        with self._lock:
            now = time.monotonic()
            if self._scanned is not None and now - self._scanned[0] < self._cache_seconds:
                return self._scanned[1]
            found: dict[str, Path] = {}
            frontier = [(self.root, 0)]
            while frontier:
                folder, depth = frontier.pop()
                if (folder / MANIFEST).is_file() or _looks_like_a_run(folder):  # listed even when damaged
                    real = folder.resolve()
                    if real == self.root or self.root in real.parents:
                        run_id = "." if real == self.root else real.relative_to(self.root).as_posix()
                        found[run_id] = real
                    continue
                if depth >= SCAN_DEPTH:
                    continue
                try:
                    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                frontier.extend((child, depth + 1) for child in children)
            self._scanned = (now, dict(sorted(found.items())))
            return self._scanned[1]

    def run_ids(self) -> list[str]:
        return list(self._scan())

    def path(self, run_id: Any) -> Path:
        """The folder of ``run_id``; only ids of runs found under the root are accepted."""
        runs = self._scan()
        if not isinstance(run_id, str) or run_id not in runs:
            shown = repr(run_id)[:80]
            raise DashboardError(
                f"There is no run {shown} under {self.root}; choose one of the runs listed on the Runs page "
                "(only runs under the dashboard's root can be opened)."
            )
        path = runs[run_id]
        if path != self.root and self.root not in path.resolve().parents:  # re-check (symlink swapped since scan)
            raise DashboardError(f"The run {run_id!r} is not under {self.root}; it cannot be opened.")
        return path

    def info(self, run_id: str) -> RunInfo:
        path = self.path(run_id)
        try:
            run = _open(path)
            for name in run.names:
                run.read(name)  # each array's metadata: a broken zarr.json makes the run unhealthy, not hidden
            manifest = run_manifest(run)
            recorded = manifest.get("recorded") or {}
            gen = manifest.get("generation") or {}
            steps = gen.get("num_inference_steps")
            return RunInfo(
                run_id=run_id,
                path=path,
                model=str((manifest.get("model") or {}).get("id", "?")),
                prompts=len(manifest.get("prompts") or []),
                completed=len(run.completed),
                sites=sorted(recorded) or run.names,
                steps=int(steps) if steps else None,
                size_bytes=_folder_size(path),
                analysed=has_analysis(path),
            )
        except LatentlensError as error:
            return RunInfo(run_id, path, "?", 0, 0, [], None, _folder_size(path), False, error=str(error))

    def runs(self) -> list[RunInfo]:
        return [self.info(run_id) for run_id in self.run_ids()]


# ---------------------------------------------------------------------- cached reads
# Keys are (path, mtime-of-manifest) so a re-recorded run is read afresh.


def stamp(path: Path) -> float:
    try:
        return max(
            (path / MANIFEST).stat().st_mtime,
            (path / "analysis").stat().st_mtime if (path / "analysis").exists() else 0,
        )
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=16)
def _open_cached(path: str, stamp: float) -> Any:
    return latentlens.open_run(path)


def _open(path: Path) -> Any:
    try:
        return _open_cached(str(path), stamp(path))
    except LatentlensError:
        raise
    except Exception as error:  # zarr/json errors of a damaged folder
        raise StoreError(
            f"The run {path.name} cannot be opened ({type(error).__name__}: {error}); the store looks damaged."
        ) from error


def open_run(index: RunIndex, run_id: str) -> Any:
    """The :class:`latentlens.RunStore` of ``run_id`` (read-only, cached)."""
    return _open(index.path(run_id))


@functools.lru_cache(maxsize=16)
def _results_cached(path: str, stamp: float) -> AnalysisResults:
    return load_results(path)


def results(index: RunIndex, run_id: str) -> AnalysisResults:
    """The analysis of ``run_id``; :class:`StoreError` with the command to run when it is missing."""
    path = index.path(run_id)
    _open(path)  # a damaged run is reported as damaged, not as "not analysed yet"
    return _results_cached(str(path), stamp(path))


@functools.lru_cache(maxsize=8)
def _directions_cached(path: str, stamp: float) -> tuple[dict[str, Any], dict[str, str]]:
    res = _results_cached(path, stamp)
    loaded: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in res.direction_names:
        try:
            loaded[name] = res.load_direction(name)
        except Exception as error:  # one damaged direction is named, the others still shown
            problems[name] = str(error)
    return loaded, problems


def directions(index: RunIndex, run_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``({name: Direction}, {name: why it cannot be read})`` of the run's saved directions (cached)."""
    path = index.path(run_id)
    _open(path)
    return _directions_cached(str(path), stamp(path))


_PER_RUN: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _memo(run: Any, key: str, make: Any) -> Any:
    """Per-run memo (runs are cached per manifest mtime, so a rewritten run gets a fresh memo)."""
    slot = _PER_RUN.setdefault(run, {})
    if key not in slot:
        slot[key] = make()
    return slot[key]


def run_manifest(run: Any) -> dict[str, Any]:
    """The run's manifest, read once per opened run (``RunStore.manifest`` copies it on every access).

    Treat the returned dict as read-only.
    """
    return _memo(run, "manifest", lambda: run.manifest)


def manifest_labels(run: Any) -> dict[str, np.ndarray]:
    """attribute -> ``[sample]`` label strings, from the manifest (``''`` where unknown); cached per run."""
    return _memo(run, "labels", lambda: _labels(run))


def _labels(run: Any) -> dict[str, np.ndarray]:
    manifest = run_manifest(run)
    labels = manifest.get("labels") or []
    n = len(manifest.get("prompts") or [])
    keys = sorted({k for row in labels if isinstance(row, dict) for k in row})
    out = {}
    for key in keys:
        column = np.array(
            [str((labels[i] or {}).get(key, "")) if i < len(labels) else "" for i in range(n)], dtype=object
        )
        out[key] = column
    return out


def _read_site(run: Any, site: str, step: int) -> np.ndarray:
    try:
        arr = run[site]
    except LatentlensError:
        raise
    dims = arr.dims
    if "step" not in dims or dims[0] != "sample":
        raise DashboardError(f"The array {site!r} has dims {dims}; the dashboard needs [sample, step, ...].")
    position = step_position(run, site, step)
    try:
        return np.asarray(arr[:, position])  # [sample, ...]
    except LatentlensError:
        raise
    except Exception as error:
        raise StoreError(
            f"Reading {site!r} at step {step} failed ({type(error).__name__}: {error}); the store looks damaged. "
            "Re-record the run (latentlens record ... --overwrite)."
        ) from error


@functools.lru_cache(maxsize=32)
def _features_cached(path: str, stamp: float, site: str, step: int) -> np.ndarray:
    """``step`` is a denoising step (mapped to the stored axis by :func:`step_position`)."""
    run = _open_cached(path, stamp)
    data = _read_site(run, site, step)  # [sample, token, channel] or [sample, channel]
    if data.ndim == 3:
        data = data.mean(axis=1, dtype=np.float32)  # [sample, channel]: mean over tokens
    data = data.reshape(data.shape[0], -1).astype(np.float32, copy=False)
    done = np.zeros(data.shape[0], dtype=bool)
    done[[i for i in run.completed if i < data.shape[0]]] = True
    data = data.copy()
    data[~done] = np.nan
    return data


def features(index: RunIndex, run_id: str, site: str, step: int) -> np.ndarray:
    """``[sample, channel]`` features of ``site`` at ``step`` (mean over tokens); NaN rows = unfinished samples."""
    path = index.path(run_id)
    _open(path)
    return _features_cached(str(path), stamp(path), str(site), int(step))


@functools.lru_cache(maxsize=32)
def _pca_cached(path: str, stamp: float, site: str, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _features_cached(path, stamp, site, step)
    keep = np.flatnonzero(np.isfinite(x).all(axis=1))
    if len(keep) < 3:
        raise DashboardError(f"{site!r} at step {step} has only {len(keep)} finished samples; PCA needs at least 3.")
    xs = x[keep] - x[keep].mean(axis=0)
    # Randomised-free exact PCA on the covariance ([channel, channel]), cheap for n >> channels.
    cov = xs.T @ xs / max(len(keep) - 1, 1)
    values, vectors = np.linalg.eigh(cov.astype(np.float64))
    order = np.argsort(values)[::-1][:2]
    coords = xs @ vectors[:, order].astype(np.float32)  # [sample, 2]
    explained = values[order] / max(values.sum(), 1e-12)
    return keep, coords, explained


def pca(index: RunIndex, run_id: str, site: str, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample ids [sample], coords [sample, 2], explained variance ratio [2])`` of a PCA of the cell."""
    path = index.path(run_id)
    _open(path)
    return _pca_cached(str(path), stamp(path), str(site), int(step))


def attention_map(index: RunIndex, run_id: str, site: str, sample: int) -> np.ndarray:
    """``[step, query, key]`` attention of one sample at ``site`` (e.g. ``blocks.2.attn.img2txt``).

    The step axis is the stored one; :func:`recorded_steps` names its denoising steps.
    """
    run = open_run(index, run_id)
    arr = run[site]
    if not 0 <= int(sample) < arr.shape[0]:
        raise DashboardError(f"Sample {sample} is out of range; the run has samples 0..{arr.shape[0] - 1}.")
    try:
        data = np.asarray(arr[int(sample)], dtype=np.float32)  # [step, query, key]
    except Exception as error:
        raise StoreError(
            f"Reading {site!r} failed ({type(error).__name__}: {error}); the store looks damaged."
        ) from error
    if data.ndim != 3:
        raise DashboardError(
            f"The attention array {site!r} has per-sample shape {data.shape}; expected [step, query, key]."
        )
    return data


def attention_sites(run: Any) -> dict[int, str]:
    """block -> name of its recorded image→text attention map."""
    out = {}
    for name in run.names:
        parts = name.split(".")
        if (
            len(parts) == 4
            and parts[0] == "blocks"
            and parts[1].isdigit()
            and parts[2] == "attn"
            and parts[3] == "img2txt"
        ):
            out[int(parts[1])] = name
    return dict(sorted(out.items()))


def activation_sites(run: Any) -> list[str]:
    """Recorded names that are activations (residuals etc.), not attention maps, as the store says."""
    return [name for name in run.names if run.kind(name) == "activation"]


def image_file(index: RunIndex, run_id: str, sample: int) -> Path | None:
    """The generated image of ``sample`` if the run saved one."""
    run = open_run(index, run_id)
    if not isinstance(sample, (int, np.integer)) or sample < 0:
        return None
    path = run.image_path(int(sample))
    if not path.is_file():
        return None
    if not is_inside(path, index.root):  # a symlink out of the root: never served
        _LOG.warning("refused to serve %s: it resolves outside the dashboard root %s", path, index.root)
        return None
    return path.resolve()


def clear_caches() -> None:
    """Forget every cached read (tests, or after a run was rewritten in place)."""
    for fn in (_open_cached, _results_cached, _directions_cached, _features_cached, _pca_cached, _folder_size_cached):
        fn.cache_clear()


@functools.lru_cache(maxsize=4)
def _tokenizer(manifest_model: str, pipeline_class: str) -> Any:
    """A tokenizer for the run's model from the architecture registry, or None (labels show indices)."""
    return offline_tokenizer(manifest_model, pipeline_class)


def token_labels(run: Any, sample: int, n_keys: int) -> list[str]:
    """``"k: word"`` labels of the text tokens of ``sample`` (``"k"`` where the tokenizer is unknown)."""
    manifest = run_manifest(run)
    model = manifest.get("model") or {}
    prompts = manifest.get("prompts") or []
    words: list[str] = []
    tokenizer = _tokenizer(str(model.get("id", "")), str(model.get("pipeline_class", "")))
    if tokenizer is not None and 0 <= sample < len(prompts):
        try:
            words = tokenizer.convert_ids_to_tokens(tokenizer(prompts[sample])["input_ids"])
        except Exception:
            words = []
    return [f"{k}: {words[k]}" if k < len(words) else (f"{k}: (pad)" if words else str(k)) for k in range(n_keys)]


def recorded_steps(run: Any, n_steps: int) -> list[int]:
    """Denoising step of every position of a stored step axis (what the recorder resolved).

    ``latentlens record --steps 0,4,8`` stores 3 positions; probe results, directions and the pages
    speak of denoising steps (0, 4, 8), and this is the map between the two.
    """
    return list(run.recorded_steps(n_steps))


def step_position(run: Any, site: str, step: int) -> int:
    """Position on ``site``'s stored step axis of denoising step ``step``."""
    steps = recorded_steps(run, run[site].shape[1])
    if int(step) not in steps:
        raise DashboardError(f"Step {step} was not recorded for {site!r}; recorded denoising steps: {steps}.")
    return steps.index(int(step))

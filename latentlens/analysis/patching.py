"""Activation patching grids and direction ablation: where does the model *use* what a probe reads?

For each (base, source) prompt pair with one seed, :func:`patch_grid` runs the base prompt while
one site's activation is replaced with the source run's — at one denoising step, or at all steps
(both are grid columns), optionally only at the tokens of given words — and measures how far the
patch moves the image toward the source image::

    effect = (d(x_base, x_src) - d(x_patched, x_src)) / d(x_base, x_src)     # pixel space, RMS

1 = the patched image is the source image, 0 = unchanged. In the shapes world (pairs that name
an attribute and the source's value) the oracle also reads every patched image: ``oracle_flip``
is the fraction of pairs read with the source's value. Mean and 95 % interval over pairs. The
source run is recorded once per pair (all sites, all steps) and replayed with
:class:`latentlens.patch` for every cell. :func:`ablate_direction` reports the same measures for
projecting a :class:`latentlens.Direction` out of its site (:class:`latentlens.ablate`).

Example::

    from latentlens.analysis.patching import patch_grid, shapes_pairs
    pairs = shapes_pairs("color", "red", "blue", n=20)
    grid = patch_grid(pipe, pairs, sites="blocks.*.resid_out.*")
    grid.cell("blocks.0.resid_out.txt", "all")   # {'effect': 0.97, 'ci': [0.95, 0.99], 'oracle_flip': 1.0, ...}
    grid.save("runs/shapes")                     # runs/shapes/analysis/patching/color_red_blue/
    latentlens.load_results("runs/shapes").load_patch_grid("color_red_blue")
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from latentlens.adapters import adapter_for
from latentlens.errors import ConfigError, StoreError
from latentlens.text import word_token_indices

Column: TypeAlias = int | Literal["all"]
Metric = Literal["rms", "mae"]
METRICS: tuple[str, ...] = ("rms", "mae")
PATCHING = "patching"  # RUN_DIR/analysis/patching/NAME/
GRID_FILE = "grid.json"
IMAGES_FILE = "images.npz"
_EPS = 1e-12


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PatchPair:
    """One (base, source) prompt pair generated with the same ``seed``.

    ``attribute`` / ``base_value`` / ``source_value`` (shapes world) let the oracle judge a patch.
    """

    base: str
    source: str
    seed: int = 0
    attribute: str | None = None
    base_value: str | None = None
    source_value: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base": self.base,
            "source": self.source,
            "seed": self.seed,
        }
        for key in ("attribute", "base_value", "source_value"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _pair_from(row: Any, where: str) -> PatchPair:
    if not isinstance(row, dict) or not isinstance(row.get("base"), str) or not isinstance(row.get("source"), str):
        raise ConfigError(
            f'{where} must be an object with string fields "base" and "source" (and "seed"); got {row!r}.'
        )
    seed = row.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f'{where}: "seed" must be a non-negative integer; got {seed!r}.')
    extra = {k: (None if row.get(k) is None else str(row[k])) for k in ("attribute", "base_value", "source_value")}
    return PatchPair(row["base"], row["source"], seed, **extra)


def load_pairs(path: str | Path) -> list[PatchPair]:
    """Read pairs from a JSONL file: one ``{"base": ..., "source": ..., "seed": 0}`` object per line.

    Example: ``load_pairs("pairs.jsonl")[0].base``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f'The pairs file {path} does not exist; give a JSONL file with one {{"base", "source", "seed"}} per line.'
        )
    pairs = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ConfigError(f"Line {k} of {path} is not valid JSON ({error}).") from error
        pairs.append(_pair_from(row, f"Line {k} of {path}"))
    if not pairs:
        raise ConfigError(f"The pairs file {path} holds no pairs.")
    return pairs


def shapes_pairs(attribute: str, from_: str, to: str, n: int, seed: int = 0) -> list[PatchPair]:
    """``n`` shapes-world pairs: canonical captions of random training combinations with ``attribute == from_``
    (base) and the same combination with ``to`` (source), each with its own noise seed.

    Example: ``shapes_pairs("color", "red", "blue", n=20)[0].source`` → ``'a small blue square ...'``.
    """
    from latentlens import shapes

    if attribute not in shapes.ATTRIBUTES:
        raise ConfigError(f"Unknown attribute {attribute!r}; use one of {', '.join(shapes.ATTRIBUTES)}.")
    for value in (from_, to):
        if value not in shapes.VALUES[attribute]:
            raise ConfigError(f"Unknown {attribute} {value!r}; use one of {', '.join(shapes.VALUES[attribute])}.")
    if from_ == to:
        raise ConfigError(f"--from and --to are both {from_!r}; give two different {attribute} values.")
    if n < 1:
        raise ConfigError(f"n={n} pairs: give at least 1.")
    import dataclasses

    pool = [
        c
        for c in shapes.training_combinations()
        if getattr(c, attribute) == from_ and not shapes.is_held_out(dataclasses.replace(c, **{attribute: to}))
    ]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=n, replace=len(pool) < n)
    pairs = []
    for k, i in enumerate(picks):
        base = pool[int(i)]
        source = dataclasses.replace(base, **{attribute: to})
        pairs.append(
            PatchPair(
                shapes.canonical_caption(base),
                shapes.canonical_caption(source),
                seed * 100_000 + k,
                attribute,
                from_,
                to,
            )
        )
    return pairs


# --------------------------------------------------------------------------- the result


def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and t-based 95 % interval of ``values`` ``[pair]`` (NaN-free)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, mean, mean
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def _wilson(k: float, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class PatchGrid:
    """Per-(site, column) patching (or ablation) effects over pairs; ``columns`` are steps and ``"all"``.

    Arrays: ``per_pair`` ``[site, column, pair]`` (effect of each pair), ``oracle`` ``[site, column, pair]``
    (1.0 where the oracle reads the source's value, NaN without an oracle). ``images`` holds uint8
    ``base`` / ``source`` ``[pair, height, width, 3]`` and ``patched`` ``[site, column, pair, height, width, 3]``.
    """

    sites: list[str]
    columns: list[Column]
    per_pair: np.ndarray  # [site, column, pair]
    oracle: np.ndarray  # [site, column, pair]
    pairs: list[PatchPair]
    metric: str = "rms"
    kind: Literal["patch", "ablation"] = "patch"
    settings: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    name: str | None = None

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def attribute(self) -> str | None:
        return self.pairs[0].attribute if self.pairs else None

    def _index(self, site: str, column: Column) -> tuple[int, int]:
        if site not in self.sites:
            raise ConfigError(f"The grid has no site {site!r}; it has: {', '.join(self.sites)}.")
        if column not in self.columns:
            raise ConfigError(f"The grid has no column {column!r}; it has: {', '.join(map(str, self.columns))}.")
        return self.sites.index(site), self.columns.index(column)

    def cell(self, site: str, column: Column) -> dict[str, Any]:
        """``{"site", "step", "effect", "ci", "oracle_flip", "oracle_ci"}`` of one cell."""
        i, j = self._index(site, column)
        mean, lo, hi = _mean_ci(self.per_pair[i, j])
        oracle = self.oracle[i, j]
        flip, flip_ci = None, None
        if not np.isnan(oracle).all():
            hits = float(np.nansum(oracle))
            flip = hits / len(oracle)
            flip_ci = list(_wilson(hits, len(oracle)))
        return {
            "site": site,
            "step": column,
            "effect": mean,
            "ci": [lo, hi],
            "oracle_flip": flip,
            "oracle_ci": flip_ci,
        }

    def cells(self) -> list[dict[str, Any]]:
        return [self.cell(s, c) for s in self.sites for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        """What ``latentlens patch-grid --json`` prints."""
        return {
            "metric": self.metric,
            "kind": self.kind,
            "attribute": self.attribute,
            "cells": self.cells(),
            "n": self.n,
            "settings": self.settings,
        }

    def table(
        self,
        stream: str,
        value: Literal["effect", "oracle_flip"] = "effect",
        sites: str = "blocks.*.resid_out.*",
    ) -> tuple[list[int], list[Column], np.ndarray, list[list[str | None]]]:
        """``(blocks, columns, table [block, column], sites [block][column])`` of one stream's block sites matching
        the glob ``sites`` (one site per block), the axes of
        :meth:`latentlens.results.AnalysisResults.probe_grid` plus the ``"all"`` column."""
        from latentlens.analysis.probes import site_block, site_stream

        rows: list[tuple[int, str]] = []
        for s in self.sites:
            block = site_block(s)
            if site_stream(s) == stream and block is not None and fnmatch.fnmatchcase(s, sites):
                rows.append((block, s))
        if not rows:
            raise ConfigError(
                f"The grid has no block sites matching {sites!r} in stream {stream!r}; its sites: {', '.join(self.sites)}."
            )
        blocks = sorted({b for b, _ in rows})
        table = np.full((len(blocks), len(self.columns)), np.nan)
        names: list[list[str | None]] = [[None] * len(self.columns) for _ in blocks]
        for block, site in rows:
            for j, column in enumerate(self.columns):
                cell = self.cell(site, column)
                v = cell[value]
                table[blocks.index(block), j] = math.nan if v is None else float(v)
                names[blocks.index(block)][j] = site
        return blocks, list(self.columns), table, names

    @property
    def streams(self) -> list[str]:
        from latentlens.analysis.probes import site_stream

        return sorted({site_stream(s) for s in self.sites if site_stream(s)})

    def default_name(self) -> str:
        if self.name:
            return self.name
        p = self.pairs[0] if self.pairs else None
        if p is not None and p.attribute and p.base_value and p.source_value:
            stem = f"{p.attribute}_{p.base_value}_{p.source_value}"
        else:
            stem = "grid"
        return f"ablate_{stem}" if self.kind == "ablation" else stem

    def save(self, run_dir: str | Path, name: str | None = None) -> Path:
        """Write ``RUN_DIR/analysis/patching/NAME/`` (``grid.json`` + ``images.npz``); returns the folder.

        ``latentlens.load_results(RUN_DIR).load_patch_grid(NAME)`` reads it back.
        """
        name = name or self.default_name()
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"Grid name {name!r} must be a plain folder name (no '/', not starting with '.').")
        folder = Path(run_dir) / "analysis" / PATCHING / name
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": "latentlens-patch-grid/1",
            "name": name,
            "kind": self.kind,
            "metric": self.metric,
            "sites": self.sites,
            "columns": self.columns,
            "pairs": [p.as_dict() for p in self.pairs],
            "per_pair": _nan_to_none(self.per_pair),
            "oracle": _nan_to_none(self.oracle),
            "settings": self.settings,
            "cells": self.cells(),
        }
        (folder / GRID_FILE).write_text(json.dumps(doc, indent=1) + "\n")
        if self.images:
            np.savez_compressed(folder / IMAGES_FILE, allow_pickle=True, **self.images)
        self.name = name
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PatchGrid:
        """Read a folder written by :meth:`save`."""
        folder = Path(folder)
        path = folder / GRID_FILE
        try:
            doc = json.loads(path.read_text())
            per_pair = np.asarray(doc["per_pair"], dtype=np.float64)
            oracle = np.asarray(doc["oracle"], dtype=np.float64)
            grid = cls(
                sites=list(doc["sites"]),
                columns=[c if c == "all" else int(c) for c in doc["columns"]],
                per_pair=per_pair,
                oracle=oracle,
                pairs=[_pair_from(p, str(path)) for p in doc["pairs"]],
                metric=doc.get("metric", "rms"),
                kind=doc.get("kind", "patch"),
                settings=doc.get("settings") or {},
                name=doc.get("name") or folder.name,
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(
                f"The patching grid {path} cannot be read ({error}); rerun `latentlens patch-grid`."
            ) from error
        images = folder / IMAGES_FILE
        if images.is_file():
            with np.load(images, allow_pickle=False) as data:
                grid.images = {k: np.asarray(data[k]) for k in data.files}
        return grid

    def cell_images(self, site: str, column: Column, pair: int = 0) -> dict[str, np.ndarray]:
        """uint8 ``base`` / ``source`` / ``patched`` images ``[height, width, 3]`` of one pair of one cell."""
        i, j = self._index(site, column)
        if "patched" not in self.images:
            raise StoreError(
                "This grid was saved without images; rerun `latentlens patch-grid` with --keep-images > 0."
            )
        kept = self.images["patched"].shape[2]
        if not 0 <= pair < kept:
            raise ConfigError(f"pair={pair}: the grid kept images of the first {kept} pairs.")
        return {
            "base": self.images["base"][pair],
            "source": self.images["source"][pair],
            "patched": self.images["patched"][i, j, pair],
        }


# --------------------------------------------------------------------------- computing


def _distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, metric: str) -> np.ndarray:
    """Per-image distance of float images ``[pair, height, width, 3]`` (inside ``mask`` ``[pair, height, width]`` when given)."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if metric == "rms":
        diff = diff**2
    if mask is not None:
        m = mask[..., None].astype(np.float64)
        value = (diff * m).sum(axis=(1, 2, 3)) / np.maximum(m.sum(axis=(1, 2, 3)) * diff.shape[-1], 1.0)
    else:
        value = diff.mean(axis=(1, 2, 3))
    return np.sqrt(value) if metric == "rms" else value


def patch_effect(
    base: np.ndarray,
    source: np.ndarray,
    patched: np.ndarray,
    mask: np.ndarray | None = None,
    metric: Metric = "rms",
) -> np.ndarray:
    """``(d(base, source) - d(patched, source)) / d(base, source)`` per image ``[pair]``.

    Images ``[pair, height, width, 3]`` (any range); a pair whose base and source images are identical has
    denominator 0: its effect is 0 when the patched image is identical too, else ``-inf``-like
    (divided by 1e-12), so a patch that breaks an unchanged image is never hidden.
    """
    d_bs = _distance(base, source, mask, metric)
    d_ps = _distance(patched, source, mask, metric)
    return (d_bs - d_ps) / np.maximum(d_bs, _EPS)


def _as_float_images(images: Any) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.clip(x.astype(np.float32), 0.0, 1.0)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def patchable_sites(pipe: Any, sites: str | Sequence[str], tokens: Any = None) -> list[str]:
    """Expand names/globs into the sites ``patch`` can replace, in the model's order; clear errors before compute.

    A name that is read-only or unknown raises; a glob keeps only its patchable matches (and must
    match one). With ``tokens``, every site must be a text-stream site.
    """
    from latentlens.analysis.probes import site_stream
    from latentlens.interventions import patch
    from latentlens.names import is_map
    from latentlens.recorder import site_names

    valid = [n for n in site_names(pipe) if not is_map(n) and n != "pred"]
    patterns = [sites] if isinstance(sites, str) else list(sites)
    if not patterns:
        raise ConfigError("sites is empty; give names or globs such as 'blocks.*.resid_out.*'.")
    chosen: list[str] = []
    dummy = torch.zeros(1)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"Site patterns must be strings; got {pattern!r}.")
        if _has_glob(pattern):
            hits = []
            for name in (n for n in valid if fnmatch.fnmatchcase(n, pattern)):
                try:
                    patch(pipe, name, dummy)
                except ConfigError:
                    continue
                hits.append(name)
            if not hits:
                raise ConfigError(
                    f"The site pattern {pattern!r} matches no patchable site of this model; patchable sites are "
                    "residual, attention-output and feed-forward sites such as 'blocks.*.resid_out.*' "
                    "(latentlens.site_names(pipe) lists them all)."
                )
        else:
            patch(pipe, pattern, dummy)  # raises for unknown or read-only names
            hits = [pattern]
        chosen.extend(h for h in hits if h not in chosen)
    if tokens is not None:
        bad = [s for s in chosen if site_stream(s) != "txt"]
        if bad:
            raise ConfigError(
                f"--tokens selects text tokens, but {', '.join(bad[:4])}{' …' if len(bad) > 4 else ''} "
                "is not a text-stream site; restrict the sites to e.g. 'blocks.*.resid_out.txt'."
            )
    return chosen


def _token_count(tokenizer: Any, prompt: str, length: int) -> int:
    return len(tokenizer(prompt, truncation=True, max_length=length)["input_ids"])


def pair_token_positions(pipe: Any, pairs: Sequence[PatchPair], words: Sequence[str]) -> list[tuple[int, ...]]:
    """Text-token positions of ``words`` in each pair (in its base or its source prompt), checking that base and
    source share one token layout (same token count per text encoder); errors name the pair."""
    adapter = adapter_for(pipe)
    segments = adapter.text_segments()
    if not segments:
        raise ConfigError("tokens: the pipeline has no tokenizer, so words cannot be located; pass a pipeline.")
    out = []
    for k, pair in enumerate(pairs):
        for segment in segments:
            nb = _token_count(segment.tokenizer, pair.base, segment.length)
            ns = _token_count(segment.tokenizer, pair.source, segment.length)
            if nb != ns:
                raise ConfigError(
                    f"Pair {k} has different token layouts: the base {pair.base!r} has {nb} tokens, the source "
                    f"{pair.source!r} has {ns}; --tokens patches token positions, so use pairs whose prompts "
                    "tokenize to the same length (e.g. swap one single-token word)."
                )
        positions: set[int] = set()
        for word in words:
            found = False
            for prompt in (pair.base, pair.source):
                try:
                    positions.update(word_token_indices(adapter, word, prompt))
                    found = True
                except ConfigError:
                    pass
            if not found:
                raise ConfigError(f"Pair {k}: the word {word!r} occurs in neither {pair.base!r} nor {pair.source!r}.")
        out.append(tuple(sorted(positions)))
    return out


def generate_images(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    call_kwargs: dict[str, Any] | None = None,
) -> np.ndarray:
    """float32 images ``[batch, height, width, 3]`` in [0, 1], one CPU generator per prompt (seeded ``seeds[i]``).

    Example: ``generate_images(pipe, ["a red circle"], [0], {"num_inference_steps": 8})``.
    """
    call_kwargs = call_kwargs or {}
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        images = pipe(prompts, generator=generators, output_type="np", **call_kwargs).images
    return _as_float_images(images)


def _check_pairs(pairs: Sequence[PatchPair]) -> list[PatchPair]:
    pairs = list(pairs)
    if not pairs:
        raise ConfigError("patch_grid needs at least one (base, source) pair.")
    for k, p in enumerate(pairs):
        if not isinstance(p, PatchPair):
            raise ConfigError(
                f"pairs[{k}] is a {type(p).__name__}; build pairs with PatchPair, load_pairs or shapes_pairs."
            )
    return pairs


def _columns(steps: Any, n_steps: int) -> list[Column]:
    if steps is None:
        return [*range(n_steps), "all"]
    items = [steps] if isinstance(steps, (int, str)) else list(steps)
    out: list[Column] = []
    for s in items:
        if s == "all":
            out.append("all")
        elif isinstance(s, int) and not isinstance(s, bool) and 0 <= s < n_steps:
            out.append(int(s))
        else:
            raise ConfigError(f"steps={steps!r}: {s!r} is not 'all' or a step index in 0..{n_steps - 1}.")
    if not out:
        raise ConfigError("steps is empty; give step indices and/or 'all'.")
    return list(dict.fromkeys(out))


def _default_steps(pipe: Any) -> int:
    """The pipeline's default ``num_inference_steps`` (from its call signature; 50 if it has none)."""
    import inspect

    try:
        default = inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    except (KeyError, TypeError, ValueError):
        return 50
    return int(default) if isinstance(default, int) else 50


def _oracle_hits(images: np.ndarray, chunk: Sequence[PatchPair]) -> np.ndarray:
    """1.0 where the oracle reads the pair's ``source_value`` for its ``attribute``, NaN for pairs without one."""
    out = np.full(len(chunk), np.nan)
    judged = [(k, p.attribute, p.source_value) for k, p in enumerate(chunk) if p.attribute and p.source_value]
    if not judged:
        return out
    from latentlens import shapes

    read = shapes.read_batch(_to_uint8(images[[k for k, _, _ in judged]]))
    for (k, attribute, value), r in zip(judged, read):
        out[k] = float(getattr(r, attribute) == value)
    return out


def _nan_to_none(values: np.ndarray) -> list[Any]:
    """``values.tolist()`` with NaN as ``None`` (JSON ``null``)."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out.tolist()


@dataclass
class _CellBuffers:
    """What a grid run fills per (site, column): ``per_pair`` and ``oracle`` ``[site, column, pair]`` (NaN until
    measured) and the kept uint8 images ``patched`` ``[site, column, pair, height, width, 3]``."""

    columns: list[Column]
    per_pair: np.ndarray
    oracle: np.ndarray
    patched: np.ndarray

    @classmethod
    def empty(
        cls, n_sites: int, columns: list[Column], n: int, keep: int, image_shape: tuple[int, ...]
    ) -> _CellBuffers:
        return cls(
            columns,
            np.full((n_sites, len(columns), n), np.nan),
            np.full((n_sites, len(columns), n), np.nan),
            np.zeros((n_sites, len(columns), keep, *image_shape), dtype=np.uint8),
        )


def _check_mask(mask: Any, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool)
    if m.ndim == 2:
        m = np.broadcast_to(m, (n, *m.shape))
    if m.ndim != 3 or m.shape[0] != n:
        raise ConfigError(f"mask must be [H, W] or [n_pairs, H, W]; got shape {np.asarray(mask).shape} for {n} pairs.")
    return m


def patch_grid(
    pipe: Any,
    pairs: Sequence[PatchPair],
    sites: str | Sequence[str] = "blocks.*.resid_out.*",
    steps: Sequence[Column] | Column | None = None,
    tokens: Sequence[str] | str | None = None,
    metric: Metric = "rms",
    *,
    mask: Any = None,
    num_inference_steps: int | None = None,
    batch_size: int = 16,
    keep_images: int = 4,
    cfg: Literal["cond", "uncond", "both"] = "both",
    progress: Any = None,
) -> PatchGrid:
    """Patch every site at every step (and at all steps) from each pair's source run into its base run.

    Args:
        pipe: a pipeline (``pipe(prompts, generator=..., output_type="np")``).
        pairs: :class:`PatchPair` list (:func:`load_pairs`, :func:`shapes_pairs`).
        sites: patchable site names or globs. steps: step indices and/or ``"all"`` (default: every step
            of the run and ``"all"``). tokens: words whose text tokens alone are patched (text sites only).
        metric: image distance, ``"rms"`` or ``"mae"`` over pixels in [0, 1] (inside ``mask`` [height, width] or
            [pair, height, width] when given).
        cfg: CFG rows patched ("both": the whole call, the usual activation patching).
        keep_images: patched images kept per cell for the first pairs (the dashboard shows them).
        progress: optional ``callable(done_cells, total_cells)``.

    Example::

        grid = patch_grid(pipe, shapes_pairs("color", "red", "blue", 8), sites="blocks.*.resid_out.txt",
                          steps=[0, 5, "all"], num_inference_steps=8)
        grid.to_json()["cells"][0]   # {'site': 'blocks.0.resid_out.txt', 'step': 0, 'effect': ..., 'ci': [...], ...}
    """
    from latentlens.interventions import patch
    from latentlens.recorder import record

    pairs = _check_pairs(pairs)
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not one of {', '.join(METRICS)}.")
    if cfg not in ("cond", "uncond", "both"):
        raise ConfigError(f"cfg={cfg!r} is not one of 'cond', 'uncond', 'both'.")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1.")
    words = [tokens] if isinstance(tokens, str) else (list(tokens) if tokens is not None else None)
    site_list = patchable_sites(pipe, sites, words)
    positions = pair_token_positions(pipe, pairs, words) if words else [None] * len(pairs)
    masks = _check_mask(mask, len(pairs))
    call_kwargs: dict[str, Any] = {}
    if num_inference_steps is not None:
        call_kwargs["num_inference_steps"] = int(num_inference_steps)
    columns: list[Column] | None = None
    if steps is not None:  # checked against the pipeline's step count before any compute
        columns = _columns(steps, int(num_inference_steps or _default_steps(pipe)))

    n = len(pairs)
    cells: _CellBuffers | None = None  # allocated from the first chunk (step count, image shape)
    base_all: list[tuple[list[int], np.ndarray]] = []
    source_all: list[tuple[list[int], np.ndarray]] = []
    keep = max(0, min(int(keep_images), n))
    # chunks of pairs that share one token set (patch takes one set of token positions per call)
    order: dict[Any, list[int]] = {}
    for k, pos in enumerate(positions):
        order.setdefault(pos, []).append(k)
    chunks = [(pos, ks[i : i + batch_size]) for pos, ks in order.items() for i in range(0, len(ks), batch_size)]
    done = 0
    for pos, idx in chunks:
        chunk = [pairs[k] for k in idx]
        seeds = [p.seed for p in chunk]
        with record(pipe, sites=site_list, cfg=cfg) as donor:  # the source run, once per pair
            x_src = generate_images(pipe, [p.source for p in chunk], seeds, call_kwargs)
        x_base = generate_images(pipe, [p.base for p in chunk], seeds, call_kwargs)
        if cells is None:
            cells = _CellBuffers.empty(
                len(site_list), columns or _columns(steps, len(donor.steps)), n, keep, x_base.shape[1:]
            )
        m = None if masks is None else masks[idx]
        for i, site in enumerate(site_list):
            for j, column in enumerate(cells.columns):
                step_sel = None if column == "all" else [int(column)]
                with patch(
                    pipe,
                    site,
                    donor,
                    steps=step_sel,
                    cfg=None if cfg == "both" else cfg,
                    tokens=list(pos) if pos else None,
                ):
                    x_p = generate_images(pipe, [p.base for p in chunk], seeds, call_kwargs)
                cells.per_pair[i, j, idx] = patch_effect(x_base, x_src, x_p, m, metric)
                cells.oracle[i, j, idx] = _oracle_hits(x_p, chunk)
                for slot, k in enumerate(idx):
                    if k < keep:
                        cells.patched[i, j, k] = _to_uint8(x_p[slot])
                done += len(idx)
                if progress is not None:
                    progress(done, n * len(site_list) * len(cells.columns))
        del donor
        base_all.append((idx, _to_uint8(x_base)))
        source_all.append((idx, _to_uint8(x_src)))
    assert cells is not None  # _check_pairs refused an empty pair list, so the loop ran
    images = _gather_images(base_all, source_all, n, keep, cells.patched)
    settings = {
        "num_inference_steps": num_inference_steps,
        "tokens": words,
        "cfg": cfg,
        "mask": masks is not None,
        "token_positions": [list(p) if p else None for p in positions],
    }
    return PatchGrid(
        site_list,
        list(cells.columns),
        cells.per_pair,
        cells.oracle,
        pairs,
        metric,
        "patch",
        settings,
        images,
    )


def _gather_images(
    base_all: list[tuple[list[int], np.ndarray]],
    source_all: list[tuple[list[int], np.ndarray]],
    n: int,
    keep: int,
    patched: np.ndarray,
) -> dict[str, np.ndarray]:
    shape = base_all[0][1].shape[1:]
    base = np.zeros((n, *shape), dtype=np.uint8)
    source = np.zeros((n, *shape), dtype=np.uint8)
    for (idx, b), (_, s) in zip(base_all, source_all):
        base[idx], source[idx] = b, s
    return {"base": base[:keep], "source": source[:keep], "patched": patched}


def ablate_direction(
    pipe: Any,
    pairs: Sequence[PatchPair],
    direction: Any,
    steps: Sequence[Column] | Column | None = ("all",),
    metric: Metric = "rms",
    *,
    mask: Any = None,
    num_inference_steps: int | None = None,
    batch_size: int = 16,
    keep_images: int = 4,
    cfg: Literal["cond", "uncond", "both"] = "both",
) -> PatchGrid:
    """Project ``direction`` out of its site in each pair's base run; the same effect measures as :func:`patch_grid`.

    Columns are the chosen steps (default: only ``"all"``, the ablation at every step). The effect
    says how far removing the direction moves the base image toward the source image; ``oracle``
    marks pairs the oracle then reads with the source's value. ``settings["oracle_changed"]`` per
    column is the fraction no longer read with the base's value (the attribute was destroyed).

    Example::

        d = latentlens.load_results("runs/shapes").load_direction("color/red")
        res = ablate_direction(pipe, shapes_pairs("color", "red", "blue", 20), d)
        res.cell(d.site, "all")["effect"]
    """
    from latentlens.interventions import ablate

    pairs = _check_pairs(pairs)
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not one of {', '.join(METRICS)}.")
    if not hasattr(direction, "vector") or not hasattr(direction, "site"):
        raise ConfigError("ablate_direction needs a latentlens.Direction (with .vector and .site).")
    ablate(pipe, direction)  # checks the site before any compute
    masks = _check_mask(mask, len(pairs))
    call_kwargs: dict[str, Any] = {}
    if num_inference_steps is not None:
        call_kwargs["num_inference_steps"] = int(num_inference_steps)
    columns: list[Column] = _columns(steps, num_inference_steps or _default_steps(pipe))
    n, keep = len(pairs), max(0, min(int(keep_images), len(pairs)))
    cells: _CellBuffers | None = None  # allocated from the first batch (image shape)
    changed = np.full((len(columns), n), np.nan)
    base_all: list[tuple[list[int], np.ndarray]] = []
    source_all: list[tuple[list[int], np.ndarray]] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        chunk = [pairs[k] for k in idx]
        seeds = [p.seed for p in chunk]
        x_src = generate_images(pipe, [p.source for p in chunk], seeds, call_kwargs)
        x_base = generate_images(pipe, [p.base for p in chunk], seeds, call_kwargs)
        if cells is None:
            cells = _CellBuffers.empty(1, columns, n, keep, x_base.shape[1:])
        m = None if masks is None else masks[idx]
        for j, column in enumerate(columns):
            with ablate(
                pipe,
                direction,
                steps=None if column == "all" else [int(column)],
                cfg=cfg,
            ):
                x_a = generate_images(pipe, [p.base for p in chunk], seeds, call_kwargs)
            cells.per_pair[0, j, idx] = patch_effect(x_base, x_src, x_a, m, metric)
            cells.oracle[0, j, idx] = _oracle_hits(x_a, chunk)
            flipped_back = _oracle_hits(
                x_a,
                [PatchPair(p.base, p.source, p.seed, p.attribute, None, p.base_value) for p in chunk],
            )
            changed[j, idx] = 1.0 - flipped_back
            for slot, k in enumerate(idx):
                if k < keep:
                    cells.patched[0, j, k] = _to_uint8(x_a[slot])
        base_all.append((idx, _to_uint8(x_base)))
        source_all.append((idx, _to_uint8(x_src)))
    assert cells is not None  # _check_pairs refused an empty pair list, so the loop ran
    images = _gather_images(base_all, source_all, n, keep, cells.patched)
    settings = {
        "num_inference_steps": num_inference_steps,
        "cfg": cfg,
        "mask": masks is not None,
        "direction": {
            "site": direction.site,
            "provenance": dict(getattr(direction, "provenance", {}) or {}),
        },
        "oracle_changed": [None if np.isnan(c).all() else float(np.nanmean(c)) for c in changed],
    }
    return PatchGrid(
        [direction.site],
        columns,
        cells.per_pair,
        cells.oracle,
        pairs,
        metric,
        "ablation",
        settings,
        images,
    )


__all__ = [
    "PatchGrid",
    "PatchPair",
    "ablate_direction",
    "generate_images",
    "load_pairs",
    "pair_token_positions",
    "patch_effect",
    "patch_grid",
    "patchable_sites",
    "shapes_pairs",
]

"""Level of detail for big scatters: draw at most a budget of points, the rest as density; zoom for all.

A WebGL scatter of 100,000 points redraws in about a second where WebGL runs in software
(no GPU), so the ``/latents`` figure never carries more than ``budget`` points:

* at full view, a *stratified* sample: every label keeps its share of the budget (and rare labels
  a floor), and within a label the points with the lowest fixed per-sample priority are kept, so
  the choice is deterministic and a sample shown at one step is shown at the others;
* a density layer (a 2-D histogram of **all** points in view) keeps the overall shape visible;
* after a zoom or pan the server sends the points inside the new view, all of them once they
  fit the budget, so every point can be reached by zooming in.

Example::

    view = view_update({"xaxis.range[0]": 0, "xaxis.range[1]": 1}, FULL_VIEW)   # {"x": [0, 1], "y": None}
    mask = in_view(coords, view)
    shown = stratified(codes, priority(samples), mask, budget=2_000)             # row indices to draw
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BUDGET = 2_000  # points per figure, chosen by measurement: benchmarks/RESULTS.md "Dashboard (issue 6)"
DENSITY_BINS = (120, 80)  # x bins, y bins of the density layer
FULL_VIEW: dict[str, Any] = {"x": None, "y": None}  # None = the axis is autoranged (everything)


@dataclass(frozen=True)
class Cell:
    """Everything the scatter of one (run, site, step, method, colour) needs (the ``/latents`` page caches it)."""

    key: str  # the figure's uirevision: a new cell resets zoom and legend state
    title: str
    coords: np.ndarray  # [sample, 2] float32
    samples: np.ndarray  # [sample] sample ids
    codes: np.ndarray  # [sample] index into names
    names: list[str]  # label values (["all"] when not coloured)
    prio: np.ndarray  # [sample] draw priority (dashboards.lod.priority)
    order: np.ndarray  # [sample] rows by label, then priority (dashboards.lod.draw_order)
    axis: tuple[str, str]
    note: str | None  # a warning to show beside the figure (UMAP missing...)


def priority(samples: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random rank per sample id (``[sample]`` float64 in [0, 1)); lower = drawn first."""
    samples = np.asarray(samples, dtype=np.int64)  # [sample]
    if samples.size == 0:
        return np.zeros(0)
    table = np.random.default_rng(seed).random(int(samples.max()) + 1)  # [max id + 1]
    return table[samples]


def allocate(counts: np.ndarray, budget: int) -> np.ndarray:
    """Points per group (``[groups]``): proportional to ``counts``, a floor for rare groups, sum ≤ ``budget``.

    Groups that fit are kept whole when everything fits; otherwise each non-empty group first gets
    ``min(count, budget // (10 * groups))`` and the rest of the budget is shared in proportion
    (largest remainder).
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() <= budget:
        return counts.copy()
    groups = int((counts > 0).sum())
    floor = np.minimum(counts, budget // (10 * max(groups, 1)))
    spare = counts - floor
    remaining = budget - int(floor.sum())
    share = remaining * spare / max(int(spare.sum()), 1)
    extra = np.minimum(np.floor(share).astype(np.int64), spare)
    leftover = remaining - int(extra.sum())
    if leftover > 0:
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        for g in order:
            if leftover == 0:
                break
            if extra[g] < spare[g]:
                extra[g] += 1
                leftover -= 1
    return floor + extra


def draw_order(codes: np.ndarray, prio: np.ndarray) -> np.ndarray:
    """``[sample]`` row indices sorted by group, then priority (computed once per scatter)."""
    return np.lexsort((prio, codes))


def stratified(
    codes: np.ndarray, prio: np.ndarray, mask: np.ndarray | None, budget: int, order: np.ndarray | None = None
) -> np.ndarray:
    """Sorted row indices to draw: all rows in ``mask`` when they fit ``budget``, else a stratified sample.

    ``codes``: ``[sample]`` group (label) index per row; ``prio``: ``[sample]`` from :func:`priority`;
    ``mask``: ``[sample]`` bool (None = all rows); ``budget`` ≤ 0 means no limit; ``order``: the
    :func:`draw_order` of ``codes`` and ``prio`` when already known.
    """
    codes = np.asarray(codes)
    rows = np.arange(len(codes)) if mask is None else np.flatnonzero(mask)  # [sample]
    if budget <= 0 or len(rows) <= budget:
        return rows
    order = draw_order(codes, prio) if order is None else order
    if mask is not None:
        order = order[mask[order]]  # still by group, then priority
    counts = np.bincount(codes[rows], minlength=int(codes.max()) + 1)
    quota = allocate(counts, budget)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = [order[s : s + q] for s, q in zip(starts, quota) if q > 0]
    return np.sort(np.concatenate(keep)) if keep else rows[:0]


def view_update(relayout: Any, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The view after a plotly ``relayoutData`` event, or None when the event changed no axis range.

    Understands ``{"xaxis.range[0]": a, "xaxis.range[1]": b}`` (zoom, pan, scroll),
    ``{"xaxis.range": [x0, x1]}`` (``Plotly.relayout``) and ``{"xaxis.autorange": true}`` (double
    click, reset); axes the event does not mention keep their ``current`` range.
    """
    if not isinstance(relayout, dict):
        return None
    view = {axis: (current or FULL_VIEW).get(axis) for axis in ("x", "y")}
    changed = False
    for axis in ("x", "y"):
        key = f"{axis}axis"
        if relayout.get(f"{key}.autorange") is True:
            view[axis], changed = None, True
        bounds = relayout.get(f"{key}.range")
        if bounds is None and f"{key}.range[0]" in relayout and f"{key}.range[1]" in relayout:
            bounds = [relayout[f"{key}.range[0]"], relayout[f"{key}.range[1]"]]
        if bounds is not None:
            try:
                lo, hi = sorted(float(v) for v in bounds)
            except (TypeError, ValueError):
                continue
            if len(bounds) == 2 and math.isfinite(lo) and math.isfinite(hi):
                view[axis], changed = [lo, hi], True
    return view if changed else None


def in_view(coords: np.ndarray, view: dict[str, Any] | None) -> np.ndarray | None:
    """``[sample]`` bool: rows of ``coords`` (``[sample, 2]``) inside the view's ranges; None for the full view."""
    if not view or (view.get("x") is None and view.get("y") is None):
        return None
    mask = np.ones(len(coords), dtype=bool)
    for column, axis in enumerate(("x", "y")):
        bounds = view.get(axis)
        if bounds is not None:
            mask &= (coords[:, column] >= bounds[0]) & (coords[:, column] <= bounds[1])
    return mask


def density(
    coords: np.ndarray, mask: np.ndarray | None, view: dict[str, Any] | None, bins: tuple[int, int] = DENSITY_BINS
) -> dict[str, Any] | None:
    """A 2-D histogram of the points in view: ``{"z": [y bin][x bin] log1p(count) (None = empty), x0, dx, y0, dy,
    max_count, count}``; ``count`` is the number of points it holds."""
    points = coords if mask is None else coords[mask]  # [sample, 2]
    if len(points) == 0:
        return None
    bounds = []
    for column, axis in enumerate(("x", "y")):
        given = (view or {}).get(axis)
        lo, hi = given if given is not None else (float(points[:, column].min()), float(points[:, column].max()))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bounds.append((float(lo), float(hi)))
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=bins, range=bounds)  # [x bin, y bin]
    z = np.log1p(counts.T)  # [y bin, x bin]
    z_list = [[round(float(v), 2) if v > 0 else None for v in row] for row in z]
    dx = (bounds[0][1] - bounds[0][0]) / bins[0]
    dy = (bounds[1][1] - bounds[1][0]) / bins[1]
    return {
        "z": z_list,
        "x0": bounds[0][0] + dx / 2,
        "dx": dx,
        "y0": bounds[1][0] + dy / 2,
        "dy": dy,
        "max_count": int(counts.max()),
        "count": int(counts.sum()),
    }

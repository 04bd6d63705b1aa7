"""``/features``: the features of a trained sparse autoencoder, their top samples, labels and "send to editor".

Reads what ``latentlens sae RUN --site SITE`` wrote into ``RUN/analysis/sae/<site>/`` (through
:mod:`latentlens.analysis.sae_run`). Features are sorted by activation frequency or by alignment
(held-out F1 of their best-aligned attribute value); the chosen feature's top-activating samples are
drawn with its per-token activation over the image (image sites) or over the prompt's tokens (text
sites). "send to editor" exports the feature as a direction into ``analysis/directions/sae/<site>/``
(where ``latentlens sae`` puts the best-aligned ones) and opens it in /editor.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html

from dashboards import config, ids
from dashboards.data import clear_caches, open_run, token_labels
from dashboards.limits import bounded_choice, bounded_int, clean_state
from dashboards.ui import guarded, image_src, message, state_get
from latentlens.analysis.sae_run import (
    DIRECTIONS_FOLDER,
    load_sae_result,
    sae_sites,
    site_folder,
)

dash.register_page(__name__, path="/features", name="Features", title="latentlens · features", order=6)

TABLE_ROWS = 25
SORTS = ("frequency", "alignment")


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("SAE features"),
            html.P(
                "Features of a sparse autoencoder trained with `latentlens sae`: how often each fires, the label it "
                "matches best, and where in its top samples it fires.",
                className="ll-muted",
            ),
            html.Div(
                [
                    html.Div(
                        [html.Label("site"), dcc.Dropdown(id=ids.FEAT_SITE, clearable=False)],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [
                            html.Label("sort by"),
                            dcc.RadioItems(
                                id=ids.FEAT_SORT,
                                value="frequency",
                                inline=True,
                                options=[
                                    {"label": "activation frequency", "value": "frequency"},
                                    {"label": "alignment (F1)", "value": "alignment"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("feature"), dcc.Dropdown(id=ids.FEAT_SELECT, clearable=False)],
                        className="ll-control ll-wide",
                    ),
                    html.Button("send to editor →", id=ids.FEAT_SEND, n_clicks=0, className="ll-button"),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.FEAT_MESSAGE),
            html.Div(id=ids.FEAT_SUMMARY, className="ll-muted"),
            html.Div(
                [html.Div(id=ids.FEAT_TABLE, className="ll-half"), html.Div(id=ids.FEAT_DETAIL, className="ll-half")],
                className="ll-row",
            ),
        ]
    )


@functools.lru_cache(maxsize=8)
def _load(path: str, site: str, stamp: float) -> dict[str, Any]:
    return load_sae_result(path, site)


def _result(run_id: str, site: Any) -> dict[str, Any]:
    """The SAE results at ``site``: one of the run's trained sites, checked before any path is formed."""
    path = config.index().path(run_id)
    site = bounded_choice(site, "The SAE site", sae_sites(path))
    summary = site_folder(path, site) / "summary.json"
    stamp = summary.stat().st_mtime if summary.is_file() else 0.0
    return _load(str(path), site, stamp)


def _order(arrays: dict[str, np.ndarray], sort: str) -> np.ndarray:
    frequency = arrays["frequency"].astype(np.float64)
    if sort == "alignment" and "best_f1" in arrays:
        return np.lexsort((-frequency, -arrays["best_f1"].astype(np.float64)))
    return np.argsort(-frequency, kind="stable")


def _label(arrays: dict[str, np.ndarray], f: int) -> tuple[str, float | None]:
    if "best_value" not in arrays:
        return "", None
    return str(arrays["values"][int(arrays["best_value"][f])]), float(arrays["best_f1"][f])


@callback(
    Output(ids.FEAT_SITE, "options"),
    Output(ids.FEAT_SITE, "value"),
    Output(ids.FEAT_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(3, 2)
def _sites(state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return [], None, message("Choose a run in the picker at the top.", "info")
    path = config.index().path(run_id)
    sites = sae_sites(path)
    if not sites:
        return (
            [],
            None,
            message(
                f"The run {run_id!r} has no trained SAE yet. Train one with `latentlens sae {path} --site SITE`.",
                "warning",
            ),
        )
    return [{"label": s, "value": s} for s in sites], sites[0], None


@callback(
    Output(ids.FEAT_SELECT, "options"),
    Output(ids.FEAT_SELECT, "value"),
    Output(ids.FEAT_TABLE, "children"),
    Output(ids.FEAT_SUMMARY, "children"),
    Output(ids.FEAT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.FEAT_SITE, "value"),
    Input(ids.FEAT_SORT, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(5, 4)
def _features(site: Any, sort: Any, state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id or not site:
        return [], None, None, None, None
    loaded = _result(run_id, site)
    arrays, summary = loaded["arrays"], loaded["summary"]
    order = _order(arrays, bounded_choice(sort or "frequency", "sort by", SORTS))
    options, rows = [], []
    for rank, f in enumerate(order):
        label, f1 = _label(arrays, int(f))
        text = f"f{int(f):04d} · fires on {float(arrays['frequency'][f]):.2%} of rows"
        if label:
            text += f" · {label} F1 {f1:.2f}"
        options.append({"label": text, "value": int(f)})
        if rank < TABLE_ROWS:
            rows.append(
                html.Tr(
                    [
                        html.Td(f"f{int(f):04d}"),
                        html.Td(f"{float(arrays['frequency'][f]):.2%}"),
                        html.Td(label),
                        html.Td("" if f1 is None else f"{f1:.3f}"),
                    ]
                )
            )
    header = html.Tr([html.Th(h) for h in ("feature", "frequency", "best-aligned label", "held-out F1")])
    table = html.Table([html.Thead(header), html.Tbody(rows)], className="ll-table")
    aligned = summary.get("alignment_summary") or {}
    text = (
        f"{summary['n_features']} features, k = {summary['k']}, steps {', '.join(map(str, summary['steps']))} · "
        f"held-out FVU {summary['fvu']:.3f} · dead {summary['dead_fraction']:.1%} · mean L0 {summary['l0']:.2f}"
    )
    if aligned:
        text += (
            f" · {aligned.get('f1_at_least_0.9')} of {aligned.get('values')} label values have a feature with F1 ≥ 0.9"
        )
    return options, int(order[0]) if len(order) else None, table, text, None


def _token_view(run: Any, run_id: str, site: str, sample: int, values: np.ndarray, peak: float) -> html.Div:
    """The sample's image with the feature's activation per patch over it, or its prompt's tokens shaded."""
    tokens = len(values)
    side = int(round(math.sqrt(tokens)))
    alpha = np.clip(values / peak, 0.0, 1.0) if peak > 0 else np.zeros(tokens)
    if site.endswith(".img") and side * side == tokens:
        cells = [html.Div(className="ll-token-cell", style={"opacity": f"{0.75 * a:.3f}"}) for a in alpha]
        grid = html.Div(
            cells,
            className="ll-token-grid",
            style={"gridTemplateColumns": f"repeat({side}, 1fr)", "gridTemplateRows": f"repeat({side}, 1fr)"},
        )
        return html.Div(
            [html.Img(src=image_src(run_id, sample), alt=f"sample {sample}"), grid], className="ll-token-overlay"
        )
    words = token_labels(run, sample, tokens)
    return html.Div(
        [html.Span(w, style={"background": f"rgba(255, 0, 200, {0.75 * a:.3f})"}) for w, a in zip(words, alpha)],
        className="ll-token-strip",
    )


@callback(
    Output(ids.FEAT_DETAIL, "children"),
    Output(ids.FEAT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.FEAT_SELECT, "value"),
    State(ids.FEAT_SITE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(2, 1)
def _detail(feature: Any, site: Any, state: Any) -> tuple[Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not site or feature is None:
        return None, None
    arrays = _result(run_id, site)["arrays"]
    feature = bounded_int(feature, "The feature", 0, len(arrays["frequency"]) - 1)
    run = open_run(config.index(), run_id)
    label, f1 = _label(arrays, feature)
    top = arrays["top_samples"][feature]  # [rank] sample ids
    tokens = arrays["top_tokens"][feature].astype(np.float32)  # [rank, token]
    peak = float(tokens.max()) if tokens.size else 0.0
    position = {int(s): j for j, s in enumerate(arrays["sample"])}
    figures = []
    for rank, (sample, values) in enumerate(zip(top, tokens)):
        score = float(arrays["sample_max"][position[int(sample)], feature])
        figures.append(
            html.Figure(
                [
                    _token_view(run, run_id, site, int(sample), values, peak),
                    html.Figcaption(f"sample {int(sample)} · max {score:.2f}"),
                ],
                className="ll-feature-sample",
                id=f"features-top-{rank}",
            )
        )
    heading = f"f{feature:04d}" + (
        f" · best-aligned label: {label} (held-out F1 {f1:.3f})" if label else " · no labels"
    )
    return html.Div(
        [
            html.H3(heading, id="features-label"),
            html.Div(
                "top-activating samples; shading = the feature's activation per token (max over the SAE's steps)",
                className="ll-muted",
            ),
            html.Div(figures, className="ll-feature-samples"),
        ]
    ), None


@callback(
    Output(ids.STATE, "data", allow_duplicate=True),
    Output(ids.URL, "href", allow_duplicate=True),
    Output(ids.FEAT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.FEAT_SEND, "n_clicks"),
    State(ids.FEAT_SELECT, "value"),
    State(ids.FEAT_SITE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _send(n_clicks: Any, feature: Any, site: Any, state: Any) -> tuple[Any, Any, Any]:
    import latentlens

    if not n_clicks or feature is None or not site:
        raise dash.exceptions.PreventUpdate
    run_id = state_get(state, "run")
    path = config.index().path(run_id)
    arrays = _result(run_id, site)["arrays"]  # checks the site before it names a file
    feature = bounded_int(feature, "The feature", 0, len(arrays["frequency"]) - 1)
    name = f"{DIRECTIONS_FOLDER}/{site}/f{feature:04d}"
    target = Path(path) / "analysis" / "directions" / name
    if not target.with_suffix(".json").is_file():  # not one of the best-aligned features: export it now
        sae = latentlens.SparseAutoencoder.load(site_folder(path, site) / "sae")
        steps = (sae.provenance_ or {}).get("steps")
        label, f1 = _label(arrays, feature)
        extra = {"attribute": label.split("=")[0], "to": label.split("=")[1], "f1": f1} if label else {}
        sae.feature_direction(feature, site=site, steps=steps, **extra).save(target)
        clear_caches()  # the editor's direction list is cached per analysis folder
    state = clean_state(state)
    state["direction"] = name
    return state, "/editor", None

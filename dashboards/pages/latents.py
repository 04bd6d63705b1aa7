"""``/latents``: PCA / UMAP scatter (WebGL) of one (site, step) cell, coloured by label; hover shows the image.

Big cells are drawn with a level of detail (:mod:`dashboards.lod`): at most a budget of points
(a stratified sample) over a density layer of all of them; a zoom or pan asks the server for the
points inside the new view.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, clientside_callback, dcc, html, no_update

from latentlens.errors import LatentlensError

from dashboards import config, ids, lod
from dashboards.lod import Cell
from dashboards.data import (
    DashboardError,
    stamp,
    activation_sites,
    manifest_labels,
    open_run,
    pca,
    recorded_steps,
    results,
    run_manifest,
)
from dashboards.limits import bounded_choice, bounded_int, plot_points
from dashboards.ui import empty_figure, guarded, image_src, label_colours, message, state_get, typed_array

dash.register_page(__name__, path="/latents", name="Latents", title="latentlens · latents", order=2)

MAX_THUMBNAILS = 24


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Latents", id=ids.LAT_TITLE),
            html.Div(
                [
                    html.Div(
                        [html.Label("site"), dcc.Dropdown(id=ids.LAT_SITE, clearable=False)],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [html.Label("step"), dcc.Slider(id=ids.LAT_STEP, min=0, max=1, step=None, value=0)],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [
                            html.Label("method"),
                            dcc.RadioItems(
                                id=ids.LAT_METHOD,
                                value="pca",
                                inline=True,
                                options=[{"label": "PCA", "value": "pca"}, {"label": "UMAP", "value": "umap"}],
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("colour by"), dcc.Dropdown(id=ids.LAT_COLOR, clearable=False)],
                        className="ll-control",
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.LAT_MESSAGE),
            dcc.Store(id=ids.LAT_VIEW, data=None),
            dcc.Store(id=ids.LAT_RELAYOUT, data=None),
            html.Div(
                [
                    dcc.Graph(
                        id=ids.LAT_SCATTER,
                        figure=empty_figure(),
                        className="ll-scatter",
                        config={"displaylogo": False, "scrollZoom": True},
                        clear_on_unhover=False,
                        responsive=False,
                    ),
                    html.Div(
                        id=ids.LAT_TOOLTIP,
                        className="ll-hover-panel",
                        children=html.P("Hover a point to see its image.", className="ll-muted"),
                    ),
                ],
                className="ll-row",
            ),
            html.Div(id=ids.LAT_SELECTION),
        ]
    )


@callback(
    Output(ids.LAT_SITE, "options"),
    Output(ids.LAT_SITE, "value"),
    Output(ids.LAT_STEP, "min"),
    Output(ids.LAT_STEP, "max"),
    Output(ids.LAT_STEP, "value"),
    Output(ids.LAT_STEP, "marks"),
    Output(ids.LAT_COLOR, "options"),
    Output(ids.LAT_COLOR, "value"),
    Output(ids.LAT_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(9, 8)
def _controls(state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return [], None, 0, 1, 0, {}, [], None, message("Choose a run in the picker at the top.", "info")
    run = open_run(config.index(), run_id)
    sites = activation_sites(run)
    if not sites:
        raise DashboardError(f"The run {run_id!r} recorded no activations (only {run.names}); record residual sites.")
    site = state_get(state, "site")
    step = state_get(state, "step")
    if site not in sites:  # no cell chosen yet: open the best probe cell when the run is analysed
        site, step = sites[0], None
        try:
            res = results(config.index(), run_id)
            best = res.best_cell(state_get(state, "attribute") or (res.attributes or [""])[0], "img")
            if best and best["site"] in sites:
                site, step = best["site"], int(best["step"])
        except LatentlensError:
            pass
    steps = recorded_steps(run, run[site].shape[1])  # denoising steps on the slider
    step = int(step) if isinstance(step, int) and step in steps else steps[-1]
    labels = sorted(manifest_labels(run))
    attribute = state_get(state, "attribute")
    colour = attribute if attribute in labels else (labels[0] if labels else "none")
    options = [{"label": a, "value": a} for a in labels] + [{"label": "none", "value": "none"}]
    marks = {s: str(s) for s in steps}
    return ([{"label": s, "value": s} for s in sites], site, steps[0], steps[-1], step, marks, options, colour, None)


def _budget() -> int:
    value = config.SETTINGS.get("scatter_budget")
    return lod.DEFAULT_BUDGET if value is None else max(int(value), 0)


METHODS = ("pca", "umap")


def cell(run_id: str, site: Any, step: Any, method: Any, colour: Any) -> Cell:
    """The cached :class:`dashboards.lod.Cell` of the scatter; ``method`` "umap" falls back to PCA with a note.

    Every argument is checked first (a client can post anything): ``site`` one of the run's
    activations, ``step`` one of its recorded steps, ``method`` and ``colour`` from the page's lists.
    """
    index = config.index()
    path = index.path(run_id)
    run = open_run(index, run_id)
    site = bounded_choice(site, "The site", activation_sites(run))
    step = bounded_choice(step, "The step", recorded_steps(run, run[site].shape[1]))
    method = bounded_choice(method, "The method", METHODS)
    colour = bounded_choice(colour, "colour by", [*sorted(manifest_labels(run)), "none"])
    return _cell_cached(str(path), stamp(path), run_id, site, int(step), method, colour)


@functools.lru_cache(maxsize=8)
def _cell_cached(path: str, stamp: float, run_id: str, site: str, step: int, method: str, colour: str) -> Cell:
    index = config.index()
    run = open_run(index, run_id)
    note = None
    if method == "umap":
        try:
            stored = results(index, run_id).embedding(site, step)
        except Exception as error:
            stored = None
            note = (
                f"No UMAP stored for {site} at step {step} ({error}); showing PCA. "
                f"`latentlens analyze` stores UMAP for the best cells."
            )
        if stored is not None and "umap" in stored:
            coords = np.asarray(stored["umap"], dtype=np.float32)  # [sample, 2]
            samples = np.asarray(stored.get("sample", np.arange(len(coords))), dtype=np.int64)
            axis = ("UMAP 1", "UMAP 2")
        else:
            method = "pca"
            if stored is not None:
                note = f"The stored embedding of {site} at step {step} has no UMAP; showing PCA."
    if method != "umap":
        samples, coords, explained = pca(index, run_id, site, step)
        axis = (f"PC1 ({explained[0]:.0%})", f"PC2 ({explained[1]:.0%})")
    all_labels = manifest_labels(run)
    if colour != "none" and colour in all_labels:
        values = np.asarray(all_labels[colour])[samples]
        names, codes = np.unique(values.astype(str), return_inverse=True)
        names = [str(v) for v in names]
    else:
        names, codes = ["all"], np.zeros(len(samples), dtype=np.int64)
    title = f"{site} · step {step} · {method.upper()} · {len(samples):,} samples"
    key = json.dumps([run_id, site, step, method, colour])
    codes = np.asarray(codes, dtype=np.int64)
    prio = lod.priority(samples)
    return Cell(
        key,
        title,
        np.ascontiguousarray(coords, dtype=np.float32),
        samples,
        codes,
        names,
        prio,
        lod.draw_order(codes, prio),
        axis,
        note,
    )


def scatter_figure(c: Cell, view: dict[str, Any] | None = None, budget: int | None = None) -> dict[str, Any]:
    """The scatter of ``c`` in ``view``: at most ``budget`` points (one ``scattergl`` trace per label,
    ``customdata`` = sample ids) over a density layer of all the points in view when some are left out."""
    budget = _budget() if budget is None else budget
    mask = lod.in_view(c.coords, view)
    rows = lod.stratified(c.codes, c.prio, mask, budget, order=c.order)  # [shown]
    in_view = len(c.samples) if mask is None else int(mask.sum())
    zoomed = mask is not None
    traces: list[dict[str, Any]] = []
    if len(rows) < in_view:
        grid = lod.density(c.coords, mask, view)
        if grid is not None:
            traces.append(
                {
                    "type": "heatmap",
                    "uid": "density",
                    "name": "density",
                    "z": grid["z"],
                    "x0": grid["x0"],
                    "dx": grid["dx"],
                    "y0": grid["y0"],
                    "dy": grid["dy"],
                    "colorscale": [[0, "rgba(60,60,60,0.06)"], [1, "rgba(60,60,60,0.45)"]],
                    "showscale": False,
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "zsmooth": "fast",
                }
            )
    marker_size = 6 if len(rows) <= 5000 else 4
    colours = label_colours(c.names)
    shown_codes = c.codes[rows]
    for k, name in enumerate(c.names):
        r = rows[shown_codes == k]
        traces.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "name": name or "(none)",
                "uid": f"label-{k}",
                "x": typed_array(c.coords[r, 0]),
                "y": typed_array(c.coords[r, 1]),
                # A plain list: dcc.Graph copies hover/click/selection customdata from the figure's own
                # data, where a typed array would arrive as undefined.
                "customdata": c.samples[r].tolist(),
                "marker": {"size": marker_size, "color": colours[name], "opacity": 0.8},
                "hovertemplate": "sample %{customdata}<br>" + name + "<extra></extra>",
            }
        )
    if len(rows) < in_view:
        where = " in view" if zoomed else ""
        detail = (
            f"showing {len(rows):,} of {in_view:,} points{where} (a sample of each label; shading = all points)"
            f" · zoom in to see every point"
        )
    elif zoomed:
        detail = f"zoomed in: all {in_view:,} points in view"
    else:
        detail = ""
    title = c.title + (f"<br><sup>{detail}</sup>" if detail else "")
    axes = {}
    for axis, label in zip(("x", "y"), c.axis):
        bounds = (view or {}).get(axis)
        axes[f"{axis}axis"] = {
            "title": {"text": label},
            "zeroline": False,
            **({"range": list(bounds), "autorange": False} if bounds is not None else {"autorange": True}),
        }
    return {
        "data": traces,
        "layout": {
            "title": {"text": title},
            "dragmode": "lasso",
            "hovermode": "closest",
            "uirevision": c.key,
            "selectionrevision": json.dumps([c.key, view]),
            **axes,
            "height": 520,
            "margin": {"l": 50, "r": 10, "t": 60, "b": 50},
            "legend": {"itemsizing": "constant"},
            "meta": {
                "shown": int(len(rows)),
                "in_view": in_view,
                "total": int(len(c.samples)),
                "view": view or lod.FULL_VIEW,
            },
        },
    }


@callback(
    Output(ids.LAT_SCATTER, "figure"),
    Output(ids.LAT_MESSAGE, "children", allow_duplicate=True),
    Output(ids.LAT_VIEW, "data"),
    Input(ids.LAT_SITE, "value"),
    Input(ids.LAT_STEP, "value"),
    Input(ids.LAT_METHOD, "value"),
    Input(ids.LAT_COLOR, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 1)
def _scatter(site: Any, step: Any, method: Any, colour: Any, state: Any) -> tuple[Any, Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not site or step is None:
        return empty_figure(), no_update, None
    c = cell(run_id, site, step, method, colour or "none")
    note = message(c.note, "warning") if c.note else None
    return scatter_figure(c), note, {"key": c.key, **lod.FULL_VIEW}


# Only relayout events that move an axis reach the server. Plotly follows a zoom with an
# ``{"autosize": true}`` event; were that an input of the zoom callback, Dash would treat the zoom's
# response as outdated and drop it.
clientside_callback(
    """function (relayout) {
        const keep = {};
        for (const key in (relayout || {})) { if (/^[xy]axis\\.(range|autorange)/.test(key)) keep[key] = relayout[key]; }
        return Object.keys(keep).length ? keep : window.dash_clientside.no_update;
    }""",
    Output(ids.LAT_RELAYOUT, "data"),
    Input(ids.LAT_SCATTER, "relayoutData"),
    prevent_initial_call=True,
)


@callback(
    Output(ids.LAT_SCATTER, "figure", allow_duplicate=True),
    Output(ids.LAT_VIEW, "data", allow_duplicate=True),
    Output(ids.LAT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.LAT_RELAYOUT, "data"),
    State(ids.LAT_SITE, "value"),
    State(ids.LAT_STEP, "value"),
    State(ids.LAT_METHOD, "value"),
    State(ids.LAT_COLOR, "value"),
    State(ids.STATE, "data"),
    State(ids.LAT_VIEW, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _zoom(
    relayout: Any, site: Any, step: Any, method: Any, colour: Any, state: Any, current: Any
) -> tuple[Any, Any, Any]:
    """After a zoom or pan, send the points inside the new view (all of them once they fit the budget)."""
    run_id = state_get(state, "run")
    budget = _budget()
    if not run_id or not site or step is None or budget <= 0:
        raise dash.exceptions.PreventUpdate
    c = cell(run_id, site, step, method, colour or "none")
    if len(c.samples) <= budget:  # every point is drawn already; plotly zooms on its own
        raise dash.exceptions.PreventUpdate
    before = current if isinstance(current, dict) and current.get("key") == c.key else lod.FULL_VIEW
    view = lod.view_update(relayout, before)
    if view is None or all(view[a] == before.get(a) for a in ("x", "y")):
        raise dash.exceptions.PreventUpdate
    return scatter_figure(c, view, budget), {"key": c.key, **view}, no_update


def _sample_card(run: Any, run_id: str, sample: int) -> html.Div:
    labels = manifest_labels(run)
    prompts = run_manifest(run).get("prompts") or []
    text = prompts[sample] if 0 <= sample < len(prompts) else ""
    tags = ", ".join(f"{k}={v[sample]}" for k, v in labels.items() if sample < len(v))
    return html.Div(
        [
            html.Img(src=image_src(run_id, sample), className="ll-hover-image", alt=f"sample {sample}"),
            html.Div(f"sample {sample}", className="ll-strong"),
            html.Div(text),
            html.Div(tags, className="ll-muted"),
        ]
    )


@callback(
    Output(ids.LAT_TOOLTIP, "children"),
    Input(ids.LAT_SCATTER, "hoverData"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(1, 0)
def _hover(hover: Any, state: Any) -> Any:
    points = plot_points(hover, "The hover event")
    run_id = state_get(state, "run")
    if not points or not run_id or points[0].get("customdata") is None:
        raise dash.exceptions.PreventUpdate
    run = open_run(config.index(), run_id)
    sample = bounded_int(points[0]["customdata"], "The hovered sample", 0, _samples(run) - 1)
    return _sample_card(run, run_id, sample)


def _samples(run: Any) -> int:
    """How many samples the run has room for (finished or not)."""
    return max(len(run_manifest(run).get("prompts") or []), 1)


@callback(
    Output(ids.LAT_SELECTION, "children"),
    Output(ids.SAMPLE, "data"),
    Input(ids.LAT_SCATTER, "selectedData"),
    Input(ids.LAT_SCATTER, "clickData"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(2, 0)
def _select(selected: Any, click: Any, state: Any) -> tuple[Any, Any]:
    trigger = dash.ctx.triggered_id
    run_id = state_get(state, "run")
    source = (
        selected
        if trigger == ids.LAT_SCATTER and dash.ctx.triggered_prop_ids.get(f"{ids.LAT_SCATTER}.selectedData")
        else click
    )
    points = plot_points(source, "The selection")
    samples = []
    if points and run_id:
        last = _samples(open_run(config.index(), run_id)) - 1
        samples = [
            bounded_int(p["customdata"], "A selected sample", 0, last)
            for p in points
            if p.get("customdata") is not None
        ]
    if not samples or not run_id:
        return html.P(
            "Select points with the lasso or box tool (or click one) to list them here.", className="ll-muted"
        ), no_update
    thumbs = [
        html.Img(src=image_src(run_id, s), title=f"sample {s}", className="ll-thumb") for s in samples[:MAX_THUMBNAILS]
    ]
    more = f" (showing {MAX_THUMBNAILS})" if len(samples) > MAX_THUMBNAILS else ""
    new_state = {"run": run_id, "sample": samples[0]}
    return html.Div(
        [
            html.Div(
                f"{len(samples)} selected{more}; sample {samples[0]} is now the editor's source.", className="ll-strong"
            ),
            html.Div(thumbs, className="ll-thumbs"),
        ]
    ), new_state

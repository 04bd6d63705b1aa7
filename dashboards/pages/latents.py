"""``/latents``: PCA / UMAP scatter (WebGL) of one (site, step) cell, coloured by label; hover shows the image."""

from __future__ import annotations

from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from latentlens.errors import LatentlensError

from dashboards import config, ids
from dashboards.data import run_manifest, DashboardError, activation_sites, manifest_labels, open_run, pca, recorded_steps, results
from dashboards.ui import empty_figure, guarded, image_src, label_colours, message, state_get, typed_array

dash.register_page(__name__, path="/latents", name="Latents", title="latentlens · latents", order=2)

MAX_THUMBNAILS = 24


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Latents", id=ids.LAT_TITLE),
            html.Div(
                [
                    html.Div([html.Label("site"), dcc.Dropdown(id=ids.LAT_SITE, clearable=False)], className="ll-control ll-wide"),
                    html.Div([html.Label("step"), dcc.Slider(id=ids.LAT_STEP, min=0, max=1, step=None, value=0)], className="ll-control ll-wide"),
                    html.Div([html.Label("method"), dcc.RadioItems(
                        id=ids.LAT_METHOD, value="pca", inline=True,
                        options=[{"label": "PCA", "value": "pca"}, {"label": "UMAP", "value": "umap"}])], className="ll-control"),
                    html.Div([html.Label("colour by"), dcc.Dropdown(id=ids.LAT_COLOR, clearable=False)], className="ll-control"),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.LAT_MESSAGE),
            html.Div(
                [
                    dcc.Graph(id=ids.LAT_SCATTER, figure=empty_figure(), className="ll-scatter",
                              config={"displaylogo": False}, clear_on_unhover=False),
                    html.Div(id=ids.LAT_TOOLTIP, className="ll-hover-panel",
                             children=html.P("Hover a point to see its image.", className="ll-muted")),
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


def scatter_figure(coords: np.ndarray, samples: np.ndarray, labels: np.ndarray | None, title: str,
                   axis: tuple[str, str]) -> dict[str, Any]:
    """One ``scattergl`` trace per label value; ``customdata`` holds sample ids."""
    traces = []
    groups = [("all", np.arange(len(samples)))] if labels is None else [
        (str(v), np.flatnonzero(labels == v)) for v in sorted(set(labels.tolist()))
    ]
    marker_size = 6 if len(samples) <= 5000 else 3
    colours = label_colours([name for name, _ in groups])
    for k, (name, rows) in enumerate(groups):
        traces.append({
            "type": "scattergl", "mode": "markers", "name": name or "(none)",
            "x": typed_array(coords[rows, 0]), "y": typed_array(coords[rows, 1]),
            # A plain list: dcc.Graph copies hover/click/selection customdata from the figure's own
            # data, where a typed array would arrive as undefined.
            "customdata": samples[rows].tolist(),
            "marker": {"size": marker_size, "color": colours[name], "opacity": 0.8},
            "hovertemplate": "sample %{customdata}<br>" + name + "<extra></extra>",
        })
    return {
        "data": traces,
        "layout": {
            "title": {"text": title}, "dragmode": "lasso", "hovermode": "closest", "uirevision": title,
            "xaxis": {"title": {"text": axis[0]}, "zeroline": False}, "yaxis": {"title": {"text": axis[1]}, "zeroline": False},
            "height": 520, "margin": {"l": 50, "r": 10, "t": 50, "b": 50}, "legend": {"itemsizing": "constant"},
        },
    }


@callback(
    Output(ids.LAT_SCATTER, "figure"),
    Output(ids.LAT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.LAT_SITE, "value"),
    Input(ids.LAT_STEP, "value"),
    Input(ids.LAT_METHOD, "value"),
    Input(ids.LAT_COLOR, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(2, 1)
def _scatter(site: Any, step: Any, method: Any, colour: Any, state: Any) -> tuple[Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not site or step is None:
        return empty_figure(), no_update
    index = config.index()
    run = open_run(index, run_id)
    note = None
    if method == "umap":
        try:
            stored = results(index, run_id).embedding(site, int(step))
        except Exception as error:  # noqa: BLE001 - fall back to PCA with a note
            stored = None
            note = message(f"No UMAP stored for {site} at step {step} ({error}); showing PCA. "
                           f"`latentlens analyze` stores UMAP for the best cells.", "warning")
        if stored is not None and "umap" in stored:
            coords = np.asarray(stored["umap"], dtype=np.float32)
            samples = np.asarray(stored.get("sample", np.arange(len(coords))), dtype=np.int64)
            axis = ("UMAP 1", "UMAP 2")
        else:
            method = "pca"
            if stored is not None:
                note = message(f"The stored embedding of {site} at step {step} has no UMAP; showing PCA.", "warning")
    if method != "umap":
        samples, coords, explained = pca(index, run_id, site, int(step))
        axis = (f"PC1 ({explained[0]:.0%})", f"PC2 ({explained[1]:.0%})")
    all_labels = manifest_labels(run)
    labels = None
    if colour and colour != "none" and colour in all_labels:
        labels = np.asarray(all_labels[colour])[samples]
    title = f"{site} · step {step} · {method.upper()} · {len(samples)} samples"
    return scatter_figure(coords, samples, labels, title, axis), note


def _sample_card(run: Any, run_id: str, sample: int) -> html.Div:
    labels = manifest_labels(run)
    prompts = run_manifest(run).get("prompts") or []
    text = prompts[sample] if 0 <= sample < len(prompts) else ""
    tags = ", ".join(f"{k}={v[sample]}" for k, v in labels.items() if sample < len(v))
    return html.Div([
        html.Img(src=image_src(run_id, sample), className="ll-hover-image", alt=f"sample {sample}"),
        html.Div(f"sample {sample}", className="ll-strong"), html.Div(text), html.Div(tags, className="ll-muted"),
    ])


@callback(Output(ids.LAT_TOOLTIP, "children"), Input(ids.LAT_SCATTER, "hoverData"), State(ids.STATE, "data"),
          prevent_initial_call=True)
@guarded(1, 0)
def _hover(hover: Any, state: Any) -> Any:
    points = (hover or {}).get("points") or []
    run_id = state_get(state, "run")
    if not points or not run_id or points[0].get("customdata") is None:
        raise dash.exceptions.PreventUpdate
    sample = int(points[0]["customdata"])
    return _sample_card(open_run(config.index(), run_id), run_id, sample)


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
    source = selected if trigger == ids.LAT_SCATTER and dash.ctx.triggered_prop_ids.get(f"{ids.LAT_SCATTER}.selectedData") else click
    points = (source or {}).get("points") or []
    samples = [int(p["customdata"]) for p in points if p.get("customdata") is not None]
    if not samples or not run_id:
        return html.P("Select points with the lasso or box tool (or click one) to list them here.", className="ll-muted"), no_update
    thumbs = [html.Img(src=image_src(run_id, s), title=f"sample {s}", className="ll-thumb") for s in samples[:MAX_THUMBNAILS]]
    more = f" (showing {MAX_THUMBNAILS})" if len(samples) > MAX_THUMBNAILS else ""
    new_state = {"run": run_id, "sample": samples[0]}
    return html.Div([html.Div(f"{len(samples)} selected{more}; sample {samples[0]} is now the editor's source.",
                              className="ll-strong"), html.Div(thumbs, className="ll-thumbs")]), new_state

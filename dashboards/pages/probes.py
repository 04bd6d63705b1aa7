"""``/probes``: block × step probe accuracy per attribute and stream; a click opens the cell in /latents."""

from __future__ import annotations

import math
from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from latentlens.errors import LatentlensError

from dashboards import config, ids
from dashboards.data import results
from dashboards.limits import bounded_choice, clean_state, plot_points
from dashboards.ui import empty_figure, guarded, log, message, state_get

dash.register_page(__name__, path="/probes", name="Probes", title="latentlens · probes", order=1)

METRICS = ("accuracy", "selectivity")


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Probe grids"),
            html.P(
                "Held-out accuracy of a linear probe per block and denoising step. Click a cell to see its latents.",
                className="ll-muted",
            ),
            html.Div(
                [
                    html.Div(
                        [html.Label("attribute"), dcc.Dropdown(id=ids.PROBE_ATTRIBUTE, clearable=False)],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("stream"), dcc.RadioItems(id=ids.PROBE_STREAM, inline=True)], className="ll-control"
                    ),
                    html.Div(
                        [
                            html.Label("value"),
                            dcc.RadioItems(
                                id=ids.PROBE_METRIC,
                                value="accuracy",
                                inline=True,
                                options=[
                                    {"label": "accuracy", "value": "accuracy"},
                                    {"label": "selectivity", "value": "selectivity"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.PROBE_MESSAGE),
            dcc.Graph(id=ids.PROBE_HEATMAP, figure=empty_figure(), config={"displayModeBar": False}),
            html.Div(id=ids.PROBE_BEST, className="ll-muted"),
        ]
    )


@callback(
    Output(ids.PROBE_ATTRIBUTE, "options"),
    Output(ids.PROBE_ATTRIBUTE, "value"),
    Output(ids.PROBE_STREAM, "options"),
    Output(ids.PROBE_STREAM, "value"),
    Output(ids.PROBE_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(5, 4)
def _controls(state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return [], None, [], None, message("Choose a run in the picker at the top.", "info")
    try:
        res = results(config.index(), run_id)
    except LatentlensError as error:  # no analysis yet: clear the controls and say what to run
        return [], None, [], None, message(str(error), "warning")
    if not res.probes:
        return (
            [],
            None,
            [],
            None,
            message(
                f"The run {run_id!r} has no probe results (missing: {', '.join(res.missing)}). "
                f"Run `latentlens analyze {res.run}` to compute them.",
                "warning",
            ),
        )
    attributes, streams = res.attributes, res.streams
    attribute = state_get(state, "attribute")
    attribute = attribute if attribute in attributes else attributes[0]
    stream = state_get(state, "stream")
    stream = stream if stream in streams else ("img" if "img" in streams else streams[0])
    return (
        [{"label": a, "value": a} for a in attributes],
        attribute,
        [{"label": s, "value": s} for s in streams],
        stream,
        None,
    )


@callback(
    Output(ids.PROBE_HEATMAP, "figure"),
    Output(ids.PROBE_BEST, "children"),
    Output(ids.PROBE_MESSAGE, "children", allow_duplicate=True),
    Input(ids.PROBE_ATTRIBUTE, "value"),
    Input(ids.PROBE_STREAM, "value"),
    Input(ids.PROBE_METRIC, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _heatmap(attribute: Any, stream: Any, metric: Any, state: Any) -> tuple[Any, Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not attribute or not stream:
        return empty_figure(), None, no_update
    res = results(config.index(), run_id)
    attribute = bounded_choice(attribute, "The attribute", res.attributes)
    stream = bounded_choice(stream, "The stream", res.streams)
    metric = bounded_choice(metric or "accuracy", "The value", METRICS)
    blocks, steps, table, sites = res.probe_grid(attribute, stream, metric)
    text = [[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in table]
    chance = None
    classes = res.classes.get(attribute)
    if classes:
        chance = 1.0 / len(classes)
    z = np.where(np.isnan(table), None, table).tolist()
    figure = {
        "data": [
            {
                "type": "heatmap",
                "z": z,
                "x": [str(s) for s in steps],
                "y": [str(b) for b in blocks],
                "customdata": sites,
                "text": text,
                "texttemplate": "%{text}",
                "colorscale": "Viridis",
                "zmin": 0.0 if metric == "accuracy" else None,
                "zmax": 1.0 if metric == "accuracy" else None,
                "hovertemplate": "block %{y}, step %{x}<br>"
                + (metric or "accuracy")
                + " %{z:.3f}<br>%{customdata}<extra></extra>",
                "xgap": 1,
                "ygap": 1,
            }
        ],
        "layout": {
            "title": {
                "text": f"{attribute} · {stream} stream · {metric}" + (f" (chance {chance:.2f})" if chance else "")
            },
            "xaxis": {"title": {"text": "denoising step"}, "type": "category"},
            "yaxis": {"title": {"text": "block"}, "type": "category", "autorange": "reversed"},
            "height": max(260, 40 * len(blocks) + 120),
            "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        },
    }
    best = res.best_cell(attribute, stream)
    note = (
        f"best cell: {best['site']} at step {best['step']} — accuracy {float(best['accuracy']):.3f}" if best else None
    )
    return figure, note, None


@callback(
    Output(ids.STATE, "data", allow_duplicate=True),
    Output(ids.URL, "href", allow_duplicate=True),
    Input(ids.PROBE_HEATMAP, "clickData"),
    State(ids.PROBE_ATTRIBUTE, "value"),
    State(ids.PROBE_STREAM, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
def _open_cell(click: Any, attribute: Any, stream: Any, state: Any) -> tuple[Any, Any]:
    """A click on a cell opens it in /latents; a click the grid did not draw is ignored (and logged)."""
    try:
        points = plot_points(click, "The click")
        if not points or not points[0].get("customdata"):
            raise dash.exceptions.PreventUpdate
        point = points[0]
        run_id = state_get(state, "run")
        res = results(config.index(), run_id)
        attribute = bounded_choice(attribute, "The attribute", res.attributes)
        stream = bounded_choice(stream, "The stream", res.streams)
        _, steps, _, sites = res.probe_grid(attribute, stream)
        site = bounded_choice(point["customdata"], "The cell's site", sorted({s for row in sites for s in row if s}))
        step = bounded_choice(_whole(point.get("x")), "The cell's step", steps)
    except LatentlensError as error:
        log.warning("ignored a probe-grid click: %s", error)
        raise dash.exceptions.PreventUpdate from None
    state = clean_state(state)
    state.update(site=site, step=step, attribute=attribute, stream=stream)
    return state, "/latents"


def _whole(value: Any) -> Any:
    """A category axis sends its ticks as text: ``"5"`` → 5 (anything else is left for the check)."""
    return int(value) if isinstance(value, str) and value.isdigit() and len(value) < 10 else value

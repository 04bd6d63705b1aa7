"""``/directions``: found directions with provenance, their cosine matrix per site and stream, projection
histograms, send to editor."""

from __future__ import annotations

import json
import re
from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from latentlens.errors import LatentlensError

from dashboards import config, ids
from dashboards.data import DashboardError, directions, features, manifest_labels, open_run, recorded_steps, results
from dashboards.limits import bounded_choice, clean_state
from dashboards.ui import empty_figure, guarded, label_colours, log, message, state_get, typed_array

dash.register_page(__name__, path="/directions", name="Directions", title="latentlens · directions", order=4)


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Directions"),
            html.Div(id=ids.DIR_MESSAGE),
            html.Div(id=ids.DIR_TABLE),
            html.Div(
                [
                    html.Div(
                        [html.Label("direction"), dcc.Dropdown(id=ids.DIR_SELECT, clearable=False)],
                        className="ll-control ll-wide",
                    ),
                    html.Button("send to editor →", id=ids.DIR_SEND, n_clicks=0, className="ll-button"),
                ],
                className="ll-controls",
            ),
            html.Pre(id=ids.DIR_PROVENANCE, className="ll-pre"),
            html.Div(
                [
                    dcc.Graph(
                        id=ids.DIR_HIST, figure=empty_figure(), config={"displayModeBar": False}, className="ll-half"
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Label("cosine matrix at", htmlFor=ids.DIR_COSINE_SITE),
                                    dcc.Dropdown(id=ids.DIR_COSINE_SITE, clearable=False),
                                ],
                                className="ll-control",
                            ),
                            html.Div(  # a large group's matrix is wider than the column: it scrolls
                                dcc.Graph(id=ids.DIR_COSINE, figure=empty_figure(), config={"displayModeBar": False}),
                                className="ll-scroll-x",
                            ),
                        ],
                        className="ll-half",
                    ),
                ],
                className="ll-row",
            ),
        ]
    )


@callback(
    Output(ids.DIR_TABLE, "children"),
    Output(ids.DIR_SELECT, "options"),
    Output(ids.DIR_SELECT, "value"),
    Output(ids.DIR_COSINE_SITE, "options"),
    Output(ids.DIR_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(5, 4)
def _list(state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return None, [], None, [], message("Choose a run in the picker at the top.", "info")
    res = results(config.index(), run_id)
    if not res.direction_names:
        return (
            None,
            [],
            None,
            [],
            message(
                f"The run {run_id!r} has no saved directions yet. `latentlens analyze {res.run}` saves one per "
                "attribute value into analysis/directions/.",
                "warning",
            ),
        )
    loaded, problems = directions(config.index(), run_id)
    rows = []
    for name, d in loaded.items():
        p = d.provenance
        rows.append(
            html.Tr(
                [
                    html.Td(name),
                    html.Td(d.site),
                    html.Td(d.dim),
                    html.Td("all" if d.steps is None else ", ".join(map(str, d.steps[:6]))),
                    html.Td(p.get("method", "?")),
                    html.Td(p.get("attribute", "")),
                    html.Td(f"{p.get('from') or ('the rest' if p.get('to') else '·')} → {p.get('to') or '·'}"),
                    html.Td(f"{float(p['accuracy']):.3f}" if isinstance(p.get("accuracy"), (int, float)) else ""),
                ]
            )
        )
    header = html.Tr(
        [html.Th(h) for h in ("name", "site", "dim", "steps", "method", "attribute", "from → to", "accuracy")]
    )
    table = html.Table([html.Thead(header), html.Tbody(rows)], className="ll-table")
    keys = list(loaded)
    chosen = state_get(state, "direction")
    chosen = chosen if isinstance(chosen, str) and chosen in loaded else (keys[0] if keys else None)
    groups = cosine_groups(loaded)
    options = [{"label": group_label(key, loaded[names[0]], len(names)), "value": key} for key, names in groups.items()]
    note = (
        message("Some directions cannot be read: " + "; ".join(f"{k}: {v}" for k, v in problems.items()), "error")
        if problems
        else None
    )
    return table, [{"label": k, "value": k} for k in keys], chosen, options, note


def cosine_groups(loaded: dict[str, Any]) -> dict[str, list[str]]:
    """``{group: [direction names]}`` in site order: the cosines are taken among directions of one site
    (which names its stream) and one shape, so token-wise ``[token, channel]`` directions form groups
    of their own (``SITE · token-wise ×24``), and a site holding vectors of two widths gets one group
    per width (``SITE · width 7``)."""
    by_shape: dict[tuple[str, int | None, int], list[str]] = {}
    for name, direction in loaded.items():
        by_shape.setdefault((direction.site, direction.token_rows, direction.dim), []).append(name)
    bases = [site if rows is None else f"{site} · token-wise ×{rows}" for site, rows, _ in by_shape]
    groups: dict[str, list[str]] = {}
    for base, ((_, _, dim), names) in zip(bases, by_shape.items()):
        groups[base if bases.count(base) == 1 else f"{base} · width {dim}"] = names
    return dict(sorted(groups.items(), key=lambda item: _natural(item[0])))


def group_of(loaded: dict[str, Any], name: str) -> str | None:
    """The cosine group holding direction ``name``."""
    return next((key for key, names in cosine_groups(loaded).items() if name in names), None)


def _natural(text: str) -> list[Any]:
    """``blocks.2…`` before ``blocks.10…``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


_STREAMS = {"img": "image stream", "txt": "text stream"}


def group_label(key: str, example: Any, count: int) -> str:
    """``blocks.2.resid_out.img · image stream · 20 directions``."""
    stream = _STREAMS.get(example.stream)
    return " · ".join([key, *([stream] if stream else []), f"{count} direction{'s' if count != 1 else ''}"])


@callback(
    Output(ids.DIR_COSINE_SITE, "value"),
    Input(ids.DIR_SELECT, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
def _follow(name: Any, state: Any) -> Any:
    """The cosine matrix opens at the group of the chosen direction."""
    run_id = state_get(state, "run")
    if not run_id or not isinstance(name, str):
        raise dash.exceptions.PreventUpdate
    try:
        loaded, _ = directions(config.index(), run_id)
    except LatentlensError:  # the list callback says what is wrong with the run
        raise dash.exceptions.PreventUpdate from None
    if name not in loaded:
        raise dash.exceptions.PreventUpdate
    return group_of(loaded, name)


ROW_PX = 22  # one matrix row (and column): room for one 11 px label
COLORBAR_PX = 110  # the colour bar and the right margin


@callback(
    Output(ids.DIR_COSINE, "figure"),
    Output(ids.DIR_COSINE, "style"),
    Output(ids.DIR_MESSAGE, "children", allow_duplicate=True),
    Input(ids.DIR_COSINE_SITE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _cosine(group: Any, state: Any) -> tuple[Any, Any, Any]:
    from latentlens import cosine_matrix

    run_id = state_get(state, "run")
    if not run_id or group is None:
        return empty_figure(), {}, no_update
    loaded, _ = directions(config.index(), run_id)
    groups = cosine_groups(loaded)
    group = bounded_choice(group, "The direction group", list(groups))
    names, matrix = cosine_matrix({name: loaded[name] for name in groups[group]})  # [direction, direction]
    example = loaded[names[0]]
    stream = _STREAMS.get(example.stream, "")
    longest = max(len(n) for n in names)
    margin = 12 + 7 * longest  # every label whole, at 11 px
    side = max(ROW_PX * len(names), 160)
    width = side + margin + COLORBAR_PX  # square cells: the columns get the room the rows get (the box scrolls)
    axis = {
        "tickmode": "array",
        "tickvals": names,
        "ticktext": names,
        "tickfont": {"size": 11},
        "type": "category",
        "automargin": True,
    }
    figure = {
        "data": [
            {
                "type": "heatmap",
                "z": np.where(np.isnan(matrix), None, matrix.round(3)).tolist(),
                "x": names,
                "y": names,
                "zmin": -1,
                "zmax": 1,
                "colorscale": "RdBu",
                "reversescale": True,
                "xgap": 1,
                "ygap": 1,
                "hovertemplate": "%{y} · %{x}: %{z:.3f}<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": f"cosine similarity · {group}" + (f" ({stream})" if stream else "")},
            "height": side + margin + 70,
            "width": width,
            "xaxis": {**axis, "tickangle": -60},
            "yaxis": {**axis, "autorange": "reversed"},
            "margin": {"l": margin, "r": 10, "t": 50, "b": margin},
        },
    }
    return figure, {"width": f"{width}px"}, no_update


@callback(
    Output(ids.DIR_HIST, "figure"),
    Output(ids.DIR_PROVENANCE, "children"),
    Output(ids.DIR_MESSAGE, "children", allow_duplicate=True),
    Input(ids.DIR_SELECT, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _histogram(name: Any, state: Any) -> tuple[Any, Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not name:
        return empty_figure(), "", no_update
    index = config.index()
    res = results(index, run_id)
    name = bounded_choice(name, "The direction", res.direction_names)
    direction = res.load_direction(name)
    provenance = json.dumps(
        {
            "site": direction.site,
            "dim": direction.dim,
            "steps": direction.steps,
            "tokens": direction.tokens,
            "provenance": direction.provenance,
        },
        indent=2,
        default=str,
    )
    run = open_run(index, run_id)
    if direction.site not in run.names:
        return (
            empty_figure(f"{direction.site} was not recorded in this run"),
            provenance,
            message(
                f"The direction {name!r} lives at {direction.site!r}, which this run did not record; no projection to show.",
                "warning",
            ),
        )
    steps = recorded_steps(run, run[direction.site].shape[1])  # denoising steps of the stored axis
    step = int(direction.steps[-1]) if direction.steps and int(direction.steps[-1]) in steps else steps[-1]
    x = features(index, run_id, direction.site, step)  # [sample, channel]
    if x.shape[1] != direction.dim:
        raise DashboardError(
            f"The direction {name!r} has width {direction.dim} but {direction.site!r} in this run has width {x.shape[1]}; "
            "it was found on another model and does not fit this one."
        )
    vector = direction.vector.numpy()
    if direction.token_rows is not None:  # token-wise [token, channel]: the features are token means
        vector = vector.mean(axis=0)
    unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
    keep = np.isfinite(x).all(axis=1)
    proj = x[keep] @ unit  # [sample]
    attribute = direction.provenance.get("attribute")
    labels = manifest_labels(run).get(attribute) if attribute else None
    traces = []
    if labels is not None:
        labels = np.asarray(labels)[keep]
        values = sorted(set(labels.tolist()))
        colours = label_colours(values)
        for value in values:
            rows = labels == value
            traces.append(
                {
                    "type": "histogram",
                    "x": typed_array(proj[rows]),
                    "name": str(value),
                    "opacity": 0.65,
                    "marker": {"color": colours[value]},
                    "nbinsx": 40,
                }
            )
    else:
        traces.append({"type": "histogram", "x": typed_array(proj), "name": "all", "nbinsx": 40})
    figure = {
        "data": traces,
        "layout": {
            "barmode": "overlay",
            "title": {"text": f"projection on {name} ({direction.site}, step {step})"},
            "xaxis": {"title": {"text": "⟨x, d/|d|⟩"}},
            "yaxis": {"title": {"text": "samples"}},
            "height": 460,
            "margin": {"l": 50, "r": 10, "t": 50, "b": 50},
        },
    }
    return figure, provenance, None


@callback(
    Output(ids.STATE, "data", allow_duplicate=True),
    Output(ids.URL, "href", allow_duplicate=True),
    Input(ids.DIR_SEND, "n_clicks"),
    State(ids.DIR_SELECT, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
def _send(n_clicks: Any, name: Any, state: Any) -> tuple[Any, Any]:
    if not n_clicks or not name or not isinstance(state, dict):
        raise dash.exceptions.PreventUpdate
    try:
        bounded_choice(name, "The direction", results(config.index(), state_get(state, "run")).direction_names)
    except LatentlensError as error:  # not a direction of the run: the editor is not opened with it
        log.warning("ignored 'send to editor': %s", error)
        raise dash.exceptions.PreventUpdate from None
    state = clean_state(state)
    state["direction"] = name
    return state, "/editor"

"""``/causal``: a patching grid beside the probe grid of its attribute (same block × step axes).

A probe cell says where an attribute can be *read*; a patching cell says where replacing the
activation with the source prompt's changes the image (``latentlens patch-grid --out RUN_DIR``).
A click on a patching cell shows its base / source / patched images.
"""

from __future__ import annotations

import math
from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from dashboards import config, ids
from dashboards.data import results
from dashboards.limits import bounded_choice, plot_points
from dashboards.ui import empty_figure, guarded, message, state_get
from latentlens.errors import LatentlensError

dash.register_page(__name__, path="/causal", name="Causal", title="latentlens · causal", order=2)

VALUES = ("effect", "oracle_flip")  # what a patching cell shows


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Causal grid: patching beside probing"),
            html.P(
                "Left: how far patching one site (block, stream) at one step — or at all steps — moves the base "
                "image toward the source image (1 = all the way). Right: where a linear probe reads the same "
                "attribute. Click a patching cell to see its images.",
                className="ll-muted",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("grid"),
                            dcc.Dropdown(id=ids.CAUSAL_GRID, clearable=False),
                        ],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [
                            html.Label("stream"),
                            dcc.RadioItems(id=ids.CAUSAL_STREAM, inline=True),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [
                            html.Label("patching value"),
                            dcc.RadioItems(
                                id=ids.CAUSAL_VALUE,
                                value="effect",
                                inline=True,
                                options=[
                                    {"label": "pixel effect", "value": "effect"},
                                    {
                                        "label": "oracle reads source",
                                        "value": "oracle_flip",
                                    },
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.CAUSAL_MESSAGE),
            html.Div(
                [
                    html.Div(
                        dcc.Graph(
                            id=ids.CAUSAL_PATCH,
                            figure=empty_figure(),
                            config={"displayModeBar": False},
                        )
                    ),
                    html.Div(
                        dcc.Graph(
                            id=ids.CAUSAL_PROBE,
                            figure=empty_figure(),
                            config={"displayModeBar": False},
                        )
                    ),
                ],
                className="ll-causal-pair",
            ),
            html.Div(id=ids.CAUSAL_IMAGES),
        ]
    )


def _heatmap(
    title: str,
    blocks: list[int],
    columns: list[Any],
    table: np.ndarray,
    sites: list[list[Any]],
    what: str,
    zmax: float | None = 1.0,
    zmin: float | None = 0.0,
) -> dict[str, Any]:
    text = [[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in table]
    return {
        "data": [
            {
                "type": "heatmap",
                "z": np.where(np.isnan(table), None, table).tolist(),
                "x": [str(c) for c in columns],
                "y": [str(b) for b in blocks],
                "customdata": sites,
                "text": text,
                "texttemplate": "%{text}",
                "colorscale": "Viridis",
                "zmin": zmin,
                "zmax": zmax,
                "xgap": 1,
                "ygap": 1,
                "hovertemplate": "block %{y}, step %{x}<br>" + what + " %{z:.3f}<br>%{customdata}<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": title},
            "xaxis": {
                "title": {"text": "denoising step"},
                "type": "category",
                "categoryorder": "array",
                "categoryarray": [str(c) for c in columns],
            },
            "yaxis": {
                "title": {"text": "block"},
                "type": "category",
                "autorange": "reversed",
            },
            "height": max(260, 40 * len(blocks) + 120),
            "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        },
    }


@callback(
    Output(ids.CAUSAL_GRID, "options"),
    Output(ids.CAUSAL_GRID, "value"),
    Output(ids.CAUSAL_STREAM, "options"),
    Output(ids.CAUSAL_STREAM, "value"),
    Output(ids.CAUSAL_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(5, 4)
def _controls(state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return (
            [],
            None,
            [],
            None,
            message("Choose a run in the picker at the top.", "info"),
        )
    try:
        res = results(config.index(), run_id)
    except LatentlensError as error:
        return [], None, [], None, message(str(error), "warning")
    names = res.patch_grid_names
    if not names:
        return (
            [],
            None,
            [],
            None,
            message(
                f"The run {run_id!r} has no patching grid yet. Compute one with `latentlens patch-grid --out {res.run} "
                "--attribute color --from red --to blue --n 16` (shapes world) or `--pairs PAIRS.jsonl`.",
                "warning",
            ),
        )
    grid = res.load_patch_grid(names[0])
    streams = grid.streams
    stream = state_get(state, "stream")
    stream = stream if stream in streams else ("img" if "img" in streams else streams[0])
    return (
        [{"label": n, "value": n} for n in names],
        names[0],
        [{"label": s, "value": s} for s in streams],
        stream,
        None,
    )


@callback(
    Output(ids.CAUSAL_PATCH, "figure"),
    Output(ids.CAUSAL_PROBE, "figure"),
    Output(ids.CAUSAL_MESSAGE, "children", allow_duplicate=True),
    Input(ids.CAUSAL_GRID, "value"),
    Input(ids.CAUSAL_STREAM, "value"),
    Input(ids.CAUSAL_VALUE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _grids(name: Any, stream: Any, value: Any, state: Any) -> tuple[Any, Any, Any]:
    run_id = state_get(state, "run")
    if not run_id or not name or not stream:
        return empty_figure(), empty_figure(), no_update
    res = results(config.index(), run_id)
    grid = res.load_patch_grid(bounded_choice(name, "The patching grid", res.patch_grid_names))
    stream = bounded_choice(stream, "The stream", grid.streams)
    value = bounded_choice(value or "effect", "The value", VALUES)
    blocks, columns, table, sites = grid.table(stream, value)
    if value == "oracle_flip" and np.isnan(table).all():
        return (
            empty_figure("these pairs name no attribute the oracle reads"),
            no_update,
            None,
        )
    what = "effect" if value == "effect" else "oracle reads source"
    lo = None if value == "effect" else 0.0
    label = grid.attribute or "patching"
    first = grid.pairs[0] if grid.pairs else None
    pair = f" ({first.base_value} → {first.source_value})" if first and first.base_value else ""
    patch_fig = _heatmap(
        f"patching · {label}{pair} · {stream} · {what} · n = {grid.n}",
        blocks,
        columns,
        table,
        sites,
        what,
        zmax=1.0,
        zmin=lo,
    )
    note = None
    probe_fig = empty_figure("no probe grid for this attribute")
    if grid.attribute and grid.attribute in res.attributes:
        try:
            pb, ps, acc, psites = res.probe_grid(grid.attribute, stream)
        except LatentlensError as error:
            note = message(str(error), "warning")
        else:
            # the patching grid's axes: its blocks and columns ("all" has no probe counterpart)
            aligned = np.full((len(blocks), len(columns)), np.nan)
            names: list[list[Any]] = [[None] * len(columns) for _ in blocks]
            for i, b in enumerate(blocks):
                for j, c in enumerate(columns):
                    if b in pb and c != "all" and c in ps:
                        aligned[i, j] = acc[pb.index(b), ps.index(c)]
                        names[i][j] = psites[pb.index(b)][ps.index(c)]
            probe_fig = _heatmap(
                f"probe accuracy · {grid.attribute} · {stream}",
                blocks,
                columns,
                aligned,
                names,
                "accuracy",
            )
    elif grid.attribute:
        note = message(
            f"The run has no probe results for {grid.attribute!r}; run `latentlens analyze {res.run}`.",
            "info",
        )
    return patch_fig, probe_fig, note


@callback(
    Output(ids.CAUSAL_IMAGES, "children"),
    Input(ids.CAUSAL_PATCH, "clickData"),
    State(ids.CAUSAL_GRID, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(1, 0)
def _cell_images(click: Any, name: Any, state: Any) -> Any:
    from dashboards.editing import png_data_uri

    points = plot_points(click, "The click")
    if not points or not points[0].get("customdata") or not name:
        raise dash.exceptions.PreventUpdate
    point = points[0]
    res = results(config.index(), state_get(state, "run"))
    grid = res.load_patch_grid(bounded_choice(name, "The patching grid", res.patch_grid_names))
    site = bounded_choice(point["customdata"], "The cell's site", grid.sites)
    column = point.get("x")
    column = int(column) if isinstance(column, str) and column.isdigit() and len(column) < 10 else column
    column = bounded_choice(column, "The cell's column", grid.columns)
    if "patched" not in grid.images or grid.images["patched"].shape[2] == 0:
        return message("This grid was saved without images (--keep-images 0).", "info")
    cell = grid.cell(site, column)
    rows = []
    for k in range(grid.images["patched"].shape[2]):
        images = grid.cell_images(site, column, k)
        pair = grid.pairs[k]
        figures = [
            html.Figure(
                [
                    html.Img(
                        src=png_data_uri(images[kind]),
                        className="ll-edit-image",
                        id=f"causal-{kind}-{k}",
                    ),
                    html.Figcaption(caption),
                ],
                className="ll-edit-cell",
            )
            for kind, caption in (
                ("base", f"base: {pair.base}"),
                ("source", f"source: {pair.source}"),
                (
                    "patched",
                    f"patched (effect {grid.per_pair[grid.sites.index(site), grid.columns.index(column), k]:.2f})",
                ),
            )
        ]
        rows.append(html.Div(figures, className="ll-edit-strip"))
    flip = (
        "" if cell["oracle_flip"] is None else f", oracle reads the source's value in {100 * cell['oracle_flip']:.0f} %"
    )
    head = html.P(
        f"{site} at step {column}: effect {cell['effect']:.3f} "
        f"[{cell['ci'][0]:.3f}, {cell['ci'][1]:.3f}] over {grid.n} pairs{flip}.",
        id="causal-cell-summary",
    )
    return html.Div([head, *rows])

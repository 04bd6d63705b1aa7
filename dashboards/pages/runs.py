"""``/``: the runs under the configured root with their manifests."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from dashboards import config, ids
from dashboards.data import run_manifest, human_size, results
from dashboards.ui import guarded, message, state_get

dash.register_page(__name__, path="/", name="Runs", title="latentlens · runs", order=0)


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Runs"),
            html.P(id="runs-root", className="ll-muted"),
            html.Div(id=ids.RUNS_MESSAGE),
            html.Div(id=ids.RUNS_TABLE),
            html.H3("Selected run"),
            html.Div(id=ids.RUNS_DETAIL),
        ]
    )


@callback(
    Output(ids.RUNS_TABLE, "children"),
    Output("runs-root", "children"),
    Output(ids.RUNS_MESSAGE, "children"),
    Input(ids.STATE, "data"),
)
@guarded(3, 2)
def _table(state: Any) -> tuple[Any, Any, Any]:
    index = config.index()
    runs = index.runs()
    current = state_get(state, "run")
    header = html.Tr([html.Th(h) for h in ("run", "model", "samples", "sites", "steps", "size", "analysis")])
    rows = []
    for info in runs:
        name = info.run_id if info.run_id != "." else index.root.name
        status = "damaged: " + info.error if info.error else ("yes" if info.analysed else "not yet")
        sites = ", ".join(info.sites[:4]) + (f" … (+{len(info.sites) - 4})" if len(info.sites) > 4 else "")
        rows.append(
            html.Tr(
                [
                    html.Td(html.B(name) if info.run_id == current else name),
                    html.Td(info.model),
                    html.Td(f"{info.completed}/{info.prompts}"),
                    html.Td(sites, title=", ".join(info.sites)),
                    html.Td(info.steps if info.steps is not None else "?"),
                    html.Td(human_size(info.size_bytes)),
                    html.Td(status, className="ll-bad" if info.error else None),
                ],
                className="ll-current" if info.run_id == current else None,
            )
        )
    note = None
    if not runs:
        note = message(
            f"No runs under {index.root}. Record one with `latentlens record` or run `latentlens demo`.", "warning"
        )
    table = html.Table([html.Thead(header), html.Tbody(rows)], className="ll-table") if runs else None
    return table, f"root: {index.root}", note


@callback(Output(ids.RUNS_DETAIL, "children"), Input(ids.STATE, "data"))
@guarded(1, 0)
def _detail(state: Any) -> Any:
    run_id = state_get(state, "run")
    if not run_id:
        return message("Choose a run in the picker at the top.", "info")
    index = config.index()
    info = index.info(run_id)
    if info.error:
        return message(f"The run {run_id!r} cannot be read: {info.error}", "error")
    from dashboards.data import open_run

    manifest = run_manifest(open_run(index, run_id))
    prompts = manifest.get("prompts") or []
    items: list[Any] = [
        html.Li(f"model: {info.model} ({(manifest.get('model') or {}).get('pipeline_class', '?')})"),
        html.Li(f"samples: {info.completed} finished of {info.prompts}"),
        html.Li(f"steps: {info.steps}, generation: {manifest.get('generation')}"),
        html.Li(f"recorded: {len(info.sites)} arrays"),
        html.Li(f"created: {manifest.get('created', '?')}, config hash {manifest.get('config_hash', '?')}"),
    ]
    analysis: Any
    try:
        res = results(index, run_id)
        missing = res.missing
        analysis = message(
            f"Analysis: {len(res.probes)} probe cells, {len(res.embeddings)} embeddings, {len(res.directions)} directions"
            + (f"; missing: {', '.join(missing)}." if missing else "."),
            "info" if not missing else "warning",
        )
    except Exception as error:
        analysis = message(str(error), "warning")
    examples = html.Ul(
        [html.Li(p) for p in prompts[:5]] + ([html.Li(f"… {len(prompts) - 5} more")] if len(prompts) > 5 else [])
    )
    return html.Div(
        [html.Ul(items), analysis, html.H4("prompts"), examples, dcc.Link("open the probe grids →", href="/probes")]
    )

"""``/editor``: edit a sample (or an upload) along a direction or toward a target text; background job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from dashboards import config, ids
from dashboards.data import open_run, results
from dashboards.ui import error_message, guarded, message, state_get

dash.register_page(__name__, path="/editor", name="Editor", title="latentlens · editor", order=5)

SWEEP_POINTS = 5
RUN_LABEL = "run"
RUNNING_LABEL = "running…"  # the run button while its edit runs (disabled)
BUSY_LABEL = "busy…"  # the run button while the server runs as many edits as it allows (disabled)
BUSY_POLL_MS = 1000  # how often a busy page asks whether a slot is free again


def layout(**_query: Any) -> html.Div:
    max_kib = int(config.SETTINGS["upload_max_bytes"]) // 1024
    return html.Div(
        [
            html.H2("EMS editor"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("source"),
                            dcc.RadioItems(
                                id=ids.ED_SOURCE_KIND,
                                value="sample",
                                inline=True,
                                options=[
                                    {"label": "a sample of the run", "value": "sample"},
                                    {"label": "an upload", "value": "upload"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("sample"), dcc.Input(id=ids.ED_SAMPLE, type="number", min=0, step=1, value=0)],
                        className="ll-control",
                        id=ids.ED_SAMPLE_BOX,
                    ),
                    html.Div(
                        [
                            dcc.Upload(
                                id=ids.ED_UPLOAD,
                                children=html.Div(f"drop or choose a PNG/JPEG (≤ {max_kib} KiB)"),
                                accept="image/png,image/jpeg",
                                max_size=int(config.SETTINGS["upload_max_bytes"]),
                                multiple=False,
                                className="ll-upload",
                            ),
                            html.Div(id=ids.ED_UPLOAD_INFO, className="ll-muted"),
                        ],
                        className="ll-control",
                        id=ids.ED_UPLOAD_BOX,
                        style={"display": "none"},
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.ED_SOURCE_PREVIEW, className="ll-source-preview"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("edit with"),
                            dcc.RadioItems(
                                id=ids.ED_MODE,
                                value="direction",
                                inline=True,
                                options=[
                                    {"label": "a direction", "value": "direction"},
                                    {"label": "a target text", "value": "target"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("direction"), dcc.Dropdown(id=ids.ED_DIRECTION)],
                        className="ll-control ll-wide",
                        id=ids.ED_DIRECTION_BOX,
                    ),
                    html.Div(
                        [
                            html.Label("target text"),
                            dcc.Input(
                                id=ids.ED_TARGET,
                                type="text",
                                debounce=True,
                                placeholder="a large blue circle …",
                                className="ll-text",
                            ),
                        ],
                        className="ll-control ll-wide",
                        id=ids.ED_TARGET_BOX,
                        style={"display": "none"},
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("α"),
                            dcc.Slider(
                                id=ids.ED_ALPHA,
                                min=-8,
                                max=8,
                                step=0.25,
                                value=2.0,
                                marks={v: str(v) for v in (-8, -4, 0, 4, 8)},
                                tooltip={"placement": "bottom"},
                            ),
                        ],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [
                            dcc.Checklist(
                                id=ids.ED_SWEEP,
                                value=[],
                                options=[{"label": f"sweep 0…α ({SWEEP_POINTS} images)", "value": "sweep"}],
                            )
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [
                            html.Label("steps"),
                            dcc.Input(
                                id=ids.ED_STEPS,
                                type="number",
                                min=1,
                                max=100,
                                step=1,
                                value=int(config.SETTINGS["edit_steps"]),
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Button(RUN_LABEL, id=ids.ED_RUN, n_clicks=0, className="ll-button"),
                    html.Button(
                        "cancel", id=ids.ED_CANCEL, n_clicks=0, className="ll-button ll-secondary", disabled=True
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(
                [
                    html.Progress(id=ids.ED_PROGRESS, value="0", max="1"),
                    html.Span(id=ids.ED_STATUS, className="ll-muted"),
                ],
                className="ll-progress",
            ),
            dcc.Interval(id=ids.ED_BUSY_POLL, interval=BUSY_POLL_MS, disabled=True),
            dcc.Store(id=ids.ED_UPLOAD_STORE, data=None),
            dcc.Store(id=ids.ED_RESULT_STORE, data=None),
            html.Div(id=ids.ED_MESSAGE),
            html.Div(id=ids.ED_RESULT),
        ]
    )


@callback(
    Output(ids.ED_DIRECTION, "options"),
    Output(ids.ED_DIRECTION, "value"),
    Output(ids.ED_SAMPLE, "value"),
    Output(ids.ED_MESSAGE, "children"),
    Input(ids.STATE, "data"),
    Input(ids.ED_SAMPLE, "value"),
    Input(ids.ED_SOURCE_KIND, "value"),
    State(ids.SAMPLE, "data"),
    State(ids.ED_DIRECTION, "value"),
)
@guarded(4, 3)
def _controls(state: Any, typed: Any, kind: Any, picked: Any, current: Any) -> tuple[Any, ...]:
    """The directions that apply to the source, best measured edit first, and the best one chosen.

    A run sample's labels pick the from–to directions that start from its own value (a red sample is
    offered ``edit/color/red-to-blue``, not ``…/green-to-blue``); an upload has no labels and is offered every
    direction. A direction sent from ``/directions`` stays chosen even when it was made for other samples.
    """
    from dashboards.data import manifest_labels
    from dashboards.limits import bounded_int

    run_id = state_get(state, "run")
    if not run_id:
        return [], None, 0, message("Choose a run in the picker at the top.", "info")
    index = config.index()
    run = open_run(index, run_id)
    count = len(run.manifest.get("prompts") or [])
    sent = state_get(state, "direction")
    if dash.ctx.triggered_id == ids.ED_SAMPLE and typed not in (None, ""):
        sample = bounded_int(typed, "sample", 0, max(count - 1, 0))
        chosen = current
    else:  # the page opened or the run changed: the sample picked elsewhere, the direction sent here
        shown = state_get(picked, "sample") if state_get(picked, "run") == run_id else None
        in_range = isinstance(shown, int) and not isinstance(shown, bool) and 0 <= shown < count
        sample = shown if in_range and isinstance(shown, int) else min(run.completed, default=0)
        chosen = sent or current
    own: dict[str, str] = {}
    if kind != "upload":
        own = {a: str(column[sample]) for a, column in manifest_labels(run).items() if sample < len(column)}
        own = {a: v for a, v in own.items() if v}
    note = None
    try:
        analysis = results(index, run_id)
        ranked = analysis.direction_effects(own or None)
    except Exception as error:
        analysis, ranked = None, []
        note = message(f"{error} Until then, edit with a target text.", "warning")
    names = [name for name, _ in ranked]
    chosen = chosen if isinstance(chosen, str) else None  # a posted value may be anything
    if chosen not in names:
        # asked for by name: offered even if made for other samples (the full list is read only then)
        validations = dict(analysis.direction_effects()) if analysis is not None and chosen == sent else {}
        if chosen is not None and chosen in validations:
            ranked = [(chosen, validations[chosen]), *ranked]
        else:
            chosen = names[0] if names else None
    return [{"label": _direction_label(n, v), "value": n} for n, v in ranked], chosen, sample, note


@callback(
    Output(ids.ED_ALPHA, "value"),
    Input(ids.ED_DIRECTION, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
def _measured_alpha(direction: Any, state: Any) -> Any:
    """Choosing a validated direction sets α to the strength at which its edit was measured."""
    run_id = state_get(state, "run")
    if not run_id or not isinstance(direction, str):
        raise dash.exceptions.PreventUpdate
    try:
        validation = dict(results(config.index(), run_id).direction_effects()).get(direction)
    except Exception:  # no analysis yet: _controls says so; α stays where the user put it
        raise dash.exceptions.PreventUpdate from None
    if not validation or not isinstance(validation.get("alpha"), (int, float)):
        raise dash.exceptions.PreventUpdate
    return float(validation["alpha"])


def _direction_label(name: str, validation: Any) -> str:
    """``edit/color/blue — edits 100 %, others kept 95 % (α 1, n 16)``; unvalidated names as they are."""
    if not validation:
        return name
    where = f"α {validation.get('alpha', 1):g}" + (f", n {validation['n']}" if "n" in validation else "")
    if validation.get("success") is not None and validation.get("kept"):
        return (
            f"{name} — edits {100 * validation['success']:.0f} %, others kept "
            f"{100 * min(validation['kept'].values()):.0f} % ({where})"
        )
    return f"{name} — effect {validation.get('score', 0):.2f} ({where})"


@callback(
    Output(ids.ED_SAMPLE_BOX, "style"),
    Output(ids.ED_UPLOAD_BOX, "style"),
    Output(ids.ED_DIRECTION_BOX, "style"),
    Output(ids.ED_TARGET_BOX, "style"),
    Input(ids.ED_SOURCE_KIND, "value"),
    Input(ids.ED_MODE, "value"),
)
def _applicable(kind: Any, mode: Any) -> tuple[Any, ...]:
    """Only the controls that apply are shown: sample or upload, direction or target text."""
    shown: dict[str, str] = {}
    hidden = {"display": "none"}
    return (
        hidden if kind == "upload" else shown,
        shown if kind == "upload" else hidden,
        hidden if mode == "target" else shown,
        shown if mode == "target" else hidden,
    )


@callback(
    Output(ids.ED_SOURCE_PREVIEW, "children"),
    Input(ids.ED_SOURCE_KIND, "value"),
    Input(ids.ED_SAMPLE, "value"),
    Input(ids.ED_UPLOAD_STORE, "data"),
    State(ids.STATE, "data"),
)
@guarded(1, 0)
def _preview(kind: Any, sample: Any, upload: Any, state: Any) -> Any:
    """The source image and its prompt, shown before any edit."""
    from dashboards.data import image_file
    from dashboards.limits import bounded_int, image_id
    from dashboards.ui import image_src

    if kind == "upload":
        upload_id = image_id(upload.get("upload")) if isinstance(upload, dict) else None
        if not upload_id:
            return html.P("Upload a PNG or JPEG to edit it.", className="ll-muted")
        return html.Figure(
            [
                html.Img(src=f"/lens/upload/{upload_id}.png", className="ll-edit-image", id="editor-source-image"),
                html.Figcaption("the uploaded image"),
            ]
        )
    run_id = state_get(state, "run")
    if not run_id:
        return None
    index = config.index()
    run = open_run(index, run_id)
    prompts = run.manifest.get("prompts") or []
    number = bounded_int(sample if sample not in (None, "") else 0, "sample", 0, max(len(prompts) - 1, 0))
    prompt = prompts[number] if number < len(prompts) else ""
    prompt = prompt.get("prompt", "") if isinstance(prompt, dict) else str(prompt)
    caption = html.Figcaption([html.Strong(f"sample {number}: "), html.Span(prompt, id="editor-source-prompt")])
    if image_file(index, run_id, number) is None:
        return html.Figure(
            [html.P("This sample has no saved image; an EMS edit needs one.", className="ll-muted"), caption]
        )
    return html.Figure(
        [html.Img(src=image_src(run_id, number), className="ll-edit-image", id="editor-source-image"), caption]
    )


@callback(
    Output(ids.ED_UPLOAD_STORE, "data"),
    Output(ids.ED_UPLOAD_INFO, "children"),
    Output(ids.ED_SOURCE_KIND, "value"),
    Input(ids.ED_UPLOAD, "contents"),
    State(ids.ED_UPLOAD, "filename"),
    prevent_initial_call=True,
)
def _upload(contents: Any, filename: Any) -> tuple[Any, Any, Any]:
    from dashboards.editing import save_upload

    name = str(filename)[:120] if filename else None  # a file name is only ever shown
    try:
        upload_id, size = save_upload(contents, name)
    except Exception as error:
        return None, error_message(error), no_update
    return (
        {"upload": upload_id},
        html.Span(
            [html.Img(src=f"/lens/upload/{upload_id}.png", className="ll-thumb"), f" {name} ({size[0]}×{size[1]})"]
        ),
        "upload",
    )


def _strip(result: dict[str, Any]) -> html.Div:
    """Before/after images (served from the results folder by id) with their metrics."""
    cells = [
        html.Figure(
            [
                html.Img(src=f"/lens/result/{result['before']}.png", className="ll-edit-image", id="editor-before"),
                html.Figcaption("before"),
            ],
            className="ll-edit-cell",
        )
    ]
    for k, (alpha, image, metrics) in enumerate(zip(result["alphas"], result["after"], result["metrics"])):
        lines = [html.Div(f"{key}: {value}") for key, value in metrics.items()]
        cells.append(
            html.Figure(
                [
                    html.Img(
                        src=f"/lens/result/{image}.png", className="ll-edit-image ll-edited", id=f"editor-after-{k}"
                    ),
                    html.Figcaption([html.B(f"α = {alpha:g}")] + lines),
                ],
                className="ll-edit-cell",
            )
        )
    return html.Div(
        [
            html.Div(f"method: {result['method']} · {result['seconds']:.1f} s", className="ll-muted"),
            html.Div(cells, className="ll-edit-strip"),
        ]
    )


@callback(
    Output(ids.ED_RESULT, "children"),
    Output(ids.ED_MESSAGE, "children", allow_duplicate=True),
    Input(ids.ED_RESULT_STORE, "data"),
    prevent_initial_call=True,
)
def _show(result: Any) -> tuple[Any, Any]:
    from dashboards.limits import image_id, shown

    if not isinstance(result, dict):
        raise dash.exceptions.PreventUpdate
    if result.get("error"):
        kind = result.get("kind")
        return None, message(str(result["error"])[:2000], kind if kind in ("error", "warning", "info") else "error")
    try:
        ids_ok = image_id(result["before"]) and all(image_id(i) for i in result["after"])
        strip = _strip(result) if ids_ok else None
    except (KeyError, TypeError, ValueError, AttributeError):
        strip = None
    if strip is None:  # only a forged store gets here: the job writes whole results
        return None, message(f"The edit result {shown(result)} is incomplete; run the edit again.", "error")
    return strip, None


@callback(
    Output(ids.ED_RUN, "disabled", allow_duplicate=True),
    Output(ids.ED_RUN, "children", allow_duplicate=True),
    Output(ids.ED_BUSY_POLL, "disabled"),
    Output(ids.ED_MESSAGE, "children", allow_duplicate=True),
    Input(ids.ED_RESULT_STORE, "data"),
    Input(ids.ED_BUSY_POLL, "n_intervals"),
    prevent_initial_call=True,
)
def _busy(result: Any, _ticks: Any) -> tuple[Any, Any, Any, Any]:
    """The server at its job cap: the run button stays disabled (labelled busy) and the page asks
    every second whether a slot is free again; then the button comes back."""
    from dashboards.limits import MAX_EDIT_JOBS, JobSlots

    if dash.ctx.triggered_id == ids.ED_RESULT_STORE:
        if not (isinstance(result, dict) and result.get("busy")):
            raise dash.exceptions.PreventUpdate
        return True, BUSY_LABEL, False, no_update
    if JobSlots(_slots_folder(), MAX_EDIT_JOBS).free() == 0:
        raise dash.exceptions.PreventUpdate
    return False, RUN_LABEL, True, message("An edit slot is free again: run your edit.", "info")


def _slots_folder() -> Path:
    return Path(config.setting("upload_dir")).parent / "job-slots"


@callback(
    Output(ids.ED_RESULT_STORE, "data"),
    Input(ids.ED_RUN, "n_clicks"),
    State(ids.STATE, "data"),
    State(ids.ED_SOURCE_KIND, "value"),
    State(ids.ED_SAMPLE, "value"),
    State(ids.ED_UPLOAD_STORE, "data"),
    State(ids.ED_MODE, "value"),
    State(ids.ED_DIRECTION, "value"),
    State(ids.ED_TARGET, "value"),
    State(ids.ED_ALPHA, "value"),
    State(ids.ED_SWEEP, "value"),
    State(ids.ED_STEPS, "value"),
    background=True,
    running=[  # the control that started the edit is disabled until it ends (done, failed or cancelled)
        (Output(ids.ED_RUN, "disabled"), True, False),
        (Output(ids.ED_RUN, "children"), RUNNING_LABEL, RUN_LABEL),
        (Output(ids.ED_CANCEL, "disabled"), False, True),
    ],
    progress=[Output(ids.ED_PROGRESS, "value"), Output(ids.ED_PROGRESS, "max"), Output(ids.ED_STATUS, "children")],
    cancel=[Input(ids.ED_CANCEL, "n_clicks")],
    prevent_initial_call=True,
)
def _run(
    set_progress: Any,
    n_clicks: Any,
    state: Any,
    kind: Any,
    sample: Any,
    upload: Any,
    mode: Any,
    direction: Any,
    target: Any,
    alpha: Any,
    sweep: Any,
    steps: Any,
) -> dict[str, Any]:
    """The edit, in a background process. Returns only JSON data (image ids, numbers, text): the job
    cache stores it as JSON, so nothing is ever pickled or unpickled."""
    import time

    from latentlens.errors import LatentlensError

    from dashboards.editing import EditRequest, run_edit, save_result_image
    from dashboards.limits import (
        EDIT_ALPHA,
        EDIT_STEPS,
        MAX_EDIT_JOBS,
        JobSlots,
        bounded_float,
        bounded_int,
        bounded_text,
    )

    started = time.perf_counter()
    try:
        run_id = state_get(state, "run")
        if not run_id:
            return {"error": "Choose a run in the picker at the top.", "kind": "info"}
        # The server enforces every bound itself: a client can post any value.
        alpha = bounded_float(alpha if alpha is not None else 1.0, "α", *EDIT_ALPHA)
        steps = bounded_int(steps, "steps", *EDIT_STEPS) if steps not in (None, "") else None
        sample = bounded_int(sample or 0, "sample", 0, 10**9) if kind != "upload" else None
        target = bounded_text(target, "The target text")
        direction = bounded_text(direction, "The direction name", 200)
        alphas = (
            [round(alpha * k / (SWEEP_POINTS - 1), 4) for k in range(SWEEP_POINTS)]
            if "sweep" in (sweep or [])
            else [alpha]
        )
        request = EditRequest(
            sample=sample,
            upload=(upload or {}).get("upload") if kind == "upload" else None,
            direction=direction if mode == "direction" else None,
            target=target if mode == "target" else None,
            alphas=alphas,
            steps=steps,
        )
        if kind == "upload" and not request.upload:
            return {"error": "Upload an image first (PNG or JPEG).", "kind": "warning"}
        if mode == "direction" and not direction:
            return {"error": "Choose a direction, or switch to a target text.", "kind": "warning"}

        def progress(done: int, total: int, text: str) -> None:
            set_progress([str(done), str(max(total, 1)), text])

        with JobSlots(_slots_folder(), MAX_EDIT_JOBS).take() as slot:
            if slot is None:
                return {
                    "error": f"The editor is busy: {MAX_EDIT_JOBS} edits are running. The run button comes back "
                    "when one has finished.",
                    "kind": "warning",
                    "busy": True,
                }
            out = run_edit(config.index(), run_id, request, progress)
        return {
            "before": save_result_image(out.source),
            "after": [save_result_image(im) for im in out.images],
            "alphas": out.alphas,
            "metrics": out.metrics,
            "method": out.method,
            "seconds": time.perf_counter() - started,
        }
    except LatentlensError as error:
        return {"error": str(error), "kind": "error"}
    except Exception as error:
        import logging
        import traceback

        logging.getLogger("latentlens.dashboard").error("editor job failed:\n%s", traceback.format_exc())
        return {"error": f"The edit failed ({type(error).__name__}: {error}).", "kind": "error"}

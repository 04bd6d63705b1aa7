"""``/attention``: image→text attention per token over the generated image; block/step sliders (the step
also as a number box), means.

The concept box maps words that need not be in the prompt (ConceptAttention): the sample is generated
again with :func:`latentlens.record` ``concepts=`` (a background job, see ``dashboards.concept_maps``)
and each concept's map is shown for the selected block and step (or their means).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import dash
import numpy as np
from pathlib import Path

from dash import Input, Output, State, callback, dcc, html, no_update

from dashboards import config, ids
from dashboards.data import (
    run_manifest,
    DashboardError,
    attention_map,
    attention_sites,
    image_file,
    open_run,
    recorded_steps,
    token_labels,
)
from dashboards.limits import bounded_choice, bounded_int, shown
from dashboards.ui import empty_figure, guarded, image_src, message, state_get

dash.register_page(__name__, path="/attention", name="Attention", title="latentlens · attention", order=3)

MAX_STRIP = 24


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Attention"),
            html.P(
                "Where each text token is read by the image patches (image→text attention, mean over heads).",
                className="ll-muted",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("sample"),
                            dcc.Input(id=ids.ATT_SAMPLE, type="number", min=0, step=1, value=0, debounce=True),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [html.Label("token"), dcc.Dropdown(id=ids.ATT_TOKEN, clearable=False)], className="ll-control"
                    ),
                    html.Div(
                        [
                            html.Label("aggregate"),
                            dcc.Checklist(
                                id=ids.ATT_AGGREGATE,
                                inline=True,
                                value=[],
                                options=[
                                    {"label": "mean over blocks", "value": "blocks"},
                                    {"label": "mean over steps", "value": "steps"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(
                [
                    html.Div(
                        [html.Label("block"), dcc.Slider(id=ids.ATT_BLOCK, min=0, max=1, step=1, value=0)],
                        className="ll-control ll-wide",
                    ),
                    html.Div(
                        [
                            html.Label("step", htmlFor=ids.ATT_STEP_BOX),
                            html.Div(
                                [
                                    html.Div(dcc.Slider(id=ids.ATT_STEP, min=0, max=1, step=None, value=0)),
                                    dcc.Input(
                                        id=ids.ATT_STEP_BOX,
                                        type="number",
                                        min=0,
                                        max=1,
                                        step=1,
                                        value=0,
                                        debounce=True,
                                        className="ll-number",
                                    ),
                                ],
                                className="ll-slider-box",
                                title="a recorded denoising step (others go to the nearest recorded one)",
                            ),
                        ],
                        className="ll-control ll-wide",
                    ),
                ],
                className="ll-controls",
            ),
            html.Div(id=ids.ATT_PROMPT, className="ll-prompt"),
            html.Div(id=ids.ATT_MESSAGE),
            dcc.Graph(id=ids.ATT_FIGURE, figure=empty_figure(), config={"displayModeBar": False}),
            html.H4("all tokens"),
            html.Div(id=ids.ATT_STRIP, className="ll-thumbs"),
            html.H4("concepts"),
            html.P(
                "Type words that need not be in the prompt; the sample is generated again and each word's "
                "concept map (ConceptAttention: softmax over the typed concepts per image patch) is shown for "
                "the block and step above.",
                className="ll-muted",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("concept words"),
                            dcc.Input(
                                id=ids.ATT_CONCEPTS,
                                type="text",
                                placeholder="circle, square, background",
                                maxLength=400,
                                debounce=True,
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Div(
                        [
                            html.Label("map"),
                            dcc.RadioItems(
                                id=ids.ATT_CONCEPT_KIND,
                                inline=True,
                                value="weights",
                                options=[
                                    {"label": "attention weights", "value": "weights"},
                                    {"label": "output space", "value": "output"},
                                ],
                            ),
                        ],
                        className="ll-control",
                    ),
                    html.Button("map concepts", id=ids.ATT_CONCEPT_RUN, n_clicks=0),
                ],
                className="ll-controls",
            ),
            dcc.Store(id=ids.ATT_CONCEPT_STORE),
            html.Div(id=ids.ATT_CONCEPT_STATUS),
            html.Div(id=ids.ATT_CONCEPT_STRIP, className="ll-thumbs"),
        ]
    )


@callback(
    Output(ids.ATT_BLOCK, "max"),
    Output(ids.ATT_BLOCK, "marks"),
    Output(ids.ATT_BLOCK, "value"),
    Output(ids.ATT_STEP, "min"),
    Output(ids.ATT_STEP, "max"),
    Output(ids.ATT_STEP, "marks"),
    Output(ids.ATT_STEP, "value"),
    Output(ids.ATT_SAMPLE, "value"),
    Output(ids.ATT_SAMPLE, "max"),
    Output(ids.ATT_STEP_BOX, "min"),
    Output(ids.ATT_STEP_BOX, "max"),
    Output(ids.ATT_STEP_BOX, "value"),
    Output(ids.ATT_MESSAGE, "children"),
    Input(ids.STATE, "data"),
    State(ids.SAMPLE, "data"),
)
@guarded(13, 12)
def _controls(state: Any, picked: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id:
        return 1, {}, 0, 0, 1, {}, 0, 0, 0, 0, 1, 0, message("Choose a run in the picker at the top.", "info")
    run = open_run(config.index(), run_id)
    sites = attention_sites(run)
    if not sites:
        raise DashboardError(
            f"The run {run_id!r} has no attention maps. Record them with "
            "`latentlens record ... --attention 'blocks.*.attn.img2txt'` (or `latentlens demo`)."
        )
    blocks = list(sites)
    first = run[sites[blocks[0]]]
    n_steps = first.shape[1]
    sample = state_get(picked, "sample") if state_get(picked, "run") == run_id else None
    sample = int(sample) if isinstance(sample, int) else min(run.completed, default=0)
    marks = {i: str(b) for i, b in enumerate(blocks)}
    steps = recorded_steps(run, n_steps)  # the slider's values are denoising steps (only the recorded ones)
    step_marks = {s: str(s) for s in steps}
    last = first.shape[0] - 1
    return (
        len(blocks) - 1,
        marks,
        0,
        steps[0],
        steps[-1],
        step_marks,
        steps[-1],
        sample,
        last,
        steps[0],
        steps[-1],
        steps[-1],
        None,
    )


@callback(
    Output(ids.ATT_STEP, "value", allow_duplicate=True),
    Output(ids.ATT_STEP_BOX, "value", allow_duplicate=True),
    Output(ids.ATT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.ATT_STEP, "value"),
    Input(ids.ATT_STEP_BOX, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(3, 2)
def _sync_step(slider: Any, box: Any, state: Any) -> tuple[Any, Any, Any]:
    """The step slider and its number box show one step: a typed step moves the slider (to the
    nearest recorded step, which the box then shows), a moved slider fills the box."""
    run_id = state_get(state, "run")
    if not run_id:
        raise dash.exceptions.PreventUpdate
    steps = _recorded(run_id)
    if dash.ctx.triggered_id != ids.ATT_STEP_BOX:
        if slider is None:
            raise dash.exceptions.PreventUpdate
        return no_update, bounded_choice(slider, "The step slider", steps), no_update
    if box is None or box == "":  # the browser sends no number for an empty box or one outside min..max
        raise DashboardError(
            f"Type a denoising step between {steps[0]} and {steps[-1]}; the recorded ones are "
            f"{', '.join(map(str, steps))}."
        )
    typed = bounded_int(box, "The step", steps[0], steps[-1])
    nearest = min(steps, key=lambda s: (abs(s - typed), s))
    return nearest, nearest if nearest != typed else no_update, None


AGGREGATES = ("blocks", "steps")


def _aggregate(value: Any) -> list[str]:
    """The checked means (a subset of :data:`AGGREGATES`)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v in AGGREGATES for v in value):
        raise DashboardError(f"aggregate {shown(value)} is not a list of {', '.join(AGGREGATES)}.")
    return value


def _recorded(run_id: str) -> list[int]:
    """The recorded denoising steps of the run's attention maps."""
    run = open_run(config.index(), run_id)
    sites = attention_sites(run)
    if not sites:
        raise DashboardError(f"The run {run_id!r} has no attention maps.")
    return recorded_steps(run, run[next(iter(sites.values()))].shape[1])


def _grid(values: np.ndarray) -> np.ndarray:
    """``[query]`` → ``[height, width]`` (row-major patches), or ``[1, query]`` if not square."""
    side = int(round(math.sqrt(values.shape[-1])))
    return values.reshape(side, side) if side * side == values.shape[-1] else values.reshape(1, -1)


def _overlay_png(
    image: np.ndarray | None, heat: np.ndarray, size: int = 96, scale: tuple[float, float] | None = None
) -> str:
    """A data URI: the heat map ('inferno'-like ramp; normalised to its range, or to ``scale``) over the image."""
    from PIL import Image

    lo, hi = (float(np.nanmin(heat)), float(np.nanmax(heat))) if scale is None else scale
    h = np.clip((heat - lo) / max(hi - lo, 1e-12), 0, 1)
    ramp = np.stack([np.clip(1.5 * h, 0, 1), np.clip(1.5 * h - 0.5, 0, 1), np.clip(0.6 - h, 0, 1) * h * 2], -1)
    heat_img = Image.fromarray((ramp * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
    if image is not None:
        base = Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
        heat_img = Image.blend(base, heat_img, 0.6)
    buffer = io.BytesIO()
    heat_img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@callback(
    Output(ids.ATT_FIGURE, "figure"),
    Output(ids.ATT_STRIP, "children"),
    Output(ids.ATT_TOKEN, "options"),
    Output(ids.ATT_TOKEN, "value"),
    Output(ids.ATT_PROMPT, "children"),
    Output(ids.ATT_MESSAGE, "children", allow_duplicate=True),
    Input(ids.ATT_SAMPLE, "value"),
    Input(ids.ATT_TOKEN, "value"),
    Input(ids.ATT_BLOCK, "value"),
    Input(ids.ATT_STEP, "value"),
    Input(ids.ATT_AGGREGATE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(6, 5)
def _figure(sample: Any, token: Any, block_pos: Any, step: Any, aggregate: Any, state: Any) -> tuple[Any, ...]:
    run_id = state_get(state, "run")
    if not run_id or sample is None:
        return empty_figure(), None, [], None, None, no_update
    index = config.index()
    run = open_run(index, run_id)
    sites = attention_sites(run)
    if not sites:
        raise dash.exceptions.PreventUpdate
    blocks = list(sites)
    first = run[sites[blocks[0]]]  # [sample, step, query, key]
    sample = bounded_int(sample, "The sample", 0, first.shape[0] - 1)
    aggregate = _aggregate(aggregate)
    block_pos = bounded_int(block_pos or 0, "The block slider", 0, len(blocks) - 1)
    steps = recorded_steps(run, first.shape[1])
    step = bounded_int(step or 0, "The step", 0, max(steps[-1], 0))
    chosen = blocks if "blocks" in aggregate else [blocks[block_pos]]
    maps = np.stack([attention_map(index, run_id, sites[b], sample) for b in chosen])  # [block, step, query, key]
    position = int(np.argmin([abs(s - step) for s in steps]))  # the slider holds a denoising step
    maps = maps.mean(axis=1) if "steps" in aggregate else maps[:, position]
    att = maps.mean(axis=0)  # [query, key]
    n_keys = att.shape[-1]
    labels = token_labels(run, sample, n_keys)
    token = (
        int(token)
        if isinstance(token, int) and 0 <= token < n_keys
        else int(np.argmax(att.sum(axis=0)[1:]) + 1 if n_keys > 1 else 0)
    )
    prompts = run_manifest(run).get("prompts") or []
    prompt = prompts[sample] if sample < len(prompts) else ""
    image_path = image_file(index, run_id, sample)
    image = None
    if image_path is not None:
        from PIL import Image

        image = np.asarray(Image.open(image_path).convert("RGB"))
    heat = _grid(att[:, token])
    where = (
        ("mean over blocks" if "blocks" in aggregate else f"block {chosen[0]}")
        + ", "
        + ("mean over steps" if "steps" in aggregate else f"step {steps[position]}")
    )
    figure: dict[str, Any] = {
        "data": [
            {
                "type": "heatmap",
                "z": heat.tolist(),
                "colorscale": "Viridis",
                "opacity": 0.55 if image is not None else 1.0,
                "hovertemplate": "row %{y}, col %{x}: %{z:.3f}<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": f"sample {sample} · token {labels[token]} · {where}"},
            "xaxis": {"visible": False, "range": [-0.5, heat.shape[1] - 0.5]},
            "yaxis": {"visible": False, "autorange": "reversed", "scaleanchor": "x"},
            "height": 420,
            "width": 460,
            "margin": {"l": 10, "r": 10, "t": 50, "b": 10},
        },
    }
    if image is not None:
        figure["layout"]["images"] = [
            {
                "source": image_src(run_id, sample),
                "xref": "x",
                "yref": "y",
                "x": -0.5,
                "y": -0.5,
                "sizex": heat.shape[1],
                "sizey": heat.shape[0],
                "sizing": "stretch",
                "layer": "below",
            }
        ]
    strip = [
        html.Figure(
            [html.Img(src=_overlay_png(image, _grid(att[:, k])), className="ll-att-thumb"), html.Figcaption(labels[k])],
            className="ll-att-cell" + (" ll-current" if k == token else ""),
        )
        for k in range(min(n_keys, MAX_STRIP))
    ]
    options = [{"label": labels[k], "value": k} for k in range(n_keys)]
    return figure, strip, options, token, html.Span([html.B("prompt: "), prompt]), None


@callback(
    Output(ids.ATT_CONCEPT_STORE, "data"),
    Input(ids.ATT_CONCEPT_RUN, "n_clicks"),
    Input(ids.ATT_CONCEPTS, "n_submit"),
    State(ids.ATT_CONCEPTS, "value"),
    State(ids.ATT_SAMPLE, "value"),
    State(ids.STATE, "data"),
    background=True,
    running=[(Output(ids.ATT_CONCEPT_RUN, "disabled"), True, False)],
    prevent_initial_call=True,
)
def _map_concepts(_clicks: Any, _submit: Any, text: Any, sample: Any, state: Any) -> dict[str, Any]:
    """Generate the sample again with the typed concepts recorded, in a background process; returns JSON only."""
    import time

    from latentlens.errors import LatentlensError

    from dashboards.concept_maps import compute_concept_maps, parse_concepts, save_concept_maps
    from dashboards.limits import MAX_EDIT_JOBS, JobSlots, bounded_int

    started = time.perf_counter()
    try:
        run_id = state_get(state, "run")
        if not run_id:
            return {"error": "Choose a run in the picker at the top.", "kind": "info"}
        concepts = parse_concepts(text)  # the server checks the words itself: a client can post anything
        sample = bounded_int(sample or 0, "sample", 0, 10**9)
        with JobSlots(Path(config.setting("upload_dir")).parent / "job-slots", MAX_EDIT_JOBS).take() as slot:
            if slot is None:
                return {
                    "error": f"The server is busy: {MAX_EDIT_JOBS} jobs are running. Try again soon.",
                    "kind": "warning",
                }
            maps = compute_concept_maps(config.index(), run_id, sample, concepts)
            maps_id = save_concept_maps(maps)
        return {
            "id": maps_id,
            "run": run_id,
            "sample": sample,
            "concepts": maps.concepts,
            "blocks": maps.blocks,
            "steps": int(maps.weights.shape[0]),
            "seconds": round(time.perf_counter() - started, 2),
        }
    except LatentlensError as error:
        return {"error": str(error), "kind": "error"}
    except Exception as error:
        import logging
        import traceback

        logging.getLogger("latentlens.dashboard").error("concept maps failed:\n%s", traceback.format_exc())
        return {"error": f"Mapping the concepts failed ({type(error).__name__}: {error}).", "kind": "error"}


MAX_MESSAGE_CHARS = 500  # a message read back from the client's store is cut here (never echoed whole)


@callback(
    Output(ids.ATT_CONCEPT_STRIP, "children"),
    Output(ids.ATT_CONCEPT_STATUS, "children"),
    Input(ids.ATT_CONCEPT_STORE, "data"),
    Input(ids.ATT_CONCEPT_KIND, "value"),
    Input(ids.ATT_BLOCK, "value"),
    Input(ids.ATT_STEP, "value"),
    Input(ids.ATT_AGGREGATE, "value"),
    State(ids.STATE, "data"),
    prevent_initial_call=True,
)
@guarded(2, 1)
def _concept_strip(data: Any, kind: Any, block_pos: Any, step: Any, aggregate: Any, state: Any) -> tuple[Any, ...]:
    from dashboards.concept_maps import load_concept_maps

    if not data:
        return None, None
    if not isinstance(data, dict):  # the store holds what _map_concepts returned; a client can post anything
        return None, message("The concept maps' record is not understood; map the concepts again.", "warning")
    if "error" in data:
        kind = data.get("kind") if data.get("kind") in ("info", "warning", "error") else "error"
        return None, message(str(data["error"])[:MAX_MESSAGE_CHARS], kind)
    run_id = state_get(state, "run")
    if data.get("run") != run_id:
        return None, message("Those concept maps belong to another run; map the concepts again.", "info")
    maps = load_concept_maps(data.get("id"))
    aggregate = aggregate or []
    arr = maps.output if kind == "output" else maps.weights  # [step, block, token, concept]
    if "blocks" in aggregate:
        arr, where_block = arr.mean(axis=1), "mean over blocks"
    else:
        sites = list(attention_sites(open_run(config.index(), run_id)))
        block = sites[min(int(block_pos or 0), len(sites) - 1)] if sites else maps.blocks[0]
        if block not in maps.blocks:
            return None, message(f"Block {block} has no concept map (joint blocks: {maps.blocks}).", "warning")
        arr, where_block = arr[:, maps.blocks.index(block)], f"block {block}"
    if "steps" in aggregate:
        arr, where_step = arr.mean(axis=0), f"mean over all {arr.shape[0]} steps"
    else:
        s = min(max(int(step or 0), 0), arr.shape[0] - 1)  # the slider holds a denoising step; every step is mapped
        arr, where_step = arr[s], f"step {s}"
    strip = [
        html.Figure(
            [
                html.Img(
                    src=_overlay_png(maps.image, _grid(arr[:, c]), size=128, scale=(0.0, 1.0)),
                    className="ll-att-thumb",
                ),
                html.Figcaption(f"{concept} · {float(arr[:, c].mean()):.0%} of the weight"),
            ],
            className="ll-att-cell ll-concept-cell",
        )
        for c, concept in enumerate(maps.concepts)
    ]
    what = "output space" if kind == "output" else "attention weights"
    status = message(
        f"sample {data.get('sample')} generated again · {what} · {where_block}, {where_step} · "
        f"{data.get('seconds', 0):.1f} s",
        "info",
    )
    return strip, status

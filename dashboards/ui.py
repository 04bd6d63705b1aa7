"""Small UI helpers shared by the pages: messages, guarded callbacks, figure defaults."""

from __future__ import annotations

import functools
import logging
import traceback
from typing import Any
from collections.abc import Callable

from dash import html, no_update

from latentlens.errors import LatentlensError

log = logging.getLogger("latentlens.dashboard")


def message(text: str, kind: str = "error", details: Any = None) -> html.Div:
    """A visible message box (``kind``: error, warning, info)."""
    children: list[Any] = [html.Span(text)]
    if details is not None:
        children.append(html.Div(details, className="ll-details"))
    return html.Div(children, className=f"ll-message ll-{kind}", role="alert" if kind == "error" else "status")


def error_message(error: BaseException) -> html.Div:
    """The message shown for an exception: user errors verbatim, bugs as one line (traceback in the log)."""
    if isinstance(error, LatentlensError):
        return message(str(error), "warning" if "not been analysed" in str(error) else "error")
    log.error("dashboard callback failed:\n%s", traceback.format_exc())
    return message(
        f"Something went wrong ({type(error).__name__}: {error}). The details are in the dashboard's log.", "error"
    )


def guarded(n_outputs: int, message_at: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a callback so that any exception becomes a message in output ``message_at``.

    The other outputs are left unchanged (``no_update``); on success the message output is
    cleared unless the callback set it itself.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                from dash.exceptions import PreventUpdate

                if isinstance(error, PreventUpdate):
                    raise
                out = [no_update] * n_outputs
                out[message_at] = error_message(error)
                return out[0] if n_outputs == 1 else tuple(out)

        return inner

    return wrap


def empty_figure(text: str = "") -> dict[str, Any]:
    """A blank figure with an optional centred note."""
    layout: dict[str, Any] = {
        "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        "height": 300,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
    }
    if text:
        layout["annotations"] = [
            {"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}
        ]
    return {"data": [], "layout": layout}


def typed_array(values: Any, dtype: str = "f4") -> dict[str, str]:
    """A plotly.js typed array (``{"dtype", "bdata"}``): base64 binary instead of a JSON list of numbers.

    100,000 float32 values are 530 KB of base64 instead of ~1.2 MB of JSON text, and the browser
    decodes them without parsing numbers.
    """
    import base64

    import numpy as np

    array = np.ascontiguousarray(np.asarray(values), dtype={"f4": np.float32, "f8": np.float64, "i4": np.int32}[dtype])
    return {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}


def state_get(state: Any, key: str, default: Any = None) -> Any:
    return (state or {}).get(key, default) if isinstance(state, dict) else default


def image_src(run_id: str, sample: int) -> str:
    """URL of a sample's image served by the dashboard (run id checked server-side)."""
    from urllib.parse import quote

    return f"/lens/image/{int(sample)}.png?run={quote(run_id, safe='')}"


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def label_colours(values: list[str]) -> dict[str, str]:
    """A colour per label value; shapes-world colour names get their own colour (``red`` is red)."""
    from latentlens.shapes import BACKGROUND_RGB, COLOR_RGB

    named = {**{k: v for k, v in BACKGROUND_RGB.items() if k != "white"}, "white": (190, 190, 190), **COLOR_RGB}
    if values and all(v in named for v in values):
        return {v: "rgb({},{},{})".format(*named[v]) for v in values}
    return {v: PALETTE[k % len(PALETTE)] for k, v in enumerate(values)}

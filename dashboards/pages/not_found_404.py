"""Any unknown path: a plain message with the way back (never a blank page)."""

from __future__ import annotations

from typing import Any

import dash
from dash import dcc, html

dash.register_page(__name__, path="/404", name="Not found", title="latentlens · not found", order=99)


def layout(**_query: Any) -> html.Div:
    return html.Div(
        [
            html.H2("Page not found"),
            html.P("There is no such page in the latentlens dashboard."),
            dcc.Link("back to the runs", href="/"),
        ],
        className="ll-message ll-warning",
    )

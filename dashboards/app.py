"""The Dash app factory: shell layout (navigation, run picker, app state), image routes, pages.

Example::

    from dashboards.app import create_app
    app = create_app("runs")               # a run folder or a folder of runs
    app.run(host="127.0.0.1", port=8050)   # binds localhost only unless told otherwise
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable

import dash
from dash import Dash, Input, Output, State, dcc, html

from dashboards import config, ids
from dashboards.data import DashboardError, RunIndex

PAGES_FOLDER = Path(__file__).parent / "pages"

NAV_ITEMS = (
    ("Runs", "/"),
    ("Probes", "/probes"),
    ("Causal", "/causal"),
    ("Latents", "/latents"),
    ("Attention", "/attention"),
    ("Directions", "/directions"),
    ("Features", "/features"),
    ("Editor", "/editor"),
)


def _shell() -> html.Div:
    links = [
        dcc.Link(label, href=href, className="ll-nav-link", id=f"nav-{label.lower()}") for label, href in NAV_ITEMS
    ]
    return html.Div(
        [
            dcc.Store(id=ids.STATE, storage_type="session", data={}),
            dcc.Store(id=ids.SAMPLE, storage_type="session", data={}),
            dcc.Location(id=ids.URL, refresh="callback-nav"),
            html.Header(
                [
                    html.Div("latentlens", className="ll-brand"),
                    html.Nav(links, id=ids.NAV, className="ll-nav"),
                    html.Div(
                        [
                            html.Label("run", htmlFor=ids.RUN_SELECT),
                            dcc.Dropdown(
                                id=ids.RUN_SELECT,
                                clearable=False,
                                placeholder="choose a run",
                                className="ll-run-select",
                            ),
                        ],
                        className="ll-run-picker",
                    ),
                ],
                className="ll-header",
            ),
            html.Div(id=ids.SHELL_MESSAGE),
            html.Main(dash.page_container, className="ll-main"),
        ]
    )


def _register_shell_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.RUN_SELECT, "options"),
        Output(ids.RUN_SELECT, "value"),
        Output(ids.SHELL_MESSAGE, "children"),
        Input(ids.URL, "pathname"),
        State(ids.STATE, "data"),
    )
    def _runs(_pathname: str, state: Any) -> tuple[Any, Any, Any]:
        from dashboards.ui import error_message, message, state_get

        try:
            run_ids = config.index().run_ids()
        except Exception as error:
            return [], None, error_message(error)
        options = [{"label": r if r != "." else config.index().root.name, "value": r} for r in run_ids]
        current = state_get(state, "run")
        if current not in run_ids:
            current = run_ids[0] if run_ids else None
        note = (
            None
            if run_ids
            else message(
                f"No runs under {config.index().root}. Record one with `latentlens record` or start `latentlens demo`.",
                "warning",
            )
        )
        return options, current, note

    @app.callback(
        Output(ids.STATE, "data"),
        Input(ids.RUN_SELECT, "value"),
        State(ids.STATE, "data"),
    )
    def _pick_run(run_id: Any, state: Any) -> Any:
        from dashboards.limits import clean_state
        from dashboards.ui import state_get

        state = clean_state(state)
        if run_id is not None and (not isinstance(run_id, str) or run_id not in config.index().run_ids()):
            raise dash.exceptions.PreventUpdate  # not a run of the picker: the state keeps its run
        if run_id is None or state_get(state, "run") == run_id:
            if state.get("run") == run_id:
                raise dash.exceptions.PreventUpdate
            return state
        # A new run: cell, direction and sample of the old one mean nothing here.
        return {"run": run_id}


def _register_routes(app: Dash) -> None:
    from flask import abort, request, send_file

    from latentlens.safepath import is_inside

    from dashboards.limits import image_id

    server = app.server

    @server.route("/lens/image/<int:sample>.png")
    def _sample_image(sample: int) -> Any:
        from dashboards.data import image_file

        run_id = request.args.get("run", "")
        try:
            path = image_file(config.index(), run_id, sample)
        except DashboardError:
            abort(404)
        if path is None:
            abort(404)
        return send_file(path, mimetype="image/png", max_age=3600)

    @server.route("/lens/upload/<upload_id>.png")
    def _upload_image(upload_id: str) -> Any:
        return _served_png(config.upload_dir(), upload_id)

    @server.route("/lens/result/<result_id>.png")
    def _result_image(result_id: str) -> Any:
        return _served_png(config.result_dir(), result_id)

    def _served_png(folder: Path, name: str) -> Any:
        if image_id(name) is None:  # hex ids only: no path can be formed
            abort(404)
        path = folder / f"{name}.png"
        if not path.is_file():
            abort(404)
        if not is_inside(path, folder):  # resolved (symlinks followed) inside its folder, or nothing
            logging.getLogger("latentlens.dashboard").warning(
                "refused to serve %s: it resolves outside %s", path, folder
            )
            abort(404)
        return send_file(path, mimetype="image/png")


def create_app(
    root: str | Path,
    *,
    pipeline_loader: Callable[[str], Any] | None = None,
    cache_dir: str | Path | None = None,
    edit_steps: int | None = None,
    upload_max_bytes: int | None = None,
    scatter_budget: int | None = None,
) -> Dash:
    """Build the dashboard over the runs under ``root`` (a run folder or a folder of runs).

    ``pipeline_loader(model_id)`` loads the model the editor uses (default
    :func:`latentlens.load_pipeline`); ``cache_dir`` holds background-job results and uploads.
    ``scatter_budget``: most points the ``/latents`` scatter draws at once (default
    :data:`dashboards.lod.DEFAULT_BUDGET`; the rest is shown as density until zoomed in; 0 draws all).
    """
    import diskcache

    index = RunIndex(root)
    if cache_dir is not None:
        cache = Path(cache_dir)
    else:
        cache = Path(tempfile.mkdtemp(prefix="latentlens-dashboard-"))
        _remove_at_exit(cache)  # a temp folder per start would pile up otherwise
    cache.mkdir(parents=True, exist_ok=True)
    config.SETTINGS.update(
        index=index,
        upload_dir=cache / "uploads",
        result_dir=cache / "results",
        pipeline_loader=pipeline_loader,
        scatter_budget=scatter_budget,
    )
    if edit_steps is not None:
        config.SETTINGS["edit_steps"] = int(edit_steps)
    if upload_max_bytes is not None:
        config.SETTINGS["upload_max_bytes"] = int(upload_max_bytes)
    # JSONDisk: job results and progress are stored as JSON, so the job cache never unpickles anything.
    manager = dash.DiskcacheManager(diskcache.Cache(str(cache / "jobs"), disk=diskcache.JSONDisk))
    app = Dash(
        "dashboards",  # a package name: pages import as dashboards.pages.<name>
        use_pages=True,
        pages_folder=str(PAGES_FOLDER),
        assets_folder=str(Path(__file__).parent / "assets"),
        background_callback_manager=manager,
        suppress_callback_exceptions=True,
        title="latentlens",
        update_title=None,
    )
    app.layout = _shell
    _register_shell_callbacks(app)
    _register_routes(app)
    _enforce_request_limits(app, int(config.SETTINGS["upload_max_bytes"]))
    return app


def _remove_at_exit(folder: Path) -> None:
    import atexit
    import os
    import shutil

    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in forked background-job processes
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)


def _enforce_request_limits(app: Dash, upload_max_bytes: int) -> None:
    """Request bodies are capped (413 beyond: an upload as base64 plus the callback's other inputs);
    a page path the app does not have is answered with its 404 page *and* status 404."""
    from flask import request

    server = app.server
    server.config["MAX_CONTENT_LENGTH"] = upload_max_bytes * 4 // 3 + 256 * 1024

    @server.after_request
    def _not_found_status(response: Any) -> Any:
        if request.method == "GET" and response.status_code == 200 and response.mimetype == "text/html":
            known = {page["path"] for page in dash.page_registry.values()} - {"/404"}
            path = request.path.rstrip("/") or "/"
            if path not in known:
                response.status_code = 404
        return response


def warm_up() -> None:
    """Import what the first requests would (the attention page's tokenizer) before serving.

    Call it before the server starts, never concurrently with requests (imports are not
    safe to race).
    """
    try:
        from transformers import AutoTokenizer  # noqa: F401
    except Exception:
        pass


def page_module(name: str) -> Any:
    """The imported module of page ``name`` (e.g. ``"probes"``) of the app created last."""
    import sys

    return sys.modules[f"dashboards.pages.{name}"]


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `latentlens dashboard` is the entry point
    from latentlens.cli import main as cli_main

    return cli_main(["dashboard", *(argv or [])])


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))

"""``latentlens dashboard RUN_DIR_OR_ROOT``: serve the Dash dashboard over recorded runs.

Binds 127.0.0.1 unless ``--host`` says otherwise; only runs under the given
folder can be opened from the browser. Served by waitress, a production WSGI server
(several request threads, its own request-size cap), not by Flask's development server.

Example::

    $ latentlens dashboard runs/ --port 8050
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, StoreError

NAME = "dashboard"
HELP = "Serve the dashboard (probes, latents, attention, directions, EMS editor) over a run or a folder of runs."

LOCALHOST = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", metavar="RUN_DIR_OR_ROOT", help="a run folder, or a folder holding runs (searched 2 levels deep)."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the runs to the network).",
    )
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050).")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="where background jobs and uploads are kept (default: a temp folder)."
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab.")


def check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"--port {port!r} is not a valid port; give a number between 1 and 65535 (e.g. 8050).")
    return port


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    cache_dir: str | None = None,
    open_browser: bool = False,
) -> None:
    """Build the app over ``path`` and serve it until interrupted."""
    root = Path(path).expanduser()
    if not root.exists():
        raise StoreError(f"{root} does not exist; give a run folder (with manifest.json) or a folder of runs.")
    if not root.is_dir():
        raise StoreError(f"{root} is a file; give a run folder (with manifest.json) or a folder of runs.")
    check_port(port)
    port_free(host, port)  # before anything is printed or built
    try:
        from dashboards.app import create_app
    except ImportError as error:  # pragma: no cover - dash is a dependency
        raise ConfigError(f"The dashboard needs Dash ({error}); install latentlens with `pip install -e .`.") from None
    from dashboards.app import warm_up

    app = create_app(root, cache_dir=cache_dir)
    warm_up()
    quiet_server()
    server = make_server(app, host, port)  # bound before the URL is printed
    from dashboards import config

    runs = config.index().run_ids()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(f"latentlens dashboard: {len(runs)} run(s) under {config.index().root}", file=sys.stderr)
    if not runs:
        print("  no runs yet: record one with `latentlens record` or run `latentlens demo`.", file=sys.stderr)
    if host not in LOCALHOST:
        print(f"  warning: bound to {host}; anyone who can reach this machine can read these runs.", file=sys.stderr)
    print(f"  open {url}  (Ctrl+C stops it)", file=sys.stderr)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, lambda: webbrowser.open(url)).start()
    try:
        server.run()  # until Ctrl+C
    finally:
        server.close()


#: request threads of the production server (the editor's jobs run in their own processes)
SERVER_THREADS = 8


def make_server(app: Any, host: str, port: int, *, threads: int = SERVER_THREADS) -> Any:
    """A waitress server for the Dash ``app`` on ``host:port`` (port 0: any free port), bound but not yet
    serving: call ``.run()`` (it returns on Ctrl+C) and ``.close()``; ``.effective_port`` is the port.

    Example::

        server = make_server(create_app("runs"), "127.0.0.1", 8050)
        server.run()
    """
    from waitress import create_server

    from dashboards import config

    limit = int(config.SETTINGS["upload_max_bytes"]) * 4 // 3 + 256 * 1024  # as the app's own 413 limit
    try:
        return create_server(
            app.server,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=limit,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as error:
        raise ConfigError(
            f"Cannot serve on {host}:{port} ({error.strerror or error}); pass another --port (e.g. --port {port + 1})."
        ) from None


def port_free(host: str, port: int) -> None:
    """ConfigError naming the port if ``host:port`` cannot be bound (in use, or not this machine's)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"Cannot serve on {host}:{port} ({error.strerror or error}); another program uses that port, "
                f"or the address is not this machine's. Pass another --port (e.g. --port {port + 1})."
            ) from None


def quiet_server() -> None:
    """No "Serving on …" line from waitress (latentlens prints the URL itself) and no per-request log
    lines; warnings and errors are still logged."""
    import logging

    logging.getLogger("waitress").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    serve(args.path, args.host, args.port, cache_dir=args.cache_dir, open_browser=not args.no_browser)
    return 0

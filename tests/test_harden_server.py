"""The dashboard server enforces its own limits; it is served by a production WSGI server (waitress);
a bounded loopback load test (mixed pages and callbacks) through that server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dashboards.synthetic import make_synthetic_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("server") / "runs"
    make_synthetic_run(
        runs / "good", n_samples=24, blocks=1, steps=2, channels=8, images=True
    )
    return runs


@pytest.fixture(scope="module")
def app(root, tmp_path_factory):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(
        root, cache_dir=tmp_path_factory.mktemp("cache"), upload_max_bytes=64 * 1024
    )


def _edit(app, **overrides):
    from dashboards.app import page_module

    values = dict(
        n_clicks=1,
        state={"run": "good"},
        kind="sample",
        sample=0,
        upload=None,
        mode="target",
        direction=None,
        target="a blue circle",
        alpha=1.0,
        sweep=[],
        steps=4,
    )
    values.update(overrides)
    return page_module("editor")._run(lambda _progress: None, *values.values())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 100000, "steps must be a whole number between 1 and 100"),
        ("steps", 2.5, "between 1 and 100"),
        ("alpha", float("nan"), "α must be a number between -8 and 8"),
        ("alpha", 1e9, "between -8 and 8"),
        ("sample", -1, "sample must be a whole number"),
        ("target", "x" * 5000, "at most 500"),
    ],
)
def test_editor_inputs_are_bounded_on_the_server(app, field, value, message):
    started = time.perf_counter()
    result = _edit(app, **{field: value})
    assert (
        message in result["error"] and time.perf_counter() - started < 1.0
    )  # refused before any model work


def test_editor_jobs_are_capped_with_a_busy_answer(app):
    from dashboards import config
    from dashboards.limits import MAX_EDIT_JOBS, JobSlots

    slots = JobSlots(
        Path(config.setting("upload_dir")).parent / "job-slots", MAX_EDIT_JOBS
    )
    with slots.take() as first, slots.take() as second:
        assert {first, second} == {0, 1}
        result = _edit(app)
        assert result.get("busy") and "busy" in result["error"]
    with slots.take() as again:
        assert again == 0  # released when the jobs ended


def test_a_busy_answer_keeps_the_run_button_disabled_until_a_slot_is_free(app):
    """The busy state is a disabled control, not only a message: posted through the server."""
    from dashboards import config
    from dashboards.limits import MAX_EDIT_JOBS, JobSlots
    from dashboards.pages.editor import BUSY_LABEL, RUN_LABEL
    from tests.dash_requests import post_callback

    slots = JobSlots(Path(config.setting("upload_dir")).parent / "job-slots", MAX_EDIT_JOBS)
    assert slots.free() == MAX_EDIT_JOBS

    def busy(result=None, ticks=None, changed="editor-result-store.data"):
        return post_callback(app, "editor-run.disabled", {"editor-result-store.data": result,
                                                          "editor-busy-poll.n_intervals": ticks}, changed=[changed])

    with slots.take() as first, slots.take() as second:
        assert slots.free() == 0
        answer = _edit(app)
        status, body = busy(answer)
        assert status == 200 and body["response"]["editor-run"] == {"disabled": True, "children": BUSY_LABEL}
        assert body["response"]["editor-busy-poll"] == {"disabled": False}  # the page starts asking
        status, _ = busy(answer, 3, "editor-busy-poll.n_intervals")
        assert status == 204  # still busy: nothing changes
    assert slots.free() == MAX_EDIT_JOBS
    status, body = busy(answer, 4, "editor-busy-poll.n_intervals")
    assert body["response"]["editor-run"] == {"disabled": False, "children": RUN_LABEL}
    assert body["response"]["editor-busy-poll"] == {"disabled": True} and "slot is free" in str(body["response"])
    status, _ = busy({"before": "ab" * 8, "after": []})  # a finished edit: the running state already re-enabled it
    assert status == 204


def test_unknown_pages_return_404_and_big_requests_413(app):
    client = app.server.test_client()
    assert client.get("/probes").status_code == 200
    missing = client.get("/no-such-page")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    big = client.post(
        "/_dash-update-component",
        data=b"x" * (2 * 2**20),
        content_type="application/json",
    )
    assert big.status_code == 413


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_is_refused_before_the_url_is_printed(root, capsys):
    from latentlens.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["dashboard", str(root), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert (
        f"Cannot serve on 127.0.0.1:{port}" in err
        and "--port" in err
        and "open http" not in err
    )


@pytest.mark.slow
def test_served_dashboard_prints_no_banner_and_removes_its_temp_folder(root, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latentlens",
            "dashboard",
            str(root),
            "--port",
            str(port),
            "--no-browser",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import requests

        deadline = time.time() + 60
        served = None
        while time.time() < deadline:
            try:
                served = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                if served.status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert served is not None and served.headers["Server"] == "waitress"  # the production server
        assert [
            p.name for p in tmp.iterdir() if p.name.startswith("latentlens-dashboard-")
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert (
        "Serving Flask app" not in err
        and "development server" not in err
        and "Serving on" not in err
        and "open http" in err
    )
    assert not [
        p for p in tmp.iterdir() if p.name.startswith("latentlens-dashboard-")
    ], "temp folder left behind"


def _production_server(app):
    """The server `latentlens dashboard` runs (waitress), on a free loopback port, serving in a thread."""
    from latentlens.cli.commands.dashboard import make_server

    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    return server, server.effective_port


def test_the_dashboard_is_served_by_the_production_server(app):
    """waitress answers pages, images and callbacks, and enforces the request-size cap itself."""
    import requests

    server, port = _production_server(app)
    try:
        base = f"http://127.0.0.1:{port}"
        page = requests.get(base + "/probes", timeout=30)
        assert page.status_code == 200 and page.headers["Server"] == "waitress"
        assert "Werkzeug" not in page.headers.get("Server", "")
        image = requests.get(base + "/lens/image/3.png?run=good", timeout=30)
        assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
        answer = requests.post(base + "/_dash-update-component", data=json.dumps(_callback_payload(app)),
                               headers={"Content-Type": "application/json"}, timeout=30)
        assert answer.status_code == 200 and "good" in answer.text
        assert requests.get(base + "/nope", timeout=30).status_code == 404
        big = requests.post(base + "/_dash-update-component", data=b"x" * (2 * 2**20),
                            headers={"Content-Type": "application/json"}, timeout=30)
        assert big.status_code == 413
    finally:
        server.close()


def _callback_payload(app) -> dict:
    from dashboards import ids

    key = next(k for k in app.callback_map if f"{ids.RUN_SELECT}.options" in k)
    outputs = [
        {"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1]}
        for part in key.strip(".").split("...")
    ]
    return {
        "output": key,
        "outputs": outputs,
        "inputs": [{"id": ids.URL, "property": "pathname", "value": "/"}],
        "state": [{"id": ids.STATE, "property": "data", "value": {}}],
        "changedPropIds": [f"{ids.URL}.pathname"],
    }


@pytest.mark.slow  # a load test: 1,200 requests (~4 s)
def test_loopback_load_mixed_pages_and_callbacks(app, capsys):
    """1,200 requests from 8 threads (pages, images, callbacks, unknown paths): no error, p95 reported."""
    import requests

    server, port = _production_server(app)
    payload = json.dumps(_callback_payload(app))
    base = f"http://127.0.0.1:{port}"
    plan = [
        ("GET", "/", 200),
        ("GET", "/probes", 200),
        ("GET", "/lens/image/3.png?run=good", 200),
        ("POST", "/_dash-update-component", 200),
        ("GET", "/nope", 404),
        ("GET", "/_dash-layout", 200),
    ]
    total, workers = 1200, 8
    times: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        session = requests.Session()
        for n in range(k, total, workers):
            method, path, expected = plan[n % len(plan)]
            t0 = time.perf_counter()
            if method == "GET":
                response = session.get(base + path, timeout=30)
            else:
                response = session.post(
                    base + path,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
            elapsed = time.perf_counter() - t0
            with lock:
                times.append(elapsed)
                if response.status_code != expected:
                    failures.append(f"{method} {path}: {response.status_code}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    wall = time.perf_counter() - started
    server.close()
    times.sort()
    p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
    with capsys.disabled():
        print(
            f"\nload test: {len(times)} requests, {workers} threads, {wall:.1f} s, "
            f"{len(times) / wall:.0f} req/s, p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"{len(failures)} failures, load {os.getloadavg()[0]:.2f}"
        )
    assert not failures, failures[:5]
    assert len(times) == total and wall < 60


def test_editor_shows_the_source_and_its_prompt_before_an_edit_and_hides_what_does_not_apply(
    app,
):
    from dashboards.app import page_module

    editor = page_module("editor")
    preview = str(editor._preview("sample", 3, None, {"run": "good"}))
    assert "/lens/image/3.png?run=good" in preview and "editor-source-prompt" in preview
    from dashboards.data import open_run
    from dashboards import config

    prompt = open_run(config.index(), "good").manifest["prompts"][3]
    assert prompt in preview
    assert "between 0 and 23" in str(
        editor._preview("sample", 99, None, {"run": "good"})
    )
    assert "Upload a PNG" in str(editor._preview("upload", 0, None, {"run": "good"}))
    hidden = {"display": "none"}
    sample_box, upload_box, direction_box, target_box = editor._applicable(
        "sample", "target"
    )
    assert (
        sample_box != hidden
        and upload_box == hidden
        and direction_box == hidden
        and target_box != hidden
    )
    sample_box, upload_box, direction_box, target_box = editor._applicable(
        "upload", "direction"
    )
    assert (
        sample_box == hidden
        and upload_box != hidden
        and direction_box != hidden
        and target_box == hidden
    )

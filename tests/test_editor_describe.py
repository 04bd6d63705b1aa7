"""Describers: user text, shapes captioner, local transformers folder, OpenAI-compatible endpoint."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from latentlens.editor.describe import (
    EndpointDescriber,
    ShapesDescriber,
    TextDescriber,
    TransformersDescriber,
    make_describer,
    shapes_target,
)
from latentlens.errors import ConfigError, DescriberError
from latentlens.shapes import Attributes, canonical_caption, render


class _Handler(BaseHTTPRequestHandler):
    behaviour = "ok"  # ok | garbage | slow | error500 | error400 | flaky
    requests: list[dict] = []
    calls = 0

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):  # noqa: N802 - http.server API
        cls = type(self)
        cls.calls += 1
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        cls.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        mode = cls.behaviour
        if mode == "flaky" and cls.calls == 1:
            mode = "error500"
        if mode == "slow":  # well past the client's 0.2 s timeout; the server waits for it at shutdown
            time.sleep(0.6)
            mode = "ok"
        if mode in ("error500", "error400"):
            self.send_response(500 if mode == "error500" else 400)
            self.end_headers()
            self.wfile.write(b"{}")
            return
        payload = b"<html>not json" if mode == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": " a small red circle on the left "}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    """Joins its handler threads on close, so a slow handler finishes inside its own test."""

    daemon_threads = False  # ThreadingHTTPServer's daemon threads are not joined by server_close()

    def handle_error(self, request, client_address):
        # The timeout test's client hangs up on purpose; the slow handler's late reply then fails
        # with a broken pipe, which socketserver would print into whichever test runs next.
        pass


@pytest.fixture()
def server():
    _Handler.behaviour = "ok"
    _Handler.requests = []
    _Handler.calls = 0
    httpd = _Server(("127.0.0.1", 0), _Handler)
    # a short poll interval: shutdown() waits up to one interval (the default 0.5 s, at every teardown)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


IMAGE = np.full((8, 8, 3), 200, dtype=np.uint8)


def test_endpoint_sends_an_openai_chat_request_with_a_data_uri(server):
    d = EndpointDescriber(server, model="vlm", timeout=5, retries=0, api_key="k")
    assert d.describe(IMAGE) == "a small red circle on the left"
    req = _Handler.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    assert req["body"]["model"] == "vlm"
    parts = req["body"]["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:4] == b"\x89PNG"


def test_endpoint_that_is_down_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = EndpointDescriber(f"http://127.0.0.1:{port}/v1", model="vlm", timeout=2, retries=1, retry_wait=0.01)
    with pytest.raises(DescriberError, match="failed after 2 attempt"):
        d.describe(IMAGE)


def test_endpoint_timeout_is_a_clear_error(server):
    _Handler.behaviour = "slow"
    d = EndpointDescriber(server, model="vlm", timeout=0.2, retries=0)
    with pytest.raises(DescriberError, match="timed out"):
        d.describe(IMAGE)


def test_endpoint_garbage_and_refusals_are_clear_errors(server):
    _Handler.behaviour = "garbage"
    with pytest.raises(DescriberError, match="not an OpenAI chat completion"):
        EndpointDescriber(server, model="vlm", retries=0).describe(IMAGE)
    _Handler.behaviour = "error400"
    with pytest.raises(DescriberError, match="refused the request"):
        EndpointDescriber(server, model="vlm", retries=3).describe(IMAGE)


def test_endpoint_retries_after_a_server_error(server):
    _Handler.behaviour = "flaky"
    start = time.perf_counter()
    assert EndpointDescriber(server, model="vlm", retries=1, retry_wait=0.05).describe(IMAGE).startswith("a small red")
    assert _Handler.calls == 2
    assert time.perf_counter() - start >= 0.05, "the retry did not wait retry_wait seconds"


def test_endpoint_config_is_validated():
    with pytest.raises(ConfigError, match="http"):
        EndpointDescriber("localhost:8000", model="m")
    with pytest.raises(ConfigError, match="Unknown describer endpoint settings"):
        EndpointDescriber.from_config({"url": "http://x", "model": "m", "timeuot": 3})
    d = make_describer({"endpoint": {"url": "http://127.0.0.1:1/v1/chat/completions", "model": "m", "timeout": 3}})
    assert d.url.endswith("/v1/chat/completions") and d.timeout == 3


def test_transformers_describer_with_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DescriberError, match="does not exist"):
        TransformersDescriber(tmp_path / "no-such-model")


def test_text_and_shapes_describers():
    assert TextDescriber(" a cat ").describe(IMAGE) == "a cat"
    with pytest.raises(ConfigError, match="empty"):
        TextDescriber("")
    attrs = Attributes("square", "blue", "large", "top", "white")
    assert ShapesDescriber().describe(render(attrs).image) == canonical_caption(attrs)


def test_shapes_target_changes_one_attribute():
    src = "a small red circle on the left on a gray background"
    assert shapes_target(src, "color", "blue") == "a small blue circle on the left on a gray background"
    assert shapes_target(src, "position", "top") == "a small red circle at the top on a gray background"
    with pytest.raises(ConfigError):
        shapes_target(src, "texture", "rough")

"""The pipelines the tests share: one builder per kind, built at most once per session.

Tiny pipelines of the real diffusers classes (``latentlens.testing``), the trained toy model and the MiniLM text
encoder cost 0.1-0.4 s each to build; many test files need the same one. Tests that use a shared pipeline must
undo what they change (hooks, schedulers); a test that needs to mutate one for good builds its own.

    from tiny_pipes import get_pipe, minilm
    pipe = get_pipe("sd3")              # the same object in every test file
    tokenizer, encoder = minilm()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CACHE: dict[str, Any] = {}


def _builders() -> dict[str, Callable[[], Any]]:
    import latentlens
    from latentlens import testing
    from latentlens.toy.text_encoder import load_text_encoder

    return {
        "sd3": testing.tiny_sd3_pipeline,
        "sd35": lambda: testing.tiny_sd3_pipeline(dual_attention=True, qk_norm="rms_norm", num_layers=3),
        "flux": testing.tiny_flux_pipeline,
        "pixart": testing.tiny_pixart_pipeline,
        "sd": testing.tiny_sd_pipeline,
        "sdxl": testing.tiny_sdxl_pipeline,
        "toy": lambda: latentlens.load_pipeline("toy"),  # the trained toy model shipped in the package
        "minilm": load_text_encoder,  # (tokenizer, model), eval mode, no gradients
    }


KINDS = ("sd3", "sd35", "flux", "pixart", "sd", "sdxl", "toy")


def get_pipe(kind: str) -> Any:
    """The session's pipeline of ``kind`` (one of :data:`KINDS`), built on first use."""
    if kind not in _CACHE:
        builders = _builders()
        if kind not in builders or kind == "minilm":
            raise ValueError(f"unknown pipeline kind {kind!r}; one of {KINDS}")
        _CACHE[kind] = builders[kind]()
    return _CACHE[kind]


def minilm() -> tuple[Any, Any]:
    """The session's MiniLM ``(tokenizer, model)`` (the toy pipelines' text encoder)."""
    if "minilm" not in _CACHE:
        _CACHE["minilm"] = _builders()["minilm"]()
    return _CACHE["minilm"]


def toy_blocks() -> int:
    """The number of joint blocks of the bundled toy weights, whichever version is installed."""
    import json

    from latentlens.toy import WEIGHTS_DIR

    return int(json.loads((WEIGHTS_DIR / "transformer" / "config.json").read_text())["num_layers"])

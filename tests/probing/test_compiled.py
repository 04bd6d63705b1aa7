"""A ``torch.compile``'d denoiser is recorded and steered exactly as its eager self, then runs compiled again.

Compiled graphs do not run Python hooks added after compilation; latentlens runs compiled code eagerly
while its hooks are installed (``torch.compiler.set_stance("force_eager")``) and says so once. The
``eager`` backend keeps these tests fast (Dynamo traces, no code generation); inductor behaves alike.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from latentlens import compat, record, steer, testing
from probing_ref import get_pipe, run_pipe

SITES = "blocks.*.resid_out.*"


class CountingBackend:
    """A torch.compile backend that runs the traced graph and counts how often compiled code ran."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            self.runs += 1
            return graph.forward(*args)

        return run


def _compiled(model: torch.nn.Module, how: str, backend: CountingBackend) -> torch.nn.Module:
    """``model`` compiled ``how``: the wrapper torch.compile returns, Module.compile(), or per block."""
    if how == "wrapper":
        return torch.compile(model, backend=backend)
    if how == "in place":
        model.compile(backend=backend)
    else:
        for block in model.transformer_blocks:
            block.compile(backend=backend)
    return model


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setattr(compat, "_NOTICED", set())
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("how", ["wrapper", "in place", "per block"])
def test_compiled_transformer_records_what_the_eager_one_does_then_runs_compiled_again(how):
    eager = testing.tiny_sd3_transformer()
    inputs = testing.sd3_inputs(eager, text_tokens=6)
    with torch.no_grad(), record(eager, sites=SITES, attention="*") as reference:
        expected = eager(**inputs)[0]
    backend = CountingBackend()
    model = _compiled(copy.deepcopy(eager), how, backend)
    with torch.no_grad():
        model(**inputs)
    assert backend.runs > 0, "the model runs compiled before recording"
    before = backend.runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", compat.CompatNotice)
        with torch.no_grad(), record(model, sites=SITES, attention="*") as rec:
            out = model(**inputs)[0]
    assert backend.runs == before, "compiled code does not run while latentlens's hooks are installed"
    notices = [str(w.message) for w in caught if issubclass(w.category, compat.CompatNotice)]
    assert len(notices) == 1 and "is compiled; torch.compile graphs skip Python hooks" in notices[0], notices
    assert rec.names == reference.names
    for name in reference.names:
        torch.testing.assert_close(rec[name], reference[name], atol=0, rtol=0, msg=name)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    with torch.no_grad():
        model(**inputs)
    assert backend.runs > before, "the model runs compiled again once the recording ends"


def test_compiled_pipeline_transformer_is_steered_and_recorded_like_the_eager_one():
    pipe = get_pipe("sd3")
    with record(pipe, sites="blocks.1.resid_out.img") as eager_rec:
        eager_image = run_pipe(pipe, "sd3")
    direction = torch.ones(pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim)
    with steer(pipe, "blocks.0.resid_out.img", direction, alpha=0.5):
        eager_steered = run_pipe(pipe, "sd3")
    original = pipe.transformer
    pipe.transformer = torch.compile(original, backend=CountingBackend())
    try:
        with record(pipe, sites="blocks.1.resid_out.img") as rec:
            image = run_pipe(pipe, "sd3")
        with steer(pipe, "blocks.0.resid_out.img", direction, alpha=0.5):
            steered = run_pipe(pipe, "sd3")
    finally:
        pipe.transformer = original
    assert np.array_equal(image, eager_image) and np.array_equal(steered, eager_steered)
    assert not np.array_equal(steered, image)
    torch.testing.assert_close(rec["blocks.1.resid_out.img"], eager_rec["blocks.1.resid_out.img"], atol=0, rtol=0)

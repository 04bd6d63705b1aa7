"""Fast exact maps on diffusers' attention backends that are not torch SDPA (flash-attn 2/3, sage, hub kernels).

flash-attn is CUDA-only and cannot be installed on a CPU machine, so the ``flash`` backend here is a stand-in
with flash-attn's contract as diffusers calls it (``query`` ``[batch, token, head, channel]``; with
``return_lse=True`` it returns ``(out, lse [batch, head, query])``). It computes with torch's own CPU flash
kernel, so the log-sum-exp handed over is a real kernel's. Everything around it is diffusers' own: Flux's
processor, ``set_attention_backend``, the dispatcher and its backend registry. ``tests/probing/test_cuda.py``
runs the real flash-attn where it is installed.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend

import latentlens.attention_lse as attention_lse
from latentlens import compat, record
from latentlens.attention_lse import LSECapture
from probing_ref import get_pipe, run_pipe
from test_attention import ATOL, check_quadrants_equal_float64_softmax, record_maps_with_notices

REGISTRY = compat.attention_backend_registry().value
FLASH = AttentionBackendName.FLASH


def flash_attn_like(lse_layout: str = "bhq", lse_shift: float = 0.0, out_shift: float = 0.0):
    """A ``flash`` backend with diffusers' ``_flash_attention`` signature, computing on torch's CPU flash kernel.

    ``lse_layout`` ``"bqh"`` returns the LSE as diffusers' own ops do; ``lse_shift`` / ``out_shift`` make a
    backend whose LSE or whose ``return_lse=True`` output is wrong.
    """

    def flash(
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        window_size=(-1, -1),
        return_lse=False,
        _parallel_config=None,
    ):
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [batch, head, token, channel]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        out = out.transpose(1, 2)  # [batch, token, head, channel]
        if not return_lse:
            return out
        lse = lse + lse_shift if lse_layout == "bhq" else (lse + lse_shift).transpose(1, 2)
        return out + out_shift, lse

    return flash


@pytest.fixture
def flux_on(monkeypatch):
    """``use(fn)``: the tiny Flux pipeline with its attention on a ``flash`` backend computed by ``fn``."""
    monkeypatch.setattr(compat, "_NOTICED", set())
    monkeypatch.setattr(attention_lse, "VERIFIED", {})
    monkeypatch.setattr(attention_dispatch, "_CAN_USE_FLASH_ATTN", True)  # what set_attention_backend checks
    pipe = get_pipe("flux")
    stack = []

    def use(fn):
        monkeypatch.setitem(REGISTRY.backends, FLASH, fn)
        ctx = attention_backend("flash")  # restores diffusers' process-wide default afterwards
        ctx.__enter__()
        stack.append(ctx)
        pipe.transformer.set_attention_backend("flash")
        return pipe

    yield use
    pipe.transformer.reset_attention_backend()
    for ctx in stack[::-1]:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("layout", ["bhq", "bqh"])
def test_flash_backend_hands_over_its_lse_image_unchanged_maps_exact(flux_on, layout):
    """On a backend that returns its LSE (in flash-attn's or diffusers' layout), every attention call takes the
    fast path: the image is the backend's own, bit for bit, and the maps equal the float64 softmax."""
    backend = flash_attn_like(layout)
    pipe = flux_on(backend)
    plain = run_pipe(pipe, "flux")
    recorded, notices, fast = record_maps_with_notices(pipe, "flux")
    n_attn = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert fast == 2 * n_attn, "every block's attention call at every step hands over its LSE"
    assert notices == []
    assert (recorded == plain).all(), "recording on the flash backend changed the image"
    check_quadrants_equal_float64_softmax(pipe, "flux", "mean", ATOL)
    assert REGISTRY.backends[FLASH] is backend, "the backend registry holds the backend itself again after recording"


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (flash_attn_like(lse_shift=0.5), "does not match a float32 reference"),
        (flash_attn_like(out_shift=1e-3), "differs from its own"),
    ],
)
def test_a_backend_whose_lse_fails_verification_falls_back_with_one_notice(flux_on, broken, why):
    """A backend whose LSE is wrong, or whose output changes when asked for it, is caught on its first call:
    one notice names it, the maps recompute the normaliser (still exact) and the image stays the backend's own."""
    pipe = flux_on(broken)
    plain = run_pipe(pipe, "flux")
    recorded, notices, fast = record_maps_with_notices(pipe, "flux")
    assert fast == 0
    assert len(notices) == 1 and "diffusers-flash" in notices[0] and why in notices[0], notices
    assert (recorded == plain).all()
    check_quadrants_equal_float64_softmax(pipe, "flux", "mean", ATOL)


def test_masked_calls_are_left_to_the_backend_and_outside_recordings_nothing_is_wrapped(flux_on):
    """A call with a mask (or dropout, causal, GQA, context parallelism) goes to the backend untouched; and
    the backend registry is only wrapped while a recording with maps is open, nested ones included."""
    backend = flash_attn_like()
    pipe = flux_on(backend)
    with record(pipe, attention="*"):
        with record(pipe, attention="blocks.0.attn.img2txt"):
            wrapped = REGISTRY.backends[FLASH]
            assert wrapped is not backend and wrapped.__wrapped__ is backend
            q = torch.randn(1, 6, 2, 8)
            mask = torch.ones(1, 6, dtype=torch.bool)
            cap = LSECapture()
            with cap:
                out = wrapped(query=q, key=q, value=q, attn_mask=mask)
            assert cap.attention_calls == 1 and cap.result is None
            assert torch.equal(out, backend(query=q, key=q, value=q))
        assert REGISTRY.backends[FLASH] is wrapped, "the outer recording still needs the wrapper"
    assert REGISTRY.backends[FLASH] is backend
    with record(pipe, "blocks.0.resid_out.img"):
        assert REGISTRY.backends[FLASH] is backend, "a recording without maps leaves the registry alone"

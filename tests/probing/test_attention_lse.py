"""Fast attention maps: the row normaliser is taken from the model's own SDPA call (docs/design.md, "Capture").

The model output must stay bit-identical, the maps must equal the recomputing fallback path, and
the torch-function mode must never outlive the attention call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import latentlens.attention as attention
import latentlens.attention_lse as attention_lse
from latentlens import record
from latentlens.attention_lse import LSECapture
from probing_ref import get_pipe, run_pipe


def _record_maps(pipe, kind):
    with record(pipe, attention="*", cfg="both") as rec:
        out = run_pipe(pipe, kind)
    return out, {n: rec[n].clone() for n in rec.names}


def test_fast_path_is_bit_identical_and_matches_fallback(kind, monkeypatch):
    pipe = get_pipe(kind)
    plain = run_pipe(pipe, kind)
    used = []
    real = attention.columns_from_lse
    monkeypatch.setattr(attention, "columns_from_lse", lambda *a, **kw: used.append(1) or real(*a, **kw))
    out, fast = _record_maps(pipe, kind)
    assert np.array_equal(out, plain), "recording with the fast path changed the model output"
    # every architecture has at least one unmasked self/joint attention on CPU (PixArt: attn1 only)
    assert len(used) > 0
    monkeypatch.setattr(attention_lse, "_kernel", lambda a: None)
    used.clear()
    out_slow, slow = _record_maps(pipe, kind)
    assert not used
    assert np.array_equal(out_slow, plain)
    assert fast.keys() == slow.keys() and fast
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=0, msg=name)
    assert torch._C._len_torch_function_stack() == 0


def test_sdpa_mode_removed_when_attention_raises():
    pipe = get_pipe("sd3")
    attn = pipe.transformer.transformer_blocks[0].attn

    def boom(module, args, out):
        raise RuntimeError("boom")

    h = attn.to_out[0].register_forward_hook(boom)  # raises after the SDPA call, inside the attention module
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with record(pipe, attention="*"):
                run_pipe(pipe, "sd3")
    finally:
        h.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert not attn._forward_hooks and not attn._forward_pre_hooks


def test_capture_only_for_eligible_calls():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8) for _ in range(3))
    cap = LSECapture()
    with cap:
        out = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert cap.result is not None and cap.result.lse.shape == (2, 3, 20)
    torch.testing.assert_close(cap.result.lse, torch.logsumexp(q @ k.transpose(-1, -2) * 8**-0.5, -1),
                               atol=1e-5, rtol=0)
    mask = torch.ones(20, 20, dtype=torch.bool).tril()
    cap = LSECapture()
    with cap:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert cap.result is None
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

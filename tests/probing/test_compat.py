"""Guarded private APIs and the verified fast-map kernels (the GPU path's logic, exercised on CPU).

Each fused SDPA kernel is checked once per (device, dtype, backend) against SDPA's own output and a
float32 log-sum-exp; a kernel that fails the check, raises or is missing makes the maps fall back to
the exact recomputation with one notice, and never changes the model output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import latentlens.attention as attention
import latentlens.attention_lse as attention_lse
from latentlens import compat, record
from latentlens.attention_lse import LSECapture
from probing_ref import get_pipe, run_pipe

CPU_FLASH = ("cpu", compat.FLASH_BACKEND)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(compat, "_NOTICED", set())
    monkeypatch.setattr(attention_lse, "VERIFIED", {})


def _maps(pipe, kind="sd3"):
    with record(pipe, attention="*", cfg="both") as rec:
        out = run_pipe(pipe, kind)
    return out, {n: rec[n].clone() for n in rec.names}


@pytest.fixture(scope="module")
def sd3_reference():
    """Output and maps of the tiny SD3 pipeline with the fast path switched off (exact recomputation)."""
    pipe = get_pipe("sd3")
    mp = pytest.MonkeyPatch()
    mp.setattr(attention_lse, "_kernel", lambda a: None)
    try:
        out, maps = _maps(pipe)
    finally:
        mp.undo()
    return run_pipe(pipe, "sd3"), out, maps


def _assert_exact(sd3_reference, out, maps):
    plain, ref_out, ref_maps = sd3_reference
    assert np.array_equal(out, plain), "the recording changed the model output"
    assert maps.keys() == ref_maps.keys() and maps
    for name in maps:
        torch.testing.assert_close(maps[name], ref_maps[name], atol=1e-6, rtol=0, msg=name)


def test_every_guarded_symbol_is_found_on_the_pinned_versions():
    report = compat.report()
    assert report and all(v == "ok" for v in report.values()), report
    # the CUDA kernels of the fast path are registered (their schemas exist in CPU builds too)
    backends = {key for key in compat.SDPA_KERNELS if key[0] == "cuda"}
    assert backends == {("cuda", compat.FLASH_BACKEND), ("cuda", compat.EFFICIENT_BACKEND),
                        ("cuda", compat.CUDNN_BACKEND)}


def test_kernel_lse_layouts_are_normalised():
    lse = torch.randn(2, 3, 40)
    assert compat.normalise_lse(lse, 40) is lse
    padded = torch.randn(2, 3, 64)  # memory-efficient kernel: query axis padded to a multiple of 32
    assert torch.equal(compat.normalise_lse(padded, 40), padded[..., :40])
    cudnn = torch.randn(2, 3, 40, 1)  # cuDNN from torch 2.9
    assert torch.equal(compat.normalise_lse(cudnn, 40), cudnn[..., 0])
    assert compat.normalise_lse(torch.randn(2, 3, 39), 40) is None
    assert compat.normalise_lse(torch.randn(2, 3, 40, 2), 40) is None


def test_verified_once_per_device_dtype_backend():
    torch.manual_seed(0)
    before = LSECapture.verifications
    for dtype in (torch.float32, torch.float32, torch.bfloat16, torch.bfloat16):
        q, k, v = (torch.randn(1, 2, 24, 16, dtype=dtype) for _ in range(3))
        cap = LSECapture()
        with cap:
            out = F.scaled_dot_product_attention(q, k, v)
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
        assert cap.result is not None
        ref = torch.logsumexp(q.float() @ k.float().transpose(-1, -2) * 16**-0.5, -1)
        torch.testing.assert_close(cap.result.lse.float(), ref, atol=4e-3, rtol=1e-4)
    assert LSECapture.verifications - before == 2
    assert attention_lse.VERIFIED == {("cpu", "float32", "flash"): True, ("cpu", "bfloat16", "flash"): True}


def _faulty(kind):
    shim, run = compat.SDPA_KERNELS[CPU_FLASH]

    def runner(q, k, v, scale):
        if kind == "raise":
            raise RuntimeError("kernel signature changed")
        out, lse = run(q, k, v, scale)
        if kind == "log2":  # a kernel that returned a base-2 log-sum-exp
            return out, lse * 1.4426950408889634
        if kind == "output":
            return out + 1e-3, lse
        return out, lse[..., :-1]  # a layout that is not understood

    return shim, runner


@pytest.mark.parametrize("kind", ["log2", "output", "raise", "shape"])
def test_faulty_kernel_falls_back_with_one_notice(kind, monkeypatch, sd3_reference):
    monkeypatch.setitem(compat.SDPA_KERNELS, CPU_FLASH, _faulty(kind))
    used = []
    real = attention.columns_from_lse
    monkeypatch.setattr(attention, "columns_from_lse", lambda *a, **kw: used.append(1) or real(*a, **kw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, maps = _maps(get_pipe("sd3"))
        out2, maps2 = _maps(get_pipe("sd3"))
    notices = [w for w in caught if issubclass(w.category, compat.CompatNotice)]
    assert len(notices) == 1, [str(w.message) for w in caught]
    assert "flash attention kernel on cpu (float32)" in str(notices[0].message)
    assert "recompute the softmax normaliser" in str(notices[0].message)
    assert not used, "a kernel that failed its check still served the maps"
    assert attention_lse.VERIFIED[("cpu", "float32", "flash")] is False
    _assert_exact(sd3_reference, out, maps)
    _assert_exact(sd3_reference, out2, maps2)
    assert torch._C._len_torch_function_stack() == 0


def test_missing_private_symbols_fall_back(monkeypatch, sd3_reference):
    gone = compat.Shim("torch.fused_sdp_choice", None, "torch._fused_sdp_choice not found")
    monkeypatch.setattr(compat, "FUSED_SDP_CHOICE", gone)
    with pytest.warns(compat.CompatNotice, match="torch._fused_sdp_choice not found.*exact slow path"):
        out, maps = _maps(get_pipe("sd3"))
    _assert_exact(sd3_reference, out, maps)

    monkeypatch.setattr(compat, "MODE_STACK", compat.Shim("torch.function_mode_stack", None, "gone"))
    before = LSECapture.fast_calls
    with pytest.warns(compat.CompatNotice, match="function_mode_stack is unavailable"):
        out, maps = _maps(get_pipe("sd3"))
    assert LSECapture.fast_calls == before
    _assert_exact(sd3_reference, out, maps)


def test_a_changed_attention_backend_registry_falls_back(monkeypatch, sd3_reference):
    """A diffusers whose backend registry moved: one notice, the SDPA fast path still serves, maps exact."""
    changed = compat.Shim("diffusers._AttentionBackendRegistry", None, "it has no _backends table")
    monkeypatch.setattr(compat, "attention_backend_registry", lambda: changed)
    before = LSECapture.fast_calls
    with pytest.warns(compat.CompatNotice, match="_AttentionBackendRegistry is unavailable.*exact slow path"):
        out, maps = _maps(get_pipe("sd3"))
    assert LSECapture.fast_calls > before
    _assert_exact(sd3_reference, out, maps)


def test_fast_path_used_when_kernels_verify(sd3_reference):
    before = LSECapture.fast_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", compat.CompatNotice)
        out, maps = _maps(get_pipe("sd3"))
    assert LSECapture.fast_calls > before
    _assert_exact(sd3_reference, out, maps)


def test_cache_context_without_private_attribute():
    class Manager:  # a diffusers StateManager that keeps its context elsewhere
        pass

    with pytest.warns(compat.CompatNotice, match="_context"):
        assert compat.cache_context_name(Manager()) is None


def test_store_uses_zarrs_path_when_the_chunk_layout_changed(tmp_path, monkeypatch):
    from latentlens.store import RunStore, open_run

    broken = compat.Shim("zarr.chunk_key_layout", None, "the chunk file c/1/0/0 does not hold the raw bytes")
    monkeypatch.setattr(compat, "zarr_chunk_layout", lambda: broken)
    data = np.arange(3 * 4 * 5 * 2, dtype="float32").reshape(3, 4, 5, 2)  # [sample, step, token, channel]
    store = RunStore.create(tmp_path / "run", {"prompts": ["a", "b", "c"]}, samples_per_chunk=3)
    with pytest.warns(compat.CompatNotice, match="direct chunk I/O uses the exact slow path"):
        store.write_samples([0, 1, 2], {"x": data}, dims={"x": ("sample", "step", "token", "channel")})
    store.mark_complete([0, 1, 2])
    store.close()
    run = open_run(tmp_path / "run")
    assert np.array_equal(run["x"][:, 2], data[:, 2])
    assert np.array_equal(np.asarray(run["x"]), data)

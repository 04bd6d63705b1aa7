"""The CUDA capture path: exact sites and maps, unchanged images, asynchronous copies, deferred NaN screen.

These need a CUDA device; ``benchmarks/gpu.sh`` runs them on the GPU machine before its measurements.
On a CPU-only machine they are skipped with that reason (the CPU path has its own tests beside them).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from latentlens import record, site_names
from latentlens.names import is_map
from probing_ref import run_pipe
from test_attention import check_quadrants_equal_float64_softmax
from test_record import check_every_site_equals_an_independent_hook

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; benchmarks/gpu.sh runs these on the GPU machine"
)
GPU_KINDS = ("sd3", "sd35", "flux", "pixart")
#: bf16 attention rounds q and k to 8 bits of mantissa before QKᵀ; the float64 reference does not
BF16_ATOL = 2e-2


def _cuda_pipe(kind: str, dtype: torch.dtype = torch.float32):
    from latentlens import testing

    build = {
        "sd3": testing.tiny_sd3_pipeline,
        "sd35": lambda: testing.tiny_sd3_pipeline(dual_attention=True, qk_norm="rms_norm", num_layers=3),
        "flux": testing.tiny_flux_pipeline,
        "pixart": testing.tiny_pixart_pipeline,
    }[kind]
    return build().to("cuda", dtype)


@pytest.mark.parametrize("kind", GPU_KINDS)
def test_cuda_output_unchanged_and_every_site_equals_an_independent_hook(kind):
    pipe = _cuda_pipe(kind)
    plain = run_pipe(pipe, kind)
    names = [n for n in site_names(pipe) if not is_map(n)]
    with record(pipe, sites=names, attention="*", cfg="both") as rec:
        recorded = run_pipe(pipe, kind)
    assert np.array_equal(plain, recorded)
    assert all(rec[n].device.type == "cpu" for n in names)
    check_every_site_equals_an_independent_hook(pipe, kind)


@pytest.mark.parametrize("kind", GPU_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_maps_equal_the_float64_reference(kind, dtype):
    atol = 1e-5 if dtype == torch.float32 else BF16_ATOL
    check_quadrants_equal_float64_softmax(_cuda_pipe(kind, dtype), kind, "mean", atol)


def test_cuda_copies_are_queued_not_waited_for_and_land_exactly():
    from latentlens.adapters.base import CallState
    from latentlens.capture.accumulator import Accumulator

    acc = Accumulator(torch.float32, mean_steps=False)
    x = torch.randn(2, 64, 32, device="cuda")  # [batch, token, channel]
    original = x.clone()
    acc.put("blocks.0.resid_out.img", x, ("batch", "token", "channel"), CallState(step=0))
    assert acc.copies_in_flight == 1
    x.add_(1.0)  # the model overwrites its tensor in place after the copy was queued: stream order protects it
    data, dims = acc.stacked("blocks.0.resid_out.img", steps=[0])
    assert acc.copies_in_flight == 0 and dims == ("step", "batch", "token", "channel")
    assert data.device.type == "cpu" and torch.equal(data[0], original.cpu())


def test_cuda_nan_screen_warns_once_at_the_end_of_the_call():
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer().to("cuda")
    inputs = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in sd3_inputs(model).items()}
    inputs["encoder_hidden_states"][0, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), record(model, sites="blocks.0.resid_out.txt") as rec:
            model(**inputs)
            model(**inputs)
        rec["blocks.0.resid_out.txt"]
    msgs = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert len(msgs) == 1 and "blocks.0.resid_out.txt" in msgs[0] and "step 0" in msgs[0]


def test_cuda_mean_over_steps_equals_the_mean_of_the_steps():
    pipe = _cuda_pipe("sd3")
    with record(pipe, sites="blocks.0.resid_out.img") as per_step:
        run_pipe(pipe, "sd3")
    with record(pipe, sites="blocks.0.resid_out.img", reduce="mean_steps") as mean:
        run_pipe(pipe, "sd3")
    expected = per_step["blocks.0.resid_out.img"].double().mean(0, keepdim=True).float()
    torch.testing.assert_close(mean["blocks.0.resid_out.img"], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("backend", "package"),
    [("native", None), ("_native_cudnn", None), ("_native_efficient", None), ("_native_flash", None),
     ("_native_math", None), ("flash", "flash_attn"), ("_flash_3", "flash_attn_interface")],
)
def test_cuda_flux_on_diffusers_attention_backends_keeps_the_image_and_reuses_the_lse(backend, package):
    """Each of diffusers' attention backends for Flux, bf16 on the GPU: the image is the backend's own, the maps
    equal the float64 reference, and the row log-sum-exp is reused: from the fused torch-SDPA kernels (the math
    kernel has none) and from flash-attn 2 / 3, which hand it over through the dispatcher (verified once)."""
    if package is not None:
        pytest.importorskip(package, reason=f"the {backend} backend needs the {package} package (not installed)")
    from diffusers.models.attention_dispatch import attention_backend

    from latentlens.attention_lse import LSECapture

    pipe = _cuda_pipe("flux", torch.bfloat16)
    with attention_backend(backend):  # restores diffusers' process-wide default afterwards
        pipe.transformer.set_attention_backend(backend)
        plain = run_pipe(pipe, "flux")
        before = LSECapture.fast_calls
        with record(pipe, attention="*"):
            recorded = run_pipe(pipe, "flux")
        assert np.array_equal(plain, recorded), f"recording changed the image on the {backend} backend"
        assert (LSECapture.fast_calls > before) is (backend != "_native_math")
        check_quadrants_equal_float64_softmax(pipe, "flux", "mean", BF16_ATOL)

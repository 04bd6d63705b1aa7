"""Attention quadrants equal softmax(QKᵀ/√d) computed eagerly in float64 from the module's weights.

Tolerance: atol 1e-5 on probabilities (latentlens computes in float32 from the float32 model's q/k;
the reference recomputes q/k from the captured float32 inputs in float64). Rows are normalised over
all keys of the joint sequence before slicing, so a quadrant's rows do not sum to 1.
"""

from __future__ import annotations

import pytest
import torch

from latentlens import record
from latentlens.attention import softmax_columns
from probing_ref import Tap, get_pipe, ref_probs, run_pipe

ATOL = 1e-5


def _attn_modules(kind, t):
    """[(name prefix, module, how)] for every attention whose maps are recorded."""
    out = []
    if kind == "pixart":
        for i, b in enumerate(t.transformer_blocks):
            out.append((f"blocks.{i}.attn", b.attn1, "self"))
            out.append((f"blocks.{i}.attn", b.attn2, "cross"))
        return out
    blocks = list(t.transformer_blocks) + list(getattr(t, "single_transformer_blocks", []))
    n_double = len(t.transformer_blocks)
    for i, b in enumerate(blocks):
        if kind == "flux":
            out.append((f"blocks.{i}.attn", b.attn, "txt_img" if i < n_double else "joint"))
        else:
            out.append((f"blocks.{i}.attn", b.attn, "img_txt"))
            if getattr(b, "attn2", None) is not None:
                out.append((f"blocks.{i}.attn2", b.attn2, "self"))
    return out


@pytest.mark.parametrize("heads", ["mean"])
def test_quadrants_equal_float64_softmax(kind, heads):
    check_quadrants_equal_float64_softmax(get_pipe(kind), kind, heads, ATOL)


def check_quadrants_equal_float64_softmax(pipe, kind: str, heads: str, atol: float) -> None:
    """Every recorded quadrant of ``pipe`` (any device and dtype) equals the float64 softmax within ``atol``."""
    t = pipe.transformer
    mods = _attn_modules(kind, t)
    pre_calls = {k: [] for k in range(len(mods))}
    handles = [
        m.register_forward_pre_hook(lambda mod, a, kw, k=k: pre_calls[k].append((a, dict(kw))), with_kwargs=True)
        for k, (_, m, _) in enumerate(mods)
    ]
    block_txt = Tap({"t": t})
    try:
        with record(pipe, attention="*", cfg="both", heads=heads) as rec:
            run_pipe(pipe, kind)
    finally:
        for h in handles:
            h.remove()
        block_txt.close()
    checked = 0
    for k, (prefix, mod, how) in enumerate(mods):
        for step, (args, kw) in enumerate(pre_calls[k]):
            x = kw.get("hidden_states", args[0] if args else None)
            ctx = kw.get("encoder_hidden_states")
            rope = kw.get("image_rotary_emb")
            if how == "cross":
                p = ref_probs(mod, x, ctx, order="joint", mask=kw.get("attention_mask"), cross=True)
                quads = {"img2txt": p}
            elif how == "self":
                quads = {"img2img": ref_probs(mod, x, None, order="joint", mask=kw.get("attention_mask"))}
            else:
                p = ref_probs(mod, x, ctx, order=how, rope=rope)
                if how == "img_txt":
                    n_img = x.shape[1]
                    img, txt = slice(0, n_img), slice(n_img, None)
                elif how == "txt_img":
                    n_txt = ctx.shape[1]
                    txt, img = slice(0, n_txt), slice(n_txt, None)
                else:  # Flux single-stream: one joint sequence [text, image]
                    n_txt = block_txt.calls["t"][step]["kwargs"]["encoder_hidden_states"].shape[1]
                    txt, img = slice(0, n_txt), slice(n_txt, None)
                quads = {"img2txt": p[:, img, txt], "txt2img": p[:, txt, img],
                         "img2img": p[:, img, img], "txt2txt": p[:, txt, txt]}
            for q, ref in quads.items():
                got, ref = rec[f"{prefix}.{q}"][step].double(), ref.cpu()
                assert got.shape == ref.shape, (prefix, q)
                torch.testing.assert_close(got, ref, atol=atol, rtol=0, msg=f"{prefix}.{q} step {step}")
                checked += 1
    assert checked >= 8


def test_per_head_maps_and_head_mean_agree():
    pipe = get_pipe("flux")
    with record(pipe, attention="blocks.3.attn.img2txt", heads="all") as per_head:
        run_pipe(pipe, "flux")
    with record(pipe, attention="blocks.3.attn.img2txt") as mean:
        run_pipe(pipe, "flux")
    x = per_head["blocks.3.attn.img2txt"]
    assert per_head.dims("blocks.3.attn.img2txt") == ("step", "batch", "head", "query", "key")
    assert x.shape == (2, 1, 2, 64, 8)
    torch.testing.assert_close(x.mean(2), mean["blocks.3.attn.img2txt"], atol=1e-7, rtol=0)


def test_chunking_is_exact_and_columns_are_normalised_over_all_keys():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 8, generator=g)
    k = torch.randn(2, 3, 70, 8, generator=g)
    full = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8**0.5, dim=-1)  # [b, h, 50, 70]
    cols = {"a": slice(0, 20), "b": torch.tensor([3, 40, 69])}
    one = softmax_columns(q, k, cols, scale=8**-0.5, heads="all")
    tiny = softmax_columns(q, k, cols, scale=8**-0.5, heads="all", chunk_bytes=1)  # one query row per chunk
    for name, sel in cols.items():
        ref = full[..., sel]
        torch.testing.assert_close(one[name].double(), ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(tiny[name], one[name], atol=1e-6, rtol=0)  # float32 matmul blocking
    assert (one["a"].sum(-1) < 1).all()  # a quadrant's rows need not sum to 1


def test_only_requested_work_is_done(monkeypatch):
    """Maps are computed only for requested blocks, steps and query streams."""
    import latentlens.capture.maps as recorder_mod

    pipe = get_pipe("sd3")
    seen = []
    real = recorder_mod.quadrant_maps

    def spy(spec, state, *a, **kw):
        seen.append((spec.prefix, state.step, tuple(a[2])))
        return real(spec, state, *a, **kw)

    monkeypatch.setattr(recorder_mod, "quadrant_maps", spy)
    with record(pipe, attention="blocks.1.attn.img2txt", steps=[1]):
        run_pipe(pipe, "sd3")
    assert seen == [("blocks.1.attn", 1, ("img2txt",))]


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_fused_qkv_projections_give_the_same_maps(arch):
    from latentlens import testing

    if arch == "sd3":
        model = testing.tiny_sd3_transformer()  # diffusers' fused SD3 processor ignores qk-norms
        inputs = testing.sd3_inputs(model, text_tokens=6)
    else:
        model = testing.tiny_flux_transformer(num_layers=1, num_single_layers=1)
        inputs = testing.flux_inputs(model)
    with torch.no_grad():
        with record(model, attention="*") as plain:
            ref = model(**inputs)[0]
        model.fuse_qkv_projections()
        try:
            with record(model, attention="*") as fused:
                out = model(**inputs)[0]
        finally:
            model.unfuse_qkv_projections()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for name in plain.names:
        torch.testing.assert_close(fused[name], plain[name], atol=1e-6, rtol=0, msg=name)


def record_maps_with_notices(pipe, kind: str):
    """``(image, notices, fast calls)`` of one run of ``pipe`` recording every attention map: the CompatNotice
    texts it raised and how many attention calls reused a kernel's log-sum-exp."""
    import warnings

    from latentlens import compat
    from latentlens.attention_lse import LSECapture

    before = LSECapture.fast_calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", compat.CompatNotice)
        with record(pipe, attention="*"):
            image = run_pipe(pipe, kind)
    notices = [str(w.message) for w in caught if issubclass(w.category, compat.CompatNotice)]
    return image, notices, LSECapture.fast_calls - before


@pytest.mark.parametrize(
    ("backend", "fast", "notice"),
    [("native", True, None), ("_native_flash", True, None), ("_native_math", False, None), ("flex", False, "flex")],
)
def test_flux_on_diffusers_attention_backends_keeps_the_image_and_exact_maps(backend, fast, notice, monkeypatch):
    """Flux's processor calls diffusers' attention dispatcher: whichever backend it picks, the image is the
    backend's own and the maps are exact. The row log-sum-exp is reused where the backend runs a fused torch
    SDPA kernel (or hands its LSE over: tests/probing/test_attention_backends.py); a math kernel quietly takes
    the exact recomputation, and flex, whose diffusers wrapper cannot return its LSE, says so in one notice."""
    from diffusers.models.attention_dispatch import attention_backend

    from latentlens import compat

    monkeypatch.setattr(compat, "_NOTICED", set())

    pipe = get_pipe("flux")
    # set_attention_backend also sets diffusers' process-wide default, which reset_attention_backend leaves
    # behind; the context manager restores it for the other tests
    with attention_backend(backend):
        pipe.transformer.set_attention_backend(backend)
        try:
            plain = run_pipe(pipe, "flux")
            recorded, notices, fast_calls = record_maps_with_notices(pipe, "flux")
            assert (fast_calls > 0) is fast
            assert len(notices) == (0 if notice is None else 1), notices  # once per process, not per block or step
            assert notice is None or f"diffusers-{notice}" in notices[0]
            assert (recorded == plain).all(), f"recording changed the image on the {backend} backend"
            check_quadrants_equal_float64_softmax(pipe, "flux", "mean", ATOL)
        finally:
            pipe.transformer.reset_attention_backend()


def test_an_attention_processor_without_sdpa_keeps_exact_maps_and_says_so_once(monkeypatch):
    """diffusers' classic ``AttnProcessor`` computes softmax(QKᵀ) itself, with no SDPA call and no backend
    to ask: the maps recompute the normaliser (still exact), the image is unchanged, and one notice says so."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from latentlens import compat

    monkeypatch.setattr(compat, "_NOTICED", set())
    pipe = get_pipe("pixart")
    pipe.transformer.set_attn_processor(AttnProcessor())
    try:
        plain = run_pipe(pipe, "pixart")
        recorded, notices, fast_calls = record_maps_with_notices(pipe, "pixart")
        assert fast_calls == 0
        assert len(notices) == 1 and "neither through torch's scaled_dot_product_attention" in notices[0], notices
        assert (recorded == plain).all()
        check_quadrants_equal_float64_softmax(pipe, "pixart", "mean", ATOL)
    finally:
        pipe.transformer.set_attn_processor(AttnProcessor2_0())

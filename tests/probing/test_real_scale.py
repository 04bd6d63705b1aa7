"""Real widths, offline: the published transformer configs with random weights, cut to 1–2 blocks.

At 1,024 image tokens and the real text length (SD3 333, Flux 512, PixArt-Σ 300) on CPU: the
recorded model output is bit-identical to the plain run, the img2txt maps equal a float64
softmax recomputed from the module's weights, and the process's peak memory stays ≤ 1.10× the
plain run's. Each model takes seconds to build, so these are ``slow``.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from latentlens import record, testing
from latentlens.attention_lse import LSECapture
from probing_ref import _lin, _rms, _rope

IMAGE_TOKENS = 1024
ATOL = 1e-5


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _peak(fn):
    """(result, peak resident bytes of the process while ``fn`` ran)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    result = fn()
    return result, _status("VmHWM")


def _qk64(attn, x, ctx, how, rope):
    """Queries and keys ``[b, N, h, d]`` in float64 from the module's weights, in the model's token order."""
    heads = attn.heads
    d = attn.to_q.out_features // heads

    def hd(t):
        return t.unflatten(-1, (heads, d))

    q = _rms(attn.norm_q, hd(_lin(attn.to_q, x)))
    k = _rms(attn.norm_k, hd(_lin(attn.to_k, ctx if how == "cross" else x)))
    if how in ("img_txt", "txt_img"):
        cq = _rms(attn.norm_added_q, hd(_lin(attn.add_q_proj, ctx)))
        ck = _rms(attn.norm_added_k, hd(_lin(attn.add_k_proj, ctx)))
        q, k = (torch.cat([q, cq], 1), torch.cat([k, ck], 1)) if how == "img_txt" else \
            (torch.cat([cq, q], 1), torch.cat([ck, k], 1))
    if rope is not None:
        q, k = _rope(q, *rope), _rope(k, *rope)
    return q, k, d


def ref_img2txt(attn, x, ctx, how, rope, n_txt):
    """Head mean of softmax(QKᵀ/√d) over all keys, image-query rows × text-key columns, float64 ``[b, img, txt]``."""
    q, k, d = _qk64(attn, x, ctx, how, rope)
    n = k.shape[1]
    if how == "img_txt":
        img, txt = slice(0, n - n_txt), slice(n - n_txt, n)
    elif how == "cross":
        img, txt = slice(0, q.shape[1]), slice(0, n)
    else:  # Flux: [text, image]
        img, txt = slice(n_txt, n), slice(0, n_txt)
    total = 0
    for h0 in range(0, q.shape[2], 4):  # a few heads at a time: [b, 4, img, N] float64
        logits = torch.einsum("bqhd,bkhd->bhqk", q[:, img, h0 : h0 + 4], k[:, :, h0 : h0 + 4]) / d**0.5
        total = total + logits.softmax(-1)[..., txt].sum(1)
    return total / q.shape[2]


def _modules(t):
    """[(map name, attention module, how)] of the img2txt maps of every block."""
    out = []
    if hasattr(t, "single_transformer_blocks"):
        blocks = list(t.transformer_blocks) + list(t.single_transformer_blocks)
        n_double = len(t.transformer_blocks)
        for i, b in enumerate(blocks):
            out.append((f"blocks.{i}.attn.img2txt", b.attn, "txt_img" if i < n_double else "joint"))
    elif hasattr(t.transformer_blocks[0], "attn1"):  # PixArt: cross-attention to the text
        out = [(f"blocks.{i}.attn.img2txt", b.attn2, "cross") for i, b in enumerate(t.transformer_blocks)]
    else:
        out = [(f"blocks.{i}.attn.img2txt", b.attn, "img_txt") for i, b in enumerate(t.transformer_blocks)]
    return out


CASES = {
    "sd3-medium": {"num_layers": 2},
    "sd3.5-medium": {"num_layers": 1},  # a dual-attention block (its attn2 is image self-attention)
    "sd3.5-large": {"num_layers": 1},
    "flux.1-dev": {"num_layers": 1, "num_single_layers": 1},
    "pixart-sigma": {"num_layers": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_real_width_maps_exact_output_identical_memory_bounded(name):
    torch.manual_seed(0)
    model = testing.real_transformer(name, **CASES[name])
    inputs = testing.real_inputs(name, model, image_tokens=IMAGE_TOKENS)
    n_txt = testing.REAL_TEXT[name]["tokens"]
    assert inputs["encoder_hidden_states"].shape[1] == n_txt
    mods = _modules(model)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    assert mods[0][1].to_q.in_features == width  # the real width: 1536, 2432, 3072, 1152

    def plain():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    seen: dict[int, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw, k=k: seen.setdefault(k, (a, dict(kw))),
                                         with_kwargs=True) for k, (_, m, _) in enumerate(mods)]

    def recorded():
        with record(model, attention="blocks.*.attn.img2txt") as rec:
            out = plain()
        return out, rec

    try:
        plain()  # warm-up: first-call allocations do not count against either run
        base_out, plain_peak = _peak(plain)
        fast_before = LSECapture.fast_calls
        (out, rec), rec_peak = _peak(recorded)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, base_out), "recording changed the model output"
    if name != "pixart-sigma":  # PixArt's img2txt is its cross-attention, served by the recomputation
        assert LSECapture.fast_calls > fast_before, "the fast path (the model's own LSE) was not used"
    assert rec_peak <= 1.10 * plain_peak, (rec_peak / 2**20, plain_peak / 2**20)
    assert sorted(rec.names) == sorted(n for n, _, _ in mods)
    for k, (map_name, mod, how) in enumerate(mods):
        args, kw = seen[k]
        x = kw.get("hidden_states", args[0] if args else None)
        ctx = kw.get("encoder_hidden_states")
        ref = ref_img2txt(mod, x, ctx, how, kw.get("image_rotary_emb"), n_txt)
        got = rec[map_name][0].double()  # [batch, img, txt]
        assert got.shape == (1, IMAGE_TOKENS, n_txt), (map_name, got.shape)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0, msg=map_name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3-medium", "flux.1-dev", "pixart-sigma"])
def test_real_text_encoders_give_the_real_token_count_and_width(name):
    parts = testing.real_text_encoders(name)
    text = testing.REAL_TEXT[name]
    with torch.no_grad():
        for enc_key, tok_key in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                                 ("text_encoder_3", "tokenizer_3")):
            if enc_key not in parts:
                continue
            tok = parts[tok_key]
            ids = tok("a red circle", padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            hidden = parts[enc_key](ids).last_hidden_state
            is_t5 = type(parts[enc_key]).__name__ == "T5EncoderModel"
            assert hidden.shape[1] == (text["t5"] if is_t5 else text["clip"]), enc_key
            expected = 4096 if is_t5 else ({"text_encoder": 768, "text_encoder_2": 1280}[enc_key])
            assert hidden.shape[2] == expected, enc_key
    if name.startswith("sd3"):  # CLIP-L 768 + CLIP-G 1280 = the transformer's pooled width
        pooled = sum(parts[k].config.projection_dim for k in ("text_encoder", "text_encoder_2"))
        assert pooled == testing.REAL_CONFIGS[name]["pooled_projection_dim"]

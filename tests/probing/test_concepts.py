"""Concept maps (ConceptAttention): the model's output is bit-identical, and the maps equal an eager
float64 recomputation of the construction from a float64 copy of the transformer.

The reference runs the concept stream itself from each block's recorded inputs (``hidden_states``,
``encoder_hidden_states``, ``temb``, RoPE): the image tokens' own attention (over image + text keys),
the concepts' attention over image + concept keys, and the text stream's modulation / output
projection / feed-forward applied to the concept tokens. Tolerances: float32 model vs float64 reference.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from latentlens import record
from latentlens.errors import ConfigError
from latentlens.text import encode_prompts, word_token_indices
from probing_ref import Tap, get_pipe, run_pipe

CONCEPTS = ["red", "circle", "gray"]
JOINT = ("sd3", "sd35", "flux")


def _hd(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))  # [b, n, h, d]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v in float64, [b, n, h, d] → [b, n, h*d]."""
    d = q.shape[-1]
    p = torch.einsum("bqhd,bkhd->bhqk", q, k).div(d**0.5).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v).flatten(2)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return x * cos[None, :, None, :].double() + rotated * sin[None, :, None, :].double()


def _norm(mod, x):
    return x if mod is None else mod(x)


@torch.no_grad()
def _reference(kind: str, pipe, calls: dict, n_blocks: int, step: int) -> dict[str, torch.Tensor]:
    """{name: [batch, image_token, concept]} for one transformer call, float64."""
    t64 = copy.deepcopy(pipe.transformer).double()
    states = encode_prompts(pipe, CONCEPTS).tokens.double()
    rows = []
    for i, c in enumerate(CONCEPTS):
        rows.append(states[i, word_token_indices(pipe, c, c)].mean(0))
    c = t64.context_embedder(torch.stack(rows))[None]  # [1, concept, D]
    blocks = list(t64.transformer_blocks) + list(getattr(t64, "single_transformer_blocks", []))
    n_double = len(t64.transformer_blocks)
    out: dict[str, torch.Tensor] = {}
    for i in range(n_blocks):
        b = blocks[i]
        kw = calls[f"b{i}"][step]["kwargs"]
        x, e, temb = kw["hidden_states"].double(), kw["encoder_hidden_states"].double(), kw["temb"].double()
        rope = kw.get("image_rotary_emb")
        a, h = b.attn, b.attn.heads
        cc = c.expand(x.shape[0], -1, -1)
        T = e.shape[1]
        single = kind == "flux" and i >= n_double
        if single:
            joint, _ = b.norm(torch.cat([e, x], 1), emb=temb)
            nx, ne = joint[:, T:], joint[:, :T]
            nc, gate = b.norm(cc, emb=temb)
            proj = [(a.to_q, a.norm_q), (a.to_k, a.norm_k), (a.to_v, None)]
            qx, kx, vx = (_norm(nm, _hd(p(nx), h)) for p, nm in proj)
            qt, kt, vt = (_norm(nm, _hd(p(ne), h)) for p, nm in proj)
            qc, kc, vc = (_norm(nm, _hd(p(nc), h)) for p, nm in proj)
        else:
            nx = b.norm1(x, emb=temb)[0]
            pre_only = bool(getattr(b, "context_pre_only", False))
            ne = b.norm1_context(e, temb) if pre_only else b.norm1_context(e, emb=temb)[0]
            mods = None if pre_only else b.norm1_context(cc, emb=temb)
            nc = b.norm1_context(cc, temb) if pre_only else mods[0]
            img = [(a.to_q, a.norm_q), (a.to_k, a.norm_k), (a.to_v, None)]
            txt = [(a.add_q_proj, a.norm_added_q), (a.add_k_proj, a.norm_added_k), (a.add_v_proj, None)]
            qx, kx, vx = (_norm(nm, _hd(p(nx), h)) for p, nm in img)
            qt, kt, vt = (_norm(nm, _hd(p(ne), h)) for p, nm in txt)
            qc, kc, vc = (_norm(nm, _hd(p(nc), h)) for p, nm in txt)
        if rope is not None:  # Flux: [txt, img] positions; concepts take the first text position
            cos, sin = rope
            qt, kt = _rope(qt, cos[:T], sin[:T]), _rope(kt, cos[:T], sin[:T])
            qx, kx = _rope(qx, cos[T:], sin[T:]), _rope(kx, cos[T:], sin[T:])
            n = cc.shape[1]
            qc, kc = (
                _rope(qc, cos[:1].expand(n, -1), sin[:1].expand(n, -1)),
                _rope(kc, cos[:1].expand(n, -1), sin[:1].expand(n, -1)),
            )
        ox = _attend(qx, torch.cat([kx, kt], 1), torch.cat([vx, vt], 1))  # the model's image outputs
        oc = _attend(qc, torch.cat([kx, kc], 1), torch.cat([vx, vc], 1))
        d = qx.shape[-1]
        w = torch.einsum("bqhd,bkhd->bhqk", qx, kc).div(d**0.5).softmax(-1).mean(1)
        out[f"blocks.{i}.attn.img2concept"] = w
        out[f"blocks.{i}.attn.img2concept_out"] = ox @ oc.transpose(1, 2)
        if single:
            mlp = b.act_mlp(b.proj_mlp(nc))
            c = cc + gate.unsqueeze(1) * b.proj_out(torch.cat([oc, mlp], 2))
        elif mods is not None:
            _, g1, shift, scale, g2 = mods
            c = cc + g1.unsqueeze(1) * a.to_add_out(oc)
            c = c + g2.unsqueeze(1) * b.ff_context(b.norm2_context(c) * (1 + scale[:, None]) + shift[:, None])
    return out


@pytest.mark.parametrize("kind", JOINT)
def test_concept_maps_equal_float64_and_output_unchanged(kind):
    pipe = get_pipe(kind)
    t = pipe.transformer
    blocks = list(t.transformer_blocks) + list(getattr(t, "single_transformer_blocks", []))
    base = run_pipe(pipe, kind)
    tap = Tap({f"b{i}": b for i, b in enumerate(blocks)})
    try:
        with record(pipe, concepts=CONCEPTS, cfg="both") as rec:
            images = run_pipe(pipe, kind)
    finally:
        tap.close()
    assert np.array_equal(images, base), "recording concept maps changed the model's output"
    names = [f"blocks.{i}.attn.{k}" for i in range(len(blocks)) for k in ("img2concept", "img2concept_out")]
    assert rec.names == names
    for step in range(2):
        ref = _reference(kind, pipe, tap.calls, len(blocks), step)
        for name in names:
            got = rec[name][step].double()
            assert got.shape == ref[name].shape and got.shape[-1] == len(CONCEPTS), name
            tol = 1e-5 * max(1.0, float(ref[name].abs().max()))
            torch.testing.assert_close(
                got, ref[name], rtol=1e-4, atol=tol, msg=lambda m, n=name, s=step: f"{n} step {s}: {m}"
            )
    w = rec["blocks.0.attn.img2concept"]
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5, rtol=0)


def test_toy_concept_maps_output_unchanged_and_selected():
    from latentlens.toy.pipeline import tiny_toy_pipeline

    pipe = tiny_toy_pipeline(num_layers=2)
    kw = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    base = pipe("a red circle on a gray background", **kw).images
    kw["generator"] = torch.Generator().manual_seed(0)
    with record(pipe, attention="blocks.1.attn.img2concept_out", concepts=["circle", "background"]) as rec:
        images = pipe("a red circle on a gray background", **kw).images
    assert np.array_equal(images, base)
    assert rec.names == ["blocks.1.attn.img2concept_out"]
    assert tuple(rec["blocks.1.attn.img2concept_out"].shape) == (2, 1, 8 * 8, 2)  # cond rows, 8×8 tokens


def test_concepts_on_pixart_refused_before_compute():
    pipe = get_pipe("pixart")
    with pytest.raises(ConfigError, match="joint text blocks"):
        record(pipe, concepts=["circle"])


@pytest.mark.parametrize(
    "concepts, match",
    [
        ([], "non-empty list"),
        (["circle", " "], "empty"),
        (["circle", "circle"], "twice"),
        (["red circle square cross triangle blue green yellow purple"], "truncated"),
    ],
)
def test_bad_concepts_refused_before_compute(concepts, match):
    with pytest.raises(ConfigError, match=match):
        record(get_pipe("sd3"), concepts=concepts)


def test_concept_map_names_need_concepts_and_a_pipeline():
    pipe = get_pipe("sd3")
    with pytest.raises(ConfigError, match="pass the concept words"):
        record(pipe, attention="blocks.*.attn.img2concept")
    with pytest.raises(ConfigError, match="pass the pipeline"):
        record(pipe.transformer, concepts=["circle"])


def test_concept_maps_per_head_pooled_and_stored(tmp_path):
    from latentlens.store import RunStore

    pipe = get_pipe("flux")
    with record(pipe, attention="blocks.*.attn.img2concept*", concepts=CONCEPTS) as mean:
        run_pipe(pipe, "flux")
    with record(pipe, attention="blocks.*.attn.img2concept*", concepts=CONCEPTS, heads="all") as per_head:
        run_pipe(pipe, "flux")
    w = per_head["blocks.3.attn.img2concept"]  # single-stream block
    assert w.shape == (2, 1, pipe.transformer.config.num_attention_heads, 64, 3)
    torch.testing.assert_close(w.mean(2), mean["blocks.3.attn.img2concept"])
    torch.testing.assert_close(per_head["blocks.3.attn.img2concept_out"], mean["blocks.3.attn.img2concept_out"])
    with record(pipe, attention="blocks.0.attn.img2concept", concepts=CONCEPTS, reduce="pool=2") as pooled:
        run_pipe(pipe, "flux")
    m = mean["blocks.0.attn.img2concept"].unflatten(2, (8, 8))  # [step, batch, 8, 8, concept]
    expect = m.unflatten(2, (4, 2)).unflatten(4, (4, 2)).mean((3, 5)).flatten(2, 3)
    torch.testing.assert_close(pooled["blocks.0.attn.img2concept"], expect)
    store = RunStore.create(tmp_path / "run", {"model": "tiny-flux"})
    with record(pipe, attention="blocks.1.attn.img2concept_out", concepts=CONCEPTS, store=store) as rec:
        run_pipe(pipe, "flux")
    assert store.kind("blocks.1.attn.img2concept_out") == "map"
    torch.testing.assert_close(rec["blocks.1.attn.img2concept_out"], mean["blocks.1.attn.img2concept_out"])

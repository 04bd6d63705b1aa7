"""Adapter for ``FluxTransformer2DModel`` (Flux.1): double-stream then single-stream blocks, RoPE.

Blocks are numbered in execution order: the ``D`` double-stream blocks are ``blocks.0 … blocks.{D-1}``,
single-stream block ``j`` is ``blocks.{D+j}`` (alias ``single_blocks.{j}.…``). Joint attention
concatenates ``[text, image]``; single-stream blocks run one joint sequence that is split by the text
length. Maps include the rotary embedding (``image_rotary_emb``) exactly as the processor applies it.

Double-stream block sites: ``resid_in/attn_out/ff_out/resid_out.{img|txt}``, ``mod`` (image-stream
``norm1``: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) and ``mod.txt``
(``norm1_context``, same layout). Single-stream block sites: ``resid_in/attn_out/resid_out.{img|txt}``
(``attn_out`` = the attention output split at the text length, before ``proj_out``) and ``mod``
(``shift, scale, gate``); single-stream blocks have no separate feed-forward output.
Boundary: ``latents``/``pred`` are the packed ``[batch, token, channel]`` tensors, ``text.tokens`` the T5
states, ``text.pooled`` the CLIP pooled vector. With ``true_cfg_scale > 1`` FluxPipeline makes a "cond"
and an "uncond" call per step inside ``transformer.cache_context``; the step axis stays the denoising step.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from latentlens.adapters.base import (
    TOKENS,
    Adapter,
    AttnSpec,
    CallState,
    QKPart,
    SiteSpec,
    arg_site,
    joint_out_site,
    out_site,
    timestep_value,
)
from latentlens.adapters.sd3 import ALL_QUADRANTS, MOD, _reshape_mod, pred_site


class FluxAdapter(Adapter):
    """Flux.1 (``FluxTransformer2DModel``)."""

    name = "flux"
    transformer_classes = ("FluxTransformer2DModel",)

    def block_modules(self) -> list[Any]:
        return list(self.transformer.transformer_blocks) + list(self.transformer.single_transformer_blocks)

    def block_probe(self, index: int) -> Any:
        attn = self.block_modules()[index].attn
        return attn.to_qkv if getattr(attn, "fused_projections", False) else attn.to_q

    def alias(self, name: str) -> str:
        m = re.match(r"single_blocks\.(\d+)\.(.*)$", name)
        if m:
            return f"blocks.{len(self.transformer.transformer_blocks) + int(m.group(1))}.{m.group(2)}"
        return name

    def sites(self) -> list[SiteSpec]:
        t = self.transformer
        out: list[SiteSpec] = [
            arg_site("latents", t, "hidden_states", 0, TOKENS, "img"),
            arg_site("text.tokens", t, "encoder_hidden_states", 1, TOKENS, "txt"),
            arg_site("text.pooled", t, "pooled_projections", 2, ("batch", "channel")),
        ]
        n_double = len(t.transformer_blocks)
        for i, b in enumerate(self.block_modules()):
            p = f"blocks.{i}."
            out.append(arg_site(p + "resid_in.img", b, "hidden_states", 0, TOKENS, "img"))
            out.append(arg_site(p + "resid_in.txt", b, "encoder_hidden_states", 1, TOKENS, "txt"))
            if i < n_double:
                out.append(out_site(p + "attn_out.img", b.attn, 0, TOKENS, "img"))
                out.append(out_site(p + "attn_out.txt", b.attn, 1, TOKENS, "txt"))
                out.append(out_site(p + "ff_out.img", b.ff, None, TOKENS, "img"))
                out.append(out_site(p + "ff_out.txt", b.ff_context, None, TOKENS, "txt"))
            else:
                out.append(joint_out_site(p + "attn_out.img", b.attn, "img", TOKENS))
                out.append(joint_out_site(p + "attn_out.txt", b.attn, "txt", TOKENS))
            out.append(out_site(p + "resid_out.img", b, 1, TOKENS, "img"))
            out.append(out_site(p + "resid_out.txt", b, 0, TOKENS, "txt"))
            if i < n_double:
                out.append(out_site(p + "mod", b.norm1.linear, None, MOD, None, _reshape_mod(6)))
                out.append(out_site(p + "mod.txt", b.norm1_context.linear, None, MOD, None, _reshape_mod(6)))
            else:
                out.append(out_site(p + "mod", b.norm.linear, None, MOD, None, _reshape_mod(3)))
        out.append(pred_site("pred", t, TOKENS))
        return out

    def attention(self) -> list[AttnSpec]:
        specs = []
        n_double = len(self.transformer.transformer_blocks)
        for i, b in enumerate(self.block_modules()):
            a = b.attn
            fused = bool(getattr(a, "fused_projections", False))
            if i < n_double:
                if fused:
                    q = (QKPart("txt", a.to_added_qkv, 0, a.norm_added_q), QKPart("img", a.to_qkv, 0, a.norm_q))
                    k = (QKPart("txt", a.to_added_qkv, 1, a.norm_added_k), QKPart("img", a.to_qkv, 1, a.norm_k))
                else:
                    q = (QKPart("txt", a.add_q_proj, None, a.norm_added_q), QKPart("img", a.to_q, None, a.norm_q))
                    k = (QKPart("txt", a.add_k_proj, None, a.norm_added_k), QKPart("img", a.to_k, None, a.norm_k))
            else:
                if fused:
                    q = (QKPart("joint", a.to_qkv, 0, a.norm_q),)
                    k = (QKPart("joint", a.to_qkv, 1, a.norm_k),)
                else:
                    q = (QKPart("joint", a.to_q, None, a.norm_q),)
                    k = (QKPart("joint", a.to_k, None, a.norm_k),)
            specs.append(AttnSpec(f"blocks.{i}.attn", i, a, a.heads, a.head_dim, q, k, dict(ALL_QUADRANTS),
                                  rope=True))
        return specs

    def begin_call(self, state: CallState, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)  # [batch, tokens, C]
        ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        ts = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        img_ids = kwargs.get("img_ids")
        state.batch = x.shape[0]
        state.text_len = ctx.shape[1] if ctx is not None else 0
        state.grid = None
        if torch.is_tensor(img_ids) and img_ids.is_meta:  # a size plan: no values, the grid is attached
            state.grid = getattr(img_ids, "latentlens_grid", None)
        elif torch.is_tensor(img_ids):
            ids = img_ids[0] if img_ids.ndim == 3 else img_ids  # [tokens, 3]
            rows = int(ids[:, 1].max().item()) + 1
            cols = int(ids[:, 2].max().item()) + 1
            if rows * cols == x.shape[1]:
                state.grid = (rows, cols)
        state.timestep = timestep_value(ts)

    def text_segments(self) -> list[tuple[Any, int]]:
        tok = getattr(self.pipe, "tokenizer_2", None)
        return [(tok, 0)] if tok is not None else []

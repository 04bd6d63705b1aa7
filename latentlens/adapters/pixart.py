"""Adapter for ``PixArtTransformer2DModel`` (PixArt-α / PixArt-Σ): self-attention + cross-attention.

Only the image stream has residual sites (text enters each block through cross-attention and is not
updated). Names per block ``i``: ``resid_in.img``, ``attn_out.img`` (self-attention ``attn1`` output,
before the gate), ``xattn_out.img`` (cross-attention ``attn2`` output), ``ff_out.img`` (before the gate),
``resid_out.img``, ``mod`` (``scale_shift_table + timestep``: shift_msa, scale_msa, gate_msa, shift_mlp,
scale_mlp, gate_mlp), and maps ``attn.img2img`` (from ``attn1``) and ``attn.img2txt`` (from ``attn2``,
normalised over the text keys with the pipeline's padding mask applied as in the model).
Boundary: ``latents``, ``text.tokens`` (T5 states before the caption projection), ``pred`` (8 channels
with learned sigma); PixArt has no pooled text embedding.
"""

from __future__ import annotations

from typing import Any

import torch

from latentlens.adapters.base import (
    TOKENS,
    AttnSpec,
    CallState,
    PatchGridAdapter,
    QKPart,
    SiteSpec,
    arg_site,
    out_site,
)
from latentlens.adapters.sd3 import IMAGE, MOD, pred_site


def _mod_site(name: str, block: Any) -> SiteSpec:
    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        t = kwargs.get("timestep", args[4] if len(args) > 4 else None)  # [batch, 6 * dim]
        return block.scale_shift_table[None] + t.reshape(t.shape[0], 6, -1)  # [batch, 6, dim]

    return SiteSpec(name, block, "pre", get, None, MOD, None)


class PixArtAdapter(PatchGridAdapter):
    """PixArt-α/Σ (``PixArtTransformer2DModel``)."""

    name = "pixart"
    transformer_classes = ("PixArtTransformer2DModel",)
    timestep_position = 2  # forward(hidden_states, encoder_hidden_states, timestep, ...)

    def block_modules(self) -> list[Any]:
        return list(self.transformer.transformer_blocks)

    def block_probe(self, index: int) -> Any:
        return self.block_modules()[index].attn1.to_q

    def sites(self) -> list[SiteSpec]:
        t = self.transformer
        out: list[SiteSpec] = [
            arg_site("latents", t, "hidden_states", 0, IMAGE, "img"),
            arg_site("text.tokens", t, "encoder_hidden_states", 1, TOKENS, "txt"),
        ]
        for i, b in enumerate(self.block_modules()):
            p = f"blocks.{i}."
            out.append(arg_site(p + "resid_in.img", b, "hidden_states", 0, TOKENS, "img"))
            out.append(out_site(p + "attn_out.img", b.attn1, None, TOKENS, "img"))
            out.append(out_site(p + "xattn_out.img", b.attn2, None, TOKENS, "img"))
            out.append(out_site(p + "ff_out.img", b.ff, None, TOKENS, "img"))
            out.append(out_site(p + "resid_out.img", b, None, TOKENS, "img"))
            out.append(_mod_site(p + "mod", b))
        out.append(pred_site("pred", t, IMAGE))
        return out

    def attention(self) -> list[AttnSpec]:
        specs = []
        for i, b in enumerate(self.block_modules()):
            a1, a2 = b.attn1, b.attn2
            specs.append(AttnSpec(
                f"blocks.{i}.attn", i, a1, a1.heads, a1.inner_dim // a1.heads,
                (QKPart("img", a1.to_q, None, a1.norm_q),), (QKPart("img", a1.to_k, None, a1.norm_k),),
                {"img2img": ("img", "img")}, mask_kwarg="attention_mask",
            ))
            specs.append(AttnSpec(
                f"blocks.{i}.attn", i, a2, a2.heads, a2.inner_dim // a2.heads,
                (QKPart("img", a2.to_q, None, a2.norm_q),), (QKPart("txt", a2.to_k, None, a2.norm_k),),
                {"img2txt": ("img", "txt")}, mask_kwarg="attention_mask",
            ))
        return specs

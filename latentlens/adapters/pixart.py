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
from collections.abc import Sequence

import torch

from latentlens.adapters.base import (
    TOKENS,
    AttnSpec,
    CallState,
    PatchGridAdapter,
    QKPart,
    SiteSpec,
    TextSegment,
    arg_site,
    out_site,
    tensor_arg,
)
from latentlens.adapters.generation import DDPMFlowMixin, TextEmbeds, VAEEditModel
from latentlens.adapters.sd3 import IMAGE, MOD, pred_site


def _mod_site(name: str, block: Any) -> SiteSpec:
    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        t = tensor_arg(args, kwargs, "timestep", 4)  # [batch, 6 * channel]
        return block.scale_shift_table[None] + t.reshape(t.shape[0], 6, -1)  # [batch, 6, channel]

    return SiteSpec(name, block, "pre", get, None, MOD, None)


class PixArtAdapter(PatchGridAdapter):
    """PixArt-α/Σ (``PixArtTransformer2DModel``)."""

    name = "pixart"
    transformer_classes = ("PixArtTransformer2DModel",)
    timestep_position = 2  # forward(hidden_states, encoder_hidden_states, timestep, ...)
    text_width_key = "caption_channels"

    def text_segments(self, max_sequence_length: int | None = None) -> list[TextSegment]:
        tok = getattr(self.pipe, "tokenizer", None)
        return [TextSegment(tok, 0, int(max_sequence_length or 120))] if tok is not None else []

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
            specs.append(
                AttnSpec(
                    f"blocks.{i}.attn",
                    i,
                    a1,
                    a1.heads,
                    a1.inner_dim // a1.heads,
                    (QKPart("img", a1.to_q, None, a1.norm_q),),
                    (QKPart("img", a1.to_k, None, a1.norm_k),),
                    {"img2img": ("img", "img")},
                    mask_kwarg="attention_mask",
                )
            )
            specs.append(
                AttnSpec(
                    f"blocks.{i}.attn",
                    i,
                    a2,
                    a2.heads,
                    a2.inner_dim // a2.heads,
                    (QKPart("img", a2.to_q, None, a2.norm_q),),
                    (QKPart("txt", a2.to_k, None, a2.norm_k),),
                    {"img2txt": ("img", "txt")},
                    mask_kwarg="attention_mask",
                )
            )
        return specs


class PixArtEditModel(DDPMFlowMixin, VAEEditModel):
    """PixArtAlphaPipeline / PixArtSigmaPipeline: T5 tokens with an attention mask, VAE latents, ε-prediction.

    The DDPM schedule is seen as rectified flow by :class:`~latentlens.adapters.generation.DDPMFlowMixin`
    (σ ↔ fractional timestep; an Euler step is a DDIM step, so :meth:`generate` with a
    ``DDIMScheduler`` (``set_alpha_to_one=True``) reproduces the pipeline's own sampler).
    """

    kind = "pixart"
    default_guidance = 4.5
    default_steps = 20

    def _default_size(self) -> int:
        return int(self.transformer.config.sample_size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.transformer.config.in_channels), self.height // f, self.width // f)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        tokens, mask, _, _ = self.pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=self.device,
            clean_caption=False,
            max_sequence_length=int(self.max_sequence_length or 120),
        )
        return TextEmbeds(tokens, None, mask=mask)

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if getattr(self.transformer.config, "sample_size", None) == 128:  # PixArt-α 1024 px micro-conditions
            batch = x_t.shape[0]
            added = {
                "resolution": torch.tensor([[self.height, self.width]] * batch, device=self.device, dtype=self.dtype),
                "aspect_ratio": torch.tensor(
                    [[self.height / self.width]] * batch, device=self.device, dtype=self.dtype
                ),
            }
        return self.transformer(
            x_t.to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            encoder_attention_mask=None if cond.mask is None else cond.mask.to(self.device),
            timestep=t.to(self.dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


PixArtAdapter.edit_model = PixArtEditModel
PixArtEditModel.adapter_class = PixArtAdapter

"""Adapter for ``SD3Transformer2DModel``: SD3, SD3.5 (dual attention, qk-norm) and the toy model.

Joint attention concatenates ``[image, text]``. Names per block ``i`` (all ``[batch, token, channel]``
unless said otherwise):

- ``blocks.{i}.resid_in.{img|txt}`` — the block's inputs ``hidden_states`` / ``encoder_hidden_states``.
- ``blocks.{i}.attn_out.{img|txt}`` — the attention module's outputs (after ``to_out`` / ``to_add_out``,
  before the AdaLN gate ``gate_msa``).
- ``blocks.{i}.attn2_out.img`` — SD3.5 dual-attention blocks only: the second, image-only
  self-attention's output (before ``gate_msa2``).
- ``blocks.{i}.ff_out.{img|txt}`` — the feed-forward outputs (before the gate ``gate_mlp``).
- ``blocks.{i}.resid_out.{img|txt}`` — the block's outputs.
- ``blocks.{i}.mod`` — image-stream AdaLN parameters ``[batch, param, channel]`` with params
  ``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)`` and, in dual-attention blocks,
  ``(…, shift_msa2, scale_msa2, gate_msa2)`` (9 params).
- ``blocks.{i}.mod.txt`` — text-stream AdaLN parameters, the same 6 params, except in the last block
  (``context_pre_only``) where they are ``(scale, shift)``.
- ``blocks.{i}.attn.{img2txt|txt2img|img2img|txt2txt}`` and, in dual blocks, ``blocks.{i}.attn2.img2img``.

The last block has no text output (``context_pre_only``): no ``resid_out.txt``, ``attn_out.txt``,
``ff_out.txt`` there. Transformer boundary: ``latents`` ``[batch, channel, height, width]``,
``text.tokens`` ``[batch, token, channel]``, ``text.pooled`` ``[batch, channel]``, ``pred`` like ``latents``.

CFG: when the pipeline's ``do_classifier_free_guidance`` is true (or, for pipelines without that flag,
when the two batch halves of the latents are identical) the batch is ``[uncond, cond]``. Steps count
transformer calls, so SD3's skip-layer guidance (an extra call per step) adds steps.
Text tokens: ``[CLIP tokens (tokenizer_max_length), T5 tokens]`` for SD3 pipelines (the toy model has its
own file, ``toy.py``). Editing: :class:`SD3EditModel` (CLIP-L + CLIP-G (+ T5) text, VAE latents, batch CFG).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import torch

from latentlens.adapters.base import (
    TOKENS,
    AttnSpec,
    CallState,
    ConceptBlock,
    PatchGridAdapter,
    QKPart,
    SiteSpec,
    TextSegment,
    arg_site,
    out_site,
)
from latentlens.adapters.generation import TextEmbeds, VAEEditModel

IMAGE = ("batch", "channel", "height", "width")
MOD = ("batch", "param", "channel")


def pred_site(name: str, module: Any, dims: tuple[str, ...]) -> SiteSpec:
    """The transformer's prediction: ``output.sample`` or ``output[0]``."""

    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        return out.sample if hasattr(out, "sample") else out[0]

    def set_(state: CallState, args: tuple, kwargs: dict, out: Any, value: torch.Tensor) -> Any:
        if hasattr(out, "sample"):
            out.sample = value
            return out
        return (value,) + tuple(out[1:])

    return SiteSpec(name, module, "post", get, set_, dims, "img" if dims == TOKENS else None)


def reshape_mod(k: int) -> Any:
    """A transform reshaping a flat AdaLN output `[batch, param * channel]` to `[batch, param, channel]`."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], k, -1)  # [batch, param, channel]

    return transform


def qk_parts(attn: Any, added: bool) -> tuple[tuple[QKPart, ...], tuple[QKPart, ...]]:
    """Query/key parts of a diffusers attention module: its own stream, then (if ``added``) the context stream."""
    fused = bool(getattr(attn, "fused_projections", False))
    if fused:
        # diffusers' FusedJointAttnProcessor2_0 skips the qk-norms; follow what the model computes
        skip = type(getattr(attn, "processor", None)).__name__ == "FusedJointAttnProcessor2_0"
        nq, nk = (None, None) if skip else (attn.norm_q, attn.norm_k)
        naq, nak = (None, None) if skip else (getattr(attn, "norm_added_q", None), getattr(attn, "norm_added_k", None))
        q = [QKPart("img", attn.to_qkv, 0, nq)]
        k = [QKPart("img", attn.to_qkv, 1, nk)]
        if added:
            q.append(QKPart("txt", attn.to_added_qkv, 0, naq))
            k.append(QKPart("txt", attn.to_added_qkv, 1, nak))
    else:
        q = [QKPart("img", attn.to_q, None, attn.norm_q)]
        k = [QKPart("img", attn.to_k, None, attn.norm_k)]
        if added:
            q.append(QKPart("txt", attn.add_q_proj, None, getattr(attn, "norm_added_q", None)))
            k.append(QKPart("txt", attn.add_k_proj, None, getattr(attn, "norm_added_k", None)))
    return tuple(q), tuple(k)


def qkv_parts(attn: Any, added: bool) -> tuple[QKPart, QKPart, QKPart]:
    """The q, k, v projections (with qk-norms) of one stream of a diffusers attention module.

    ``added``: the context stream (``add_*_proj`` / ``to_added_qkv``), else the module's own stream.
    """
    q, k = qk_parts(attn, added=added)
    stream = "txt" if added else "img"
    if getattr(attn, "fused_projections", False):
        v = QKPart(stream, attn.to_added_qkv if added else attn.to_qkv, 2)
    else:
        v = QKPart(stream, attn.add_v_proj if added else attn.to_v)
    return q[-1], k[-1], v


def ada_zero_context(block: Any) -> tuple[Any, Any]:
    """``(modulate, update)`` of a text stream with ``norm1_context`` = AdaLayerNormZero (SD3, Flux double).

    ``update``: ``c + gate_msa · to_add_out(o)``, then ``+ gate_mlp · ff_context(norm2_context(c)·(1+scale)+shift)``.
    """

    def modulate(c: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, Any]:
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=temb)
        return normed, (gate_msa, shift_mlp, scale_mlp, gate_mlp)

    def update(c: torch.Tensor, o: torch.Tensor, normed: torch.Tensor, carry: Any) -> torch.Tensor:
        gate_msa, shift_mlp, scale_mlp, gate_mlp = carry
        c = c + gate_msa.unsqueeze(1) * block.attn.to_add_out(o)
        n = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        c = c + gate_mlp.unsqueeze(1) * block.ff_context(n)
        return c.clip(-65504, 65504) if c.dtype == torch.float16 else c

    return modulate, update


ALL_QUADRANTS = {
    "img2txt": ("img", "txt"),
    "txt2img": ("txt", "img"),
    "img2img": ("img", "img"),
    "txt2txt": ("txt", "txt"),
}


class SD3Adapter(PatchGridAdapter):
    """SD3 / SD3.5 / toy (any ``SD3Transformer2DModel``)."""

    name = "sd3"
    transformer_classes = ("SD3Transformer2DModel",)

    def block_modules(self) -> list[Any]:
        return list(self.transformer.transformer_blocks)

    def block_probe(self, index: int) -> Any:
        attn = self.block_modules()[index].attn
        return attn.to_qkv if getattr(attn, "fused_projections", False) else attn.to_q

    def sites(self) -> list[SiteSpec]:
        t = self.transformer
        out: list[SiteSpec] = [
            arg_site("latents", t, "hidden_states", 0, IMAGE, "img"),
            arg_site("text.tokens", t, "encoder_hidden_states", 1, TOKENS, "txt"),
            arg_site("text.pooled", t, "pooled_projections", 2, ("batch", "channel")),
        ]
        for i, b in enumerate(self.block_modules()):
            p = f"blocks.{i}."
            pre_only = bool(b.context_pre_only)
            dual = bool(getattr(b, "use_dual_attention", False))
            out.append(arg_site(p + "resid_in.img", b, "hidden_states", 0, TOKENS, "img"))
            out.append(arg_site(p + "resid_in.txt", b, "encoder_hidden_states", 1, TOKENS, "txt"))
            out.append(out_site(p + "attn_out.img", b.attn, 0, TOKENS, "img"))
            if not pre_only:
                out.append(out_site(p + "attn_out.txt", b.attn, 1, TOKENS, "txt"))
            if dual:
                out.append(out_site(p + "attn2_out.img", b.attn2, None, TOKENS, "img"))
            out.append(out_site(p + "ff_out.img", b.ff, None, TOKENS, "img"))
            if not pre_only:
                out.append(out_site(p + "ff_out.txt", b.ff_context, None, TOKENS, "txt"))
            out.append(out_site(p + "resid_out.img", b, 1, TOKENS, "img"))
            if not pre_only:
                out.append(out_site(p + "resid_out.txt", b, 0, TOKENS, "txt"))
            out.append(out_site(p + "mod", b.norm1.linear, None, MOD, None, reshape_mod(9 if dual else 6)))
            out.append(
                out_site(p + "mod.txt", b.norm1_context.linear, None, MOD, None, reshape_mod(2 if pre_only else 6))
            )
        out.append(pred_site("pred", t, IMAGE))
        return out

    def attention(self) -> list[AttnSpec]:
        specs = []
        for i, b in enumerate(self.block_modules()):
            q, k = qk_parts(b.attn, added=True)
            specs.append(
                AttnSpec(
                    f"blocks.{i}.attn",
                    i,
                    b.attn,
                    b.attn.heads,
                    b.attn.inner_dim // b.attn.heads,
                    q,
                    k,
                    dict(ALL_QUADRANTS),
                )
            )
            if getattr(b, "attn2", None) is not None:
                q2, k2 = qk_parts(b.attn2, added=False)
                specs.append(
                    AttnSpec(
                        f"blocks.{i}.attn2",
                        i,
                        b.attn2,
                        b.attn2.heads,
                        b.attn2.inner_dim // b.attn2.heads,
                        q2,
                        k2,
                        {"img2img": ("img", "img")},
                    )
                )
        return specs

    def concept_blocks(self) -> list[ConceptBlock]:
        out = []
        for i, b in enumerate(self.block_modules()):
            if b.context_pre_only:  # AdaLayerNormContinuous; the text stream ends in this block

                def modulate(c: torch.Tensor, temb: torch.Tensor, b: Any = b) -> tuple[torch.Tensor, Any]:
                    return b.norm1_context(c, temb), None

                update = None
            else:
                modulate, update = ada_zero_context(b)
            a = b.attn
            out.append(
                ConceptBlock(
                    f"blocks.{i}.attn",
                    i,
                    b,
                    a.heads,
                    a.inner_dim // a.heads,
                    *qkv_parts(a, added=False),
                    *qkv_parts(a, added=True),
                    img_out=a.to_out[0],
                    modulate=modulate,
                    update=update,
                )
            )
        return out

    def text_segments(self, max_sequence_length: int | None = None) -> list[TextSegment]:
        pipe = self.pipe
        clip_len = int(getattr(pipe, "tokenizer_max_length", 77))
        segments = []
        if getattr(pipe, "tokenizer", None) is not None:
            segments.append(TextSegment(pipe.tokenizer, 0, clip_len))
        if getattr(pipe, "tokenizer_3", None) is not None:
            segments.append(TextSegment(pipe.tokenizer_3, clip_len, int(max_sequence_length or 256)))
        return segments


class SD3EditModel(VAEEditModel):
    """StableDiffusion3Pipeline (SD3 / SD3.5): CLIP-L + CLIP-G (+ T5) text, VAE latents, batch CFG."""

    kind = "sd3"
    default_guidance = 7.0
    default_steps = 28

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.transformer.config.in_channels), self.height // f, self.width // f)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        prompts = list(prompts)
        tokens, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=int(self.max_sequence_length or 256),
        )
        return TextEmbeds(tokens, pooled)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        return self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=(sigma * 1000.0).to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            pooled_projections=cond.require_pooled().to(self.dtype),
            return_dict=False,
        )[0].float()


SD3Adapter.edit_model = SD3EditModel
SD3EditModel.adapter_class = SD3Adapter

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

import contextlib
import re
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from latentlens.adapters.base import (
    TOKENS,
    Adapter,
    AttnSpec,
    CallState,
    ConceptBlock,
    QKPart,
    SiteSpec,
    TextSegment,
    arg_site,
    joint_out_site,
    out_site,
    tensor_arg,
    timestep_value,
)
from latentlens.adapters.generation import TextEmbeds, VAEEditModel
from latentlens.adapters.sd3 import ALL_QUADRANTS, MOD, ada_zero_context, pred_site, qkv_parts, reshape_mod


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
                out.append(out_site(p + "mod", b.norm1.linear, None, MOD, None, reshape_mod(6)))
                out.append(out_site(p + "mod.txt", b.norm1_context.linear, None, MOD, None, reshape_mod(6)))
            else:
                out.append(out_site(p + "mod", b.norm.linear, None, MOD, None, reshape_mod(3)))
        out.append(pred_site("pred", t, TOKENS))
        return out

    def attention(self) -> list[AttnSpec]:
        specs = []
        n_double = len(self.transformer.transformer_blocks)
        q: tuple[QKPart, ...]
        k: tuple[QKPart, ...]
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
            specs.append(AttnSpec(f"blocks.{i}.attn", i, a, a.heads, a.head_dim, q, k, dict(ALL_QUADRANTS), rope=True))
        return specs

    def concept_blocks(self) -> list[ConceptBlock]:
        out = []
        n_double = len(self.transformer.transformer_blocks)
        for i, b in enumerate(self.block_modules()):
            a = b.attn
            if i < n_double:
                modulate, update = ada_zero_context(b)
                iq, ik, iv = qkv_parts(a, added=False)
                tq, tk, tv = qkv_parts(a, added=True)
                out.append(
                    ConceptBlock(
                        f"blocks.{i}.attn",
                        i,
                        b,
                        a.heads,
                        a.head_dim,
                        iq,
                        ik,
                        iv,
                        tq,
                        tk,
                        tv,
                        img_out=a.to_out[0],
                        modulate=modulate,
                        update=update,
                        rope=True,
                    )
                )
            else:
                modulate, update = _single_stream(b)
                q, k, v = qkv_parts(a, added=False)
                jq, jk, jv = (QKPart("joint", p.proj, p.chunk, p.norm) for p in (q, k, v))
                out.append(
                    ConceptBlock(
                        f"blocks.{i}.attn",
                        i,
                        b,
                        a.heads,
                        a.head_dim,
                        jq,
                        jk,
                        jv,
                        q,
                        k,
                        v,
                        img_out=a,
                        modulate=modulate,
                        update=update,
                        img_out_joint=True,
                        rope=True,
                    )
                )
        return out

    def begin_call(self, state: CallState, args: tuple, kwargs: dict) -> None:
        x = tensor_arg(args, kwargs, "hidden_states", 0)  # [batch, token, channel]
        ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        ts = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        img_ids = kwargs.get("img_ids")
        state.batch = x.shape[0]
        state.text_len = ctx.shape[1] if ctx is not None else 0
        state.grid = None
        if isinstance(img_ids, torch.Tensor) and img_ids.is_meta:  # a size plan: no values, the grid is attached
            state.grid = getattr(img_ids, "latentlens_grid", None)
        elif isinstance(img_ids, torch.Tensor):
            ids = img_ids[0] if img_ids.ndim == 3 else img_ids  # [token, 3]
            rows = int(ids[:, 1].max().item()) + 1
            cols = int(ids[:, 2].max().item()) + 1
            if rows * cols == x.shape[1]:
                state.grid = (rows, cols)
        state.timestep = timestep_value(ts)

    tokenizer_subfolders = ("tokenizer_2",)  # the T5 tokenizer: text.tokens are T5 states

    def text_segments(self, max_sequence_length: int | None = None) -> list[TextSegment]:
        tok = getattr(self.pipe, "tokenizer_2", None)
        return [TextSegment(tok, 0, int(max_sequence_length or 512))] if tok is not None else []


def _single_stream(block: Any) -> tuple[Any, Any]:
    """``(modulate, update)`` of a single-stream block for text-like tokens: ``norm`` (shift, scale,
    gate), then ``c + gate · proj_out([o, act_mlp(proj_mlp(normed))])``."""

    def modulate(c: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, Any]:
        normed, gate = block.norm(c, emb=temb)
        return normed, gate

    def update(c: torch.Tensor, o: torch.Tensor, normed: torch.Tensor, gate: Any) -> torch.Tensor:
        mlp = block.act_mlp(block.proj_mlp(normed))
        c = c + gate.unsqueeze(1) * block.proj_out(torch.cat([o, mlp], dim=2))
        return c.clip(-65504, 65504) if c.dtype == torch.float16 else c

    return modulate, update


class FluxEditModel(VAEEditModel):
    """FluxPipeline: CLIP pooled + T5 tokens, 2×2-packed VAE latents, embedded guidance or true CFG.

    As in ``FluxPipeline``: ``guidance_scale`` is the embedded guidance of a guidance-distilled
    transformer (``guidance_embeds``; ignored otherwise) and ``true_cfg_scale > 1`` runs true CFG
    against the empty prompt (two calls, in diffusers' ``cache_context("cond"/"uncond")``).
    """

    kind = "flux"
    default_guidance = 3.5
    default_steps = 28
    uses_batch_cfg = False

    def __init__(
        self, pipe: Any, guidance_scale: float | None = None, true_cfg_scale: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(pipe, guidance_scale, **kwargs)
        self.true_cfg_scale = float(true_cfg_scale)

    @property
    def do_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        h, w = 2 * (self.height // (f * 2)), 2 * (self.width // (f * 2))
        return (int(self.transformer.config.in_channels) // 4, h, w)

    @property
    def distilled(self) -> bool:
        return bool(getattr(self.transformer.config, "guidance_embeds", False))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        tokens, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            device=self.device,
            max_sequence_length=int(self.max_sequence_length or 512),
        )
        return TextEmbeds(tokens, pooled, {"txt_ids": text_ids})

    def _set_timesteps(self, scheduler: Any, n: int) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c, h, w = self.latent_shape()
        seq = (h // 2) * (w // 2)
        cfg = scheduler.config
        sigmas = np.linspace(1.0, 1 / n, n)
        kwargs: dict[str, Any] = {}
        if cfg.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(
                seq,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            )
        scheduler.set_timesteps(sigmas=sigmas, **kwargs)

    def _ids(self, batch: int) -> torch.Tensor:
        c, h, w = self.latent_shape()
        return self.pipe._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, self.dtype)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        b, c, h, w = z.shape
        packed = self.pipe._pack_latents(
            z.to(self.dtype), b, c, h, w
        )  # [batch, token, channel]: 2×2 patches (h·w/4 tokens of 4·C channels)
        guidance = None
        if self.distilled:
            guidance = torch.full([b], self.guidance_scale, device=self.device, dtype=torch.float32)
        txt_ids = (cond.extra or {}).get("txt_ids")
        if txt_ids is None:
            txt_ids = torch.zeros(cond.tokens.shape[1], 3, device=self.device, dtype=self.dtype)
        out = self.transformer(
            hidden_states=packed,
            timestep=sigma.to(self.dtype),
            guidance=guidance,
            pooled_projections=cond.require_pooled().to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            txt_ids=txt_ids,
            img_ids=self._ids(b),
            return_dict=False,
        )[0]
        vae_f = int(self.pipe.vae_scale_factor)
        return self.pipe._unpack_latents(out, h * vae_f, w * vae_f, vae_f).float()  # [batch, channel, height, width]

    @torch.no_grad()
    def velocity(self, z, sigma, cond, guidance_scale=None, hook=None):  # type: ignore[override]
        batch = z.shape[0]
        sigma = self._sigma(sigma, batch)
        cond = cond.expand(batch)
        scale = self.true_cfg_scale if guidance_scale is None else float(guidance_scale)
        ctx = (hook() if hook is not None else None) or contextlib.nullcontext()
        with ctx:
            with self.transformer.cache_context("cond"):
                v = self._call(z, sigma, cond)
            if scale > 1.0:
                with self.transformer.cache_context("uncond"):
                    v_u = self._call(z, sigma, self.uncond(batch))
                v = v_u + scale * (v - v_u)
        return v


FluxAdapter.edit_model = FluxEditModel
FluxEditModel.adapter_class = FluxAdapter

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

import numpy as np
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
from latentlens.adapters.generation import TextEmbeds, VAEEditModel
from latentlens.adapters.sd3 import IMAGE, MOD, pred_site
from latentlens.errors import ConfigError


def _mod_site(name: str, block: Any) -> SiteSpec:
    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        t = tensor_arg(args, kwargs, "timestep", 4)  # [batch, 6 * channel]
        return block.scale_shift_table[None] + t.reshape(t.shape[0], 6, -1)  # [batch, 6, dim]

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


class PixArtEditModel(VAEEditModel):
    """PixArtAlphaPipeline / PixArtSigmaPipeline: T5 tokens with an attention mask, VAE latents, ε-prediction.

    A variance-preserving state ``x_t = a z₀ + b ε`` (``a = √ᾱ_t``, ``b = √(1 − ᾱ_t)``) is the flow state
    ``z_σ = x_t / (a + b)`` at ``σ = b / (a + b)``, so the editor keeps its rectified-flow conventions:
    ``_call`` maps σ to the (fractional) timestep of the pipeline's noise schedule, predicts ε, forms
    ``x̂₀ = (x_t − b ε̂) / a`` and returns ``v = (z − x̂₀) / σ``. An Euler step of that flow between two
    timesteps of the schedule is exactly a deterministic DDIM step (η = 0), so :meth:`generate` with a
    ``DDIMScheduler`` (``set_alpha_to_one=True``) reproduces the pipeline's own sampler.
    """

    kind = "pixart"
    default_guidance = 4.5
    default_steps = 20

    def __init__(self, pipe: Any, guidance_scale: float | None = None, **kwargs: Any) -> None:
        super().__init__(pipe, guidance_scale, **kwargs)
        alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ConfigError(
                f"The PixArt pipeline's scheduler {type(pipe.scheduler).__name__} has no alphas_cumprod; use a DDPM-"
                "family scheduler (DDIMScheduler, DPMSolverMultistepScheduler, ...)."
            )
        self._alphas = alphas.double().cpu()  # [T] ᾱ_t
        a, b = self._alphas.sqrt(), (1 - self._alphas).sqrt()
        self._sigma_table = (b / (a + b)).numpy()  # [T], increasing in t

    def _default_size(self) -> int:
        return int(self.transformer.config.sample_size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.transformer.config.in_channels), self.height // f, self.width // f)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        tokens, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, device=self.device, clean_caption=False,
            max_sequence_length=int(self.max_sequence_length or 120),
        )
        return TextEmbeds(tokens, None, mask=mask)

    def _timestep(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """σ ``[B]`` → (fractional timestep, a, b) ``[B]`` each; σ beyond the schedule is clamped to its ends."""
        t = np.interp(sigma.double().cpu().numpy(), self._sigma_table, np.arange(len(self._sigma_table)))
        low = np.floor(t).astype(np.int64)
        high = np.minimum(low + 1, len(self._alphas) - 1)
        frac = torch.from_numpy(t - low)
        alpha = self._alphas[low] * (1 - frac) + self._alphas[high] * frac  # [B]
        return torch.from_numpy(t), alpha.sqrt(), (1 - alpha).sqrt()

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        t, a, b = (x.to(self.device, torch.float32).view(-1, 1, 1, 1) for x in self._timestep(sigma))
        x_t = (a + b) * z.float()  # [B, C, h, w]
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if getattr(self.transformer.config, "sample_size", None) == 128:  # PixArt-α 1024 px micro-conditions
            batch = z.shape[0]
            added = {"resolution": torch.tensor([[self.height, self.width]] * batch, device=self.device, dtype=self.dtype),
                     "aspect_ratio": torch.tensor([[self.height / self.width]] * batch, device=self.device, dtype=self.dtype)}
        out = self.transformer(
            x_t.to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            encoder_attention_mask=None if cond.mask is None else cond.mask.to(self.device),
            timestep=t.view(-1).to(self.dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0].float()
        eps = out[:, : z.shape[1]]  # learned-σ models return [ε, variance]
        x0 = (x_t - b * eps) / a
        return (z.float() - x0) / sigma.to(self.device, torch.float32).view(-1, 1, 1, 1)

    def sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """σ of the scheduler's timesteps (descending), then 0."""
        steps = self._scheduler(num_inference_steps).timesteps.long().cpu().numpy()
        return torch.tensor([float(self._sigma_table[t]) for t in steps] + [0.0], dtype=torch.float32)

    def generate(self, cond: TextEmbeds, seed: Any = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """From ``x_T = noise`` at the schedule's first timestep, as the pipeline starts (``z = x_T / (a + b)``)."""
        x_T = self.noise(cond.batch, seed) if noise is None else noise.to(self.device, self.dtype)
        sigma_max = float(self.sigmas()[0])
        _, a, b = self._timestep(torch.tensor([sigma_max]))
        return self.ode(x_T / float(a + b), cond, sigma_max, 0.0)


PixArtAdapter.edit_model = PixArtEditModel
PixArtEditModel.adapter_class = PixArtAdapter

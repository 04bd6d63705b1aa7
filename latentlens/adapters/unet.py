"""Adapter for ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x, SDXL): the UNet's transformer blocks.

Blocks are the ``BasicTransformerBlock``s inside the down, mid and up ``Transformer2DModel``s, numbered
in execution order (down → mid → up; within a UNet block by attention, then by transformer layer).
The diffusers module path is an alias: ``down_blocks.1.attentions.0.transformer_blocks.0.resid_out.img``
names the same site as ``blocks.{i}.resid_out.img``. Names per block ``i`` (``[batch, token, channel]``,
the block's own width):

- ``resid_in.img`` / ``resid_out.img`` — the block's input / output tokens (after ``proj_in``),
- ``attn_out.img`` — self-attention (``attn1``) output, ``xattn_out.img`` — cross-attention (``attn2``)
  output, ``ff_out.img`` — feed-forward output, each before it is added to the residual,
- maps ``attn.img2img`` (``attn1``, exact and memory-bounded as for the DiTs) and ``attn.img2txt``
  (``attn2``: image queries × text keys).

Text enters through cross-attention only, so there are no ``.txt`` block sites. Boundary: ``latents``
(the UNet's ``sample``) and ``pred`` ``[batch, channel, height, width]``, ``text.tokens``
(``encoder_hidden_states``; SDXL: CLIP-L | CLIP-G states concatenated along channels, so both
tokenizers share token positions) and, for SDXL (``addition_embed_type="text_time"``), ``text.pooled``
(``added_cond_kwargs["text_embeds"]``).

Token grids differ per block: a block at resolution level ``l`` (``l`` downsamplers below the
latent) has the latent grid downsampled ``l`` times (each ``Downsample2D`` convolution's own
arithmetic: ``⌈n / 2⌉`` for SD/SDXL's stride-2, padding-1 convolutions); up blocks mirror the down
levels. ``CallState.grid`` is the latent grid; each attention spec knows its own, so ``reduce="pool=N"``
pools every map over N×N patches of *its block's* grid (N must divide every recorded block's grid, and
maps of different levels keep different lengths). CFG: the batch is ``[uncond, cond]`` when the
pipeline's ``do_classifier_free_guidance`` is true. Editing: :class:`UNetEditModel` (a DDPM schedule
seen as rectified flow, :class:`~latentlens.adapters.generation.DDPMFlowMixin`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from latentlens.adapters.base import (
    TOKENS,
    Adapter,
    AttnSpec,
    CallState,
    QKPart,
    SiteSpec,
    arg_site,
    out_site,
    tensor_arg,
    timestep_value,
)
from latentlens.adapters.generation import DDPMFlowMixin, TextEmbeds, VAEEditModel
from latentlens.adapters.sd3 import IMAGE, pred_site
from latentlens.errors import ConfigError
from latentlens.names import is_map

_PATH = re.compile(r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(.*)$")


def _downsampled(n: int, sampler: nn.Module) -> int:
    """The size of one spatial axis after a ``Downsample2D`` (its convolution's arithmetic, else halving)."""
    conv = getattr(sampler, "conv", None)
    if isinstance(conv, nn.Conv2d):
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if bool(getattr(sampler, "use_conv", True)) and getattr(sampler, "padding", 1) == 0:
            n += 1  # Downsample2D pads (0, 1, 0, 1) by hand before an unpadded convolution
        return (n + 2 * p - k) // s + 1
    return n // 2  # average pooling, kernel and stride 2


def _text_embeds_site(name: str, unet: nn.Module) -> SiteSpec:
    """SDXL's pooled text embedding: ``added_cond_kwargs["text_embeds"]`` of the UNet's forward."""

    def added(args: tuple, kwargs: dict) -> dict:
        value = kwargs.get("added_cond_kwargs", args[7] if len(args) > 7 else None)
        if not isinstance(value, dict) or "text_embeds" not in value:
            raise RuntimeError(
                "latentlens expected added_cond_kwargs['text_embeds'] in this UNet call (the UNet's config says "
                "addition_embed_type='text_time'); the pipeline's calling convention differs. Please report it."
            )
        return value

    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        return added(args, kwargs)["text_embeds"]  # [batch, channel]

    def set_(state: CallState, args: tuple, kwargs: dict, out: Any, value: torch.Tensor) -> Any:
        new = dict(added(args, kwargs))
        new["text_embeds"] = value
        if "added_cond_kwargs" in kwargs or len(args) <= 7:
            return args, {**kwargs, "added_cond_kwargs": new}
        return (*args[:7], new, *args[8:]), kwargs

    return SiteSpec(name, unet, "pre", get, set_, ("batch", "channel"))


def _attn_spec(
    block: int, attn: nn.Module, keys: str, quadrant: str, grid: Callable[[CallState], tuple[int, int] | None]
) -> AttnSpec:
    """Block ``block``'s self- (``keys="img"``) or cross-attention (``keys="txt"``) as an attention spec."""
    heads = int(attn.heads)
    q = (QKPart("img", attn.to_q, None, attn.norm_q),)
    k = (QKPart(keys, attn.to_k, None, attn.norm_k),)
    return AttnSpec(
        f"blocks.{block}.attn", block, attn, heads, attn.inner_dim // heads, q, k, {quadrant: ("img", keys)},
        mask_kwarg="attention_mask", scale=float(attn.scale), grid=grid,
    )  # fmt: skip


class UNetAdapter(Adapter):
    """Stable Diffusion 1.x / 2.x and SDXL (any ``UNet2DConditionModel``)."""

    name = "unet"
    transformer_classes = ("UNet2DConditionModel",)
    denoiser_attribute = "unet"
    text_width_key = "cross_attention_dim"

    # -- layout --------------------------------------------------------------------------------
    def layout(self) -> list[tuple[str, nn.Module, int]]:
        """``[(diffusers path, BasicTransformerBlock, resolution level)]`` in execution order."""
        unet = self.transformer
        out: list[tuple[str, nn.Module, int]] = []

        def add(prefix: str, block: nn.Module, level: int) -> None:
            for j, attention in enumerate(getattr(block, "attentions", None) or []):
                for k, tb in enumerate(getattr(attention, "transformer_blocks", None) or []):
                    out.append((f"{prefix}.attentions.{j}.transformer_blocks.{k}", tb, level))

        level = 0
        for d, block in enumerate(unet.down_blocks):
            add(f"down_blocks.{d}", block, level)
            level += 1 if getattr(block, "downsamplers", None) else 0
        if unet.mid_block is not None:
            add("mid_block", unet.mid_block, level)
        for u, block in enumerate(unet.up_blocks):
            add(f"up_blocks.{u}", block, level)
            level -= 1 if getattr(block, "upsamplers", None) else 0
        return out

    def level_grid(self, grid: tuple[int, int] | None, level: int) -> tuple[int, int] | None:
        """The token grid at resolution ``level`` for a call whose latent grid is ``grid``.

        Up blocks are upsampled to their skip connections' sizes, so level ``l`` has one size.
        """
        if grid is None:
            return None
        h, w = grid
        samplers = [b.downsamplers[0] for b in self.transformer.down_blocks if getattr(b, "downsamplers", None)]
        for sampler in samplers[:level]:
            h, w = _downsampled(h, sampler), _downsampled(w, sampler)
        return h, w

    def block_modules(self) -> list[nn.Module]:
        return [tb for _, tb, _ in self.layout()]

    def block_probe(self, index: int) -> nn.Module:
        return self.block_modules()[index].attn1.to_q

    def alias(self, name: str) -> str:
        m = _PATH.match(name)
        if m is None:
            return name
        path = name[: len(name) - len(m.group(4)) - 1]
        for i, (p, _, _) in enumerate(self.layout()):
            if p == path:
                return f"blocks.{i}.{m.group(4)}"
        return name

    def _sdxl(self) -> bool:
        return getattr(self.transformer.config, "addition_embed_type", None) == "text_time"

    # -- sites and maps ------------------------------------------------------------------------
    def sites(self) -> list[SiteSpec]:
        u = self.transformer
        out: list[SiteSpec] = [
            arg_site("latents", u, "sample", 0, IMAGE, "img"),
            arg_site("text.tokens", u, "encoder_hidden_states", 2, TOKENS, "txt"),
        ]
        if self._sdxl():
            out.append(_text_embeds_site("text.pooled", u))
        for i, b in enumerate(self.block_modules()):
            p = f"blocks.{i}."
            out.append(arg_site(p + "resid_in.img", b, "hidden_states", 0, TOKENS, "img"))
            out.append(out_site(p + "attn_out.img", b.attn1, None, TOKENS, "img"))
            if b.attn2 is not None:
                out.append(out_site(p + "xattn_out.img", b.attn2, None, TOKENS, "img"))
            out.append(out_site(p + "ff_out.img", b.ff, None, TOKENS, "img"))
            out.append(out_site(p + "resid_out.img", b, None, TOKENS, "img"))
        out.append(pred_site("pred", u, IMAGE))
        return out

    def attention(self) -> list[AttnSpec]:
        specs = []
        for i, (_, b, level) in enumerate(self.layout()):

            def grid(state: CallState, level: int = level) -> tuple[int, int] | None:
                return self.level_grid(state.grid, level)

            if not b.only_cross_attention:  # attn1 is self-attention (else it reads the text, like attn2)
                specs.append(_attn_spec(i, b.attn1, "img", "img2img", grid))
            if b.attn2 is not None:
                specs.append(_attn_spec(i, b.attn2, "txt", "img2txt", grid))
        return specs

    # -- per call ------------------------------------------------------------------------------
    def begin_call(self, state: CallState, args: tuple, kwargs: dict) -> None:
        x = tensor_arg(args, kwargs, "sample", 0)  # [batch, channel, height, width]
        ctx = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        ts = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        state.batch = x.shape[0]
        state.grid = (x.shape[-2], x.shape[-1])
        state.text_len = ctx.shape[1] if ctx is not None else 0
        state.timestep = timestep_value(ts)

    def cfg_doubled(self, args: tuple, kwargs: dict) -> bool:
        x = tensor_arg(args, kwargs, "sample", 0)
        flag = self.pipe_cfg_flag()
        if flag is None:
            return self.batch_halves_equal(x)
        return flag and x.shape[0] % 2 == 0

    def site_width(self, name: str) -> int | None:
        """Channel width of a token site; blocks have their own level's width (e.g. 320, 640, 1280).

        Example: ``adapter_for(sdxl_pipe).site_width("text.pooled")`` → 1280.
        """
        config = self.transformer.config
        if name == "text.pooled":
            if not self._sdxl():
                return None
            encoder = getattr(self.pipe, "text_encoder_2", None)
            if encoder is not None:
                return int(encoder.config.projection_dim)
            return int(config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim)
        if name.startswith("blocks.") and not is_map(name):
            index = int(name.split(".")[1])
            blocks = self.block_modules()
            return int(blocks[index].dim) if index < len(blocks) else None
        width = config.get(self.text_width_key) if name == "text.tokens" else None
        return int(width) if isinstance(width, int) else None


class UNetEditModel(DDPMFlowMixin, VAEEditModel):
    """StableDiffusionPipeline / StableDiffusionXLPipeline: CLIP text (SDXL: CLIP-L | CLIP-G + pooled),
    VAE latents, a DDPM schedule (ε- or v-prediction) seen as rectified flow, batch CFG.

    SDXL's micro-conditioning is the pipeline's default (original = target size = the image size, no
    crop) and its unconditional embedding is zeros when the pipeline's ``force_zeros_for_empty_prompt``
    is set, as in the pipeline. Example::

        model = EditModel.wrap(sd_pipe, num_inference_steps=30)
        z = model.generate(model.encode(["a red cube"]), seed=0)   # [1, 4, 64, 64]
    """

    kind = "unet"
    default_steps = 50

    def __init__(self, pipe: Any, guidance_scale: float | None = None, **kwargs: Any) -> None:
        unet = pipe.unet
        self.sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        self.default_guidance = 5.0 if self.sdxl else 7.5
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            raise ConfigError(
                "This UNet takes a guidance embedding (time_cond_proj_dim, e.g. an LCM-distilled model); the EMS "
                "editor supports UNets that use classifier-free guidance. Pass a Stable Diffusion or SDXL pipeline."
            )
        super().__init__(pipe, guidance_scale, **kwargs)
        if self.sdxl:
            expected = int(unet.add_embedding.linear_1.in_features)
            got = 6 * int(unet.config.addition_time_embed_dim) + self._pooled_width()
            if expected != got:
                raise ConfigError(
                    f"This SDXL UNet expects {expected} added-conditioning channels, but 6 time ids and the pooled "
                    f"text embedding give {got} (an SDXL refiner with an aesthetic score?); the editor supports "
                    "SDXL base pipelines."
                )

    def _pooled_width(self) -> int:
        width = self.adapter.site_width("text.pooled")
        if width is None:
            raise ConfigError("This SDXL pipeline has no pooled text embedding width; load it with text_encoder_2.")
        return width

    def _default_size(self) -> int:
        size = self.transformer.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.transformer.config.in_channels), self.height // f, self.width // f)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        if self.sdxl:
            tokens, _, pooled, _ = self.pipe.encode_prompt(
                prompt=list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return TextEmbeds(tokens, pooled)
        tokens, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return TextEmbeds(tokens, None)

    def uncond(self, batch: int) -> TextEmbeds:
        """The empty prompt's embeddings (SDXL with ``force_zeros_for_empty_prompt``: zeros), cached."""
        if self._uncond is None:
            e = self.encode([""])
            if self.sdxl and bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False)):
                e = TextEmbeds(torch.zeros_like(e.tokens), torch.zeros_like(e.require_pooled()))
            self._uncond = e
        return self._uncond.expand(batch)

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        added = None
        if self.sdxl:
            batch = x_t.shape[0]
            h, w = self.height, self.width
            time_ids = torch.tensor([[h, w, 0, 0, h, w]] * batch, device=self.device, dtype=self.dtype)
            added = {"text_embeds": cond.require_pooled().to(self.dtype), "time_ids": time_ids}
        return self.transformer(
            x_t.to(self.dtype),
            t,
            encoder_hidden_states=cond.tokens.to(self.dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


UNetAdapter.edit_model = UNetEditModel
UNetEditModel.adapter_class = UNetAdapter

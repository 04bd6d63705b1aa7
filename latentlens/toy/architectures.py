"""The three toy denoisers: one genuine diffusers class per architecture, built and called one way each.

Every toy model denoises 32×32 RGB pixels with rectified flow (velocity ``ε − x0`` at
``timestep = σ·1000``, see :mod:`latentlens.toy.train`), conditioned on the same MiniLM token
states; they differ only in the denoiser:

- ``mmdit`` (``toy``): :class:`diffusers.SD3Transformer2DModel`, joint text–image attention
  (the text stream is updated by every block), plus the pooled text vector (AdaLN);
- ``pixart`` (``toy-pixart``): :class:`diffusers.PixArtTransformer2DModel`, self-attention and
  cross-attention to the projected text (the text is *not* updated by the blocks), AdaLN-single on the
  timestep only, the text padding mask passed as ``encoder_attention_mask`` as PixArt's pipelines do;
- ``unet`` (``toy-unet``): :class:`diffusers.UNet2DConditionModel` with cross-attention (the SD 1.x
  class), convolutional levels 32 → 16 → 8 px, transformer blocks at 16 and 8 px (no attention at
  the full-resolution level, as in SDXL), text zero-padded as the MM-DiT toy sees it.

:data:`ARCHITECTURES` is the one home of what an architecture name implies (model name, pipeline
class, weights folder, sizes); :func:`build_denoiser` and :func:`predict` are the only builder and the
only calling convention, shared by the trainer, the pipelines and the editor.

Example::

    from latentlens.toy.architectures import ARCHITECTURES, build_denoiser
    unet = build_denoiser("unet")                 # the planned toy-unet, random weights
    ARCHITECTURES["unet"].model_name              # 'toy-unet'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from latentlens.errors import ConfigError, StoreError

if TYPE_CHECKING:  # torch is imported by the builders only, so naming a model stays cheap
    import torch

Arch = Literal["mmdit", "pixart", "unet"]
TEXT_DIM = 384  # MiniLM-L6 width (latentlens.toy.text_encoder.TEXT_DIM)
_TOY_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ToyArchitecture:
    """What one toy architecture name implies.

    ``sizes`` are the :class:`~latentlens.toy.train.TrainConfig` fields of the planned model (chosen for
    a parameter count near the v2 MM-DiT's 4.75 M; measured counts in ``docs/toy_models.md``).
    """

    arch: Arch
    model_name: str  # the load_pipeline / --model name
    pipeline_class: str  # the class name in model_index.json
    denoiser_class: str  # the diffusers class of the denoiser
    denoiser_attribute: str  # the pipeline attribute holding it
    weights_folder: str  # below latentlens/toy/
    sizes: tuple[tuple[str, Any], ...] = ()

    @property
    def weights_dir(self) -> Path:
        """The bundled weights folder of this architecture (it may not exist yet)."""
        return _TOY_DIR / self.weights_folder

    def install_command(self, out: str | None = None) -> str:
        """The one command that trains this model on world v2 and installs it into :attr:`weights_dir`."""
        out = out or f"runs/train-{self.model_name}"
        return f"latentlens train-toy --arch {self.arch} --world v2 --out {out} --install"

    def installed(self) -> bool:
        """Whether :attr:`weights_dir` holds a pipeline (its ``model_index.json``)."""
        return (self.weights_dir / "model_index.json").is_file()

    def require_installed(self) -> None:
        """Raise :class:`StoreError` naming the missing folder and the command that creates it."""
        if self.installed():
            return
        raise StoreError(
            f"The {self.model_name} model has no weights yet: {self.weights_dir} does not hold a pipeline. "
            f"Train and install them with `{self.install_command()}` (add --device cuda on a GPU, where it takes "
            "minutes; on one CPU core it takes hours, and running the same command again resumes it); --install "
            f"exports the trained EMA weights into {self.weights_dir}."
        )


ARCHITECTURES: dict[str, ToyArchitecture] = {
    "mmdit": ToyArchitecture(
        "mmdit", "toy", "ToyPipeline", "SD3Transformer2DModel", "transformer", "weights"
    ),
    "pixart": ToyArchitecture(
        "pixart", "toy-pixart", "ToyPixArtPipeline", "PixArtTransformer2DModel", "transformer", "weights-pixart",
        sizes=(("num_layers", 8), ("num_attention_heads", 6), ("attention_head_dim", 30)),
    ),
    "unet": ToyArchitecture(
        "unet", "toy-unet", "ToyUNetPipeline", "UNet2DConditionModel", "unet", "weights-unet",
        sizes=(("unet_block_out_channels", (32, 64, 128)), ("unet_layers_per_block", 1), ("attention_head_dim", 32)),
    ),
}  # fmt: skip
#: toy model name -> architecture, e.g. ``"toy-unet" -> ARCHITECTURES["unet"]``
BY_MODEL_NAME: dict[str, ToyArchitecture] = {a.model_name: a for a in ARCHITECTURES.values()}
BY_PIPELINE_CLASS: dict[str, ToyArchitecture] = {a.pipeline_class: a for a in ARCHITECTURES.values()}


def architecture(arch: str) -> ToyArchitecture:
    """The :class:`ToyArchitecture` of ``arch``; a clear error for an unknown name."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown toy architecture {arch!r}; use one of: {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


def build_transformer(
    sample_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 6,
    num_attention_heads: int = 4,
    attention_head_dim: int = 48,
    text_dim: int = TEXT_DIM,
) -> Any:
    """A fresh (randomly initialised) toy MM-DiT (``SD3Transformer2DModel``) in pixel space; sizes as in the model card."""
    from diffusers import SD3Transformer2DModel

    width = num_attention_heads * attention_head_dim
    return SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch_size,
        in_channels=3,
        out_channels=3,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=text_dim,
        caption_projection_dim=width,
        pooled_projection_dim=text_dim,
        pos_embed_max_size=sample_size // patch_size,
    )


def build_pixart(
    sample_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 8,
    num_attention_heads: int = 6,
    attention_head_dim: int = 30,
    text_dim: int = TEXT_DIM,
) -> Any:
    """A fresh toy ``PixArtTransformer2DModel`` in pixel space: PixArt-α's block (AdaLN-single, GELU-tanh MLP,
    cross-attention to the caption projection), velocity output only (no learned variance channels)."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=patch_size,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        caption_channels=text_dim,
        in_channels=3,
        out_channels=3,
        cross_attention_dim=num_attention_heads * attention_head_dim,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def build_unet(
    sample_size: int = 32,
    block_out_channels: tuple[int, ...] = (32, 64, 128),
    layers_per_block: int = 1,
    attention_head_dim: int = 32,
    text_dim: int = TEXT_DIM,
    attention_levels: int | None = None,
) -> Any:
    """A fresh toy ``UNet2DConditionModel`` (SD 1.x block types): cross-attention transformer blocks at the
    ``attention_levels`` lowest-resolution levels (default: every level but the first, full-resolution
    one) and in the mid block, plain resnet levels above them; heads of ``attention_head_dim`` channels
    (diffusers' ``attention_head_dim`` argument is the head *count*)."""
    from diffusers import UNet2DConditionModel

    channels = tuple(int(c) for c in block_out_channels)
    if len(channels) < 2 or any(c % attention_head_dim for c in channels):
        raise ConfigError(
            f"unet_block_out_channels={channels} needs at least 2 levels, each a multiple of the head width "
            f"{attention_head_dim}."
        )
    levels = len(channels) - 1 if attention_levels is None else int(attention_levels)
    if not 0 <= levels <= len(channels):
        raise ConfigError(
            f"unet_attention_levels={attention_levels!r} must be between 0 and the {len(channels)} levels of "
            f"unet_block_out_channels={channels}."
        )
    plain = len(channels) - levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * levels
    up = ("CrossAttnUpBlock2D",) * levels + ("UpBlock2D",) * plain
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=tuple(c // attention_head_dim for c in channels),
        cross_attention_dim=text_dim,
        norm_num_groups=8,
    )


def build_denoiser(arch: str, **sizes: Any) -> Any:
    """A fresh denoiser of ``arch`` (``sizes``: the builder's keyword arguments; default: the planned model).

    Example: ``build_denoiser("pixart", num_layers=1)``.
    """
    architecture(arch)
    if arch == "mmdit":
        return build_transformer(**sizes)
    if arch == "pixart":
        return build_pixart(**sizes)
    return build_unet(**sizes)


def text_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, token]`` 1 for real text tokens, 0 for padding (the toy encoder pads with zero rows)."""
    return (tokens != 0).any(dim=-1).to(tokens.dtype)


def predict(
    arch: str,
    denoiser: Any,
    latents: torch.Tensor,  # [batch, 3, height, width]
    timestep: torch.Tensor,  # [batch], σ·1000
    tokens: torch.Tensor,  # [batch, token, 384]
    pooled: torch.Tensor | None,  # [batch, 384] (MM-DiT only)
    mask: torch.Tensor | None = None,  # [batch, token] (PixArt only)
    joint_attention_kwargs: dict[str, Any] | None = None,  # MM-DiT only, as SD3's pipeline passes them
) -> torch.Tensor:
    """One denoiser call in the toy convention: the velocity ``[batch, 3, height, width]``."""
    if arch == "mmdit":
        extra = {} if joint_attention_kwargs is None else {"joint_attention_kwargs": joint_attention_kwargs}
        return denoiser(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            return_dict=False,
            **extra,
        )[0]
    if arch == "pixart":
        return denoiser(
            latents,
            encoder_hidden_states=tokens,
            timestep=timestep,
            encoder_attention_mask=mask,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
    if arch == "unet":
        return denoiser(latents, timestep, encoder_hidden_states=tokens, return_dict=False)[0]
    raise ConfigError(f"Unknown toy architecture {arch!r}; use one of: {', '.join(ARCHITECTURES)}.")


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ARCHITECTURES",
    "Arch",
    "BY_MODEL_NAME",
    "BY_PIPELINE_CLASS",
    "ToyArchitecture",
    "architecture",
    "build_denoiser",
    "build_pixart",
    "build_transformer",
    "build_unet",
    "parameter_count",
    "predict",
    "text_mask",
]

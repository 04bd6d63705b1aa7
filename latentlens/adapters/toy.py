"""Adapters for the bundled toy models: ``ToyPipeline`` (MM-DiT), ``ToyPixArtPipeline``, ``ToyUNetPipeline``.

The hook layouts and names are those of the real architectures (``sd3.py``, ``pixart.py``, ``unet.py``):
each toy is a genuine diffusers denoiser. What differs is the pipeline: one MiniLM text segment of
``tokenizer_max_length`` (24) tokens, pixel space (no VAE), rectified flow for every architecture
(velocity at ``timestep = σ·1000``, so the editor's flow path applies as is), and one
:class:`ToyEditModel` whose denoiser call is the toy convention of
:func:`latentlens.toy.architectures.predict`.
"""

from __future__ import annotations

from typing import Any, ClassVar
from collections.abc import Sequence

import torch

from latentlens.adapters.base import TextSegment
from latentlens.adapters.generation import EditModel, TextEmbeds
from latentlens.adapters.pixart import PixArtAdapter
from latentlens.adapters.sd3 import SD3Adapter
from latentlens.adapters.unet import UNetAdapter


def _minilm_tokenizer(
    model_id: str, pipeline_class: str, model_names: tuple[str, ...], classes: tuple[str, ...]
) -> Any:
    if model_id not in model_names and pipeline_class not in classes:
        return None
    from transformers import AutoTokenizer

    from latentlens.toy.text_encoder import text_encoder_path

    return AutoTokenizer.from_pretrained(str(text_encoder_path()), local_files_only=True)


class ToyAdapter(SD3Adapter):
    """The toy MM-DiT: SD3's hooks, the toy pipeline's text segment and editor."""

    pipeline_classes = ("ToyPipeline",)
    model_names: ClassVar[tuple[str, ...]] = ("toy",)

    @classmethod
    def offline_tokenizer(cls, model_id: str, pipeline_class: str) -> Any:
        return _minilm_tokenizer(model_id, pipeline_class, cls.model_names, cls.pipeline_classes)


class ToyPixArtAdapter(PixArtAdapter):
    """The toy cross-attention DiT: PixArt's hooks, one MiniLM segment of the pipeline's 24 tokens."""

    pipeline_classes = ("ToyPixArtPipeline",)
    model_names: ClassVar[tuple[str, ...]] = ("toy-pixart",)

    def text_segments(self, max_sequence_length: int | None = None) -> list[TextSegment]:
        tok = getattr(self.pipe, "tokenizer", None)
        return [TextSegment(tok, 0, int(self.pipe.tokenizer_max_length))] if tok is not None else []

    @classmethod
    def offline_tokenizer(cls, model_id: str, pipeline_class: str) -> Any:
        return _minilm_tokenizer(model_id, pipeline_class, cls.model_names, cls.pipeline_classes)


class ToyUNetAdapter(UNetAdapter):
    """The toy UNet: the UNet's hooks (``blocks.{i}`` in execution order), one MiniLM segment."""

    pipeline_classes = ("ToyUNetPipeline",)
    model_names: ClassVar[tuple[str, ...]] = ("toy-unet",)

    @classmethod
    def offline_tokenizer(cls, model_id: str, pipeline_class: str) -> Any:
        return _minilm_tokenizer(model_id, pipeline_class, cls.model_names, cls.pipeline_classes)


class ToyEditModel(EditModel):
    """The bundled toy models: pixel space, so encode/decode are the identity (decode clamps to [-1, 1]).

    One class for the three architectures: the pipeline's ``arch`` picks the denoiser call
    (:func:`latentlens.toy.architectures.predict`); PixArt's text padding mask travels in
    :attr:`TextEmbeds.mask`.
    """

    kind = "toy"
    shapes_world = True

    def __init__(self, pipe: Any, guidance_scale: float | None = None, **kwargs: Any) -> None:
        from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS  # imports diffusers

        self.default_guidance = DEFAULT_GUIDANCE_SCALE
        self.default_steps = DEFAULT_NUM_INFERENCE_STEPS
        self.arch = str(getattr(pipe, "arch", "mmdit"))
        super().__init__(pipe, guidance_scale, **kwargs)

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size)

    def latent_shape(self) -> tuple[int, int, int]:
        return (int(self.transformer.config.in_channels), self.height, self.width)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        from latentlens.toy.architectures import text_mask

        tokens, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), device=self.device, do_classifier_free_guidance=False
        )
        mask = text_mask(tokens) if self.arch == "pixart" else None
        return TextEmbeds(tokens, pooled, mask=mask)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        from latentlens.toy.architectures import predict

        return predict(
            self.arch,
            self.transformer,
            z.to(self.dtype),
            (sigma * 1000.0).to(self.dtype),
            cond.tokens.to(self.dtype),
            cond.require_pooled().to(self.dtype) if self.arch == "mmdit" else None,
            None if cond.mask is None else cond.mask.to(self.device, self.dtype),
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.float().clamp(-1, 1)


class ToyPixArtEditModel(ToyEditModel):
    """:class:`ToyEditModel` of ``ToyPixArtPipeline``."""

    kind = "toy-pixart"


class ToyUNetEditModel(ToyEditModel):
    """:class:`ToyEditModel` of ``ToyUNetPipeline``."""

    kind = "toy-unet"


ToyAdapter.edit_model = ToyEditModel
ToyEditModel.adapter_class = ToyAdapter
ToyPixArtAdapter.edit_model = ToyPixArtEditModel
ToyPixArtEditModel.adapter_class = ToyPixArtAdapter
ToyUNetAdapter.edit_model = ToyUNetEditModel
ToyUNetEditModel.adapter_class = ToyUNetAdapter

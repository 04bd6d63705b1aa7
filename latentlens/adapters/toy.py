"""Adapter for the bundled toy model (``ToyPipeline`` around an ``SD3Transformer2DModel``).

The hook layout and names are SD3's (see ``sd3.py``): the toy is a genuine MM-DiT. What differs is the
pipeline: one MiniLM text segment of ``tokenizer_max_length`` tokens, pixel space (no VAE), and
:class:`ToyEditModel` for the editor.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import torch

from latentlens.adapters.generation import EditModel, TextEmbeds
from latentlens.adapters.sd3 import SD3Adapter


class ToyAdapter(SD3Adapter):
    """The toy model: SD3's hooks, the toy pipeline's text segment and editor."""

    pipeline_classes = ("ToyPipeline",)

    @classmethod
    def offline_tokenizer(cls, model_id: str, pipeline_class: str) -> Any:
        if model_id != "toy" and pipeline_class not in cls.pipeline_classes:
            return None
        from transformers import AutoTokenizer

        from latentlens.toy.text_encoder import text_encoder_path

        return AutoTokenizer.from_pretrained(str(text_encoder_path()), local_files_only=True)


class ToyEditModel(EditModel):
    """The bundled toy model: pixel space, so encode/decode are the identity (decode clamps to [-1, 1])."""

    kind = "toy"

    def __init__(self, pipe: Any, guidance_scale: float | None = None, **kwargs: Any) -> None:
        from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS  # imports diffusers

        self.default_guidance = DEFAULT_GUIDANCE_SCALE
        self.default_steps = DEFAULT_NUM_INFERENCE_STEPS
        super().__init__(pipe, guidance_scale, **kwargs)

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size)

    def latent_shape(self) -> tuple[int, int, int]:
        return (int(self.transformer.config.in_channels), self.height, self.width)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        tokens, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), device=self.device, do_classifier_free_guidance=False
        )
        return TextEmbeds(tokens, pooled)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        return self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=(sigma * 1000.0).to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            pooled_projections=cond.require_pooled().to(self.dtype),
            return_dict=False,
        )[0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.float().clamp(-1, 1)


ToyAdapter.edit_model = ToyEditModel
ToyEditModel.adapter_class = ToyAdapter

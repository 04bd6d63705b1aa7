"""One small interface over a rectified-flow pipeline, the only thing the editor talks to.

:class:`EditModel` hides how each architecture encodes text, lays out its latent, calls its
transformer and decodes: the EMS sampler, the baselines and the benchmark are written once
against it. Supported: the bundled toy model (pixels), SD3 / SD3.5 (VAE latents), Flux.1
(VAE latents packed 2×2 into tokens; guidance-distilled or true CFG) and PixArt-α/Σ (a DDPM
ε-prediction model, seen through the rectified-flow reparametrisation below).

Conventions (rectified flow, as in diffusers' ``FlowMatchEulerDiscreteScheduler``):
``z_σ = (1 − σ) z₀ + σ ε`` with σ ∈ [0, 1] (0 = clean, 1 = pure noise); the transformer predicts
the velocity ``v = ε − z₀``, so the clean prediction is ``x̂₀ = z_σ − σ v``. Latents ``z`` always
have the spatial layout ``[batch, channels, h, w]`` (Flux is packed only inside :meth:`velocity`).

Example::

    model = EditModel.wrap(latentlens.load_pipeline("toy"))
    cond = model.encode(["a small red circle on the left on a gray background"])
    z = model.generate(cond, seed=0)              # [1, 3, 32, 32]
    images = model.decode(z)                      # [1, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from latentlens.errors import ConfigError


@dataclass
class TextEmbeds:
    """Per-token and pooled text embeddings of a batch of prompts, aligned position by position.

    ``tokens`` ``[batch, tokens, dim]`` is what the transformer receives as ``encoder_hidden_states``
    (SD3: CLIP-L|CLIP-G tokens then T5 tokens; Flux: T5; toy: MiniLM); ``pooled`` ``[batch, dim]`` is
    ``pooled_projections`` (None where the model has none). ``extra`` holds per-architecture inputs
    that do not depend on the prompt's meaning (Flux ``txt_ids``). ``mask`` ``[batch, tokens]`` is the
    text attention mask of models that take one (PixArt's T5 padding), else None.
    """

    tokens: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor | None  # [B, P]
    extra: dict[str, Any] | None = None
    mask: torch.Tensor | None = None  # [B, L]

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: Any) -> "TextEmbeds":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return replace(self, tokens=self.tokens[index], pooled=None if self.pooled is None else self.pooled[index],
                       mask=None if self.mask is None else self.mask[index])

    def expand(self, batch: int) -> "TextEmbeds":
        """Repeat a batch-1 embedding ``batch`` times (or return self when the batch already matches)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ConfigError(f"Cannot broadcast text embeddings of batch {self.batch} to batch {batch}.")
        return replace(
            self,
            tokens=self.tokens.expand(batch, -1, -1),
            pooled=None if self.pooled is None else self.pooled.expand(batch, -1),
            mask=None if self.mask is None else self.mask.expand(batch, -1),
        )

    @staticmethod
    def cat(items: Sequence["TextEmbeds"]) -> "TextEmbeds":
        pooled = None if items[0].pooled is None else torch.cat([e.pooled for e in items])
        mask = None if items[0].mask is None else torch.cat([e.mask for e in items])
        return TextEmbeds(torch.cat([e.tokens for e in items]), pooled, items[0].extra, mask)


class EditModel:
    """What the editor needs from a pipeline; build one with :meth:`wrap`.

    Args:
        pipe: a supported diffusers pipeline.
        guidance_scale: classifier-free guidance used for every prediction (the pipeline's default
            when None: toy 4.0, SD3 7.0, Flux 3.5 embedded guidance).
        num_inference_steps: steps of the ODE sampler used for generation/regeneration.
        max_sequence_length: T5 tokens (SD3/Flux); the toy model always uses its 24.
    """

    kind = "base"
    default_guidance = 4.0
    default_steps = 20

    def __init__(
        self,
        pipe: Any,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        max_sequence_length: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.guidance_scale = float(self.default_guidance if guidance_scale is None else guidance_scale)
        self.num_inference_steps = int(num_inference_steps or self.default_steps)
        if self.num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self.max_sequence_length = max_sequence_length
        self.height = int(height or self._default_size())
        self.width = int(width or self._default_size())
        self._uncond: TextEmbeds | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def wrap(pipe: Any, **kwargs: Any) -> "EditModel":
        """The :class:`EditModel` for ``pipe`` (an existing :class:`EditModel` is returned as is)."""
        if isinstance(pipe, EditModel):
            return pipe
        name = type(pipe).__name__
        transformer = getattr(pipe, "transformer", None)
        tname = type(transformer).__name__ if transformer is not None else "none"
        if name == "ToyPipeline":
            return ToyEditModel(pipe, **kwargs)
        if tname == "SD3Transformer2DModel":
            return SD3EditModel(pipe, **kwargs)
        if tname == "FluxTransformer2DModel":
            return FluxEditModel(pipe, **kwargs)
        if tname == "PixArtTransformer2DModel":
            return PixArtEditModel(pipe, **kwargs)
        raise ConfigError(
            f"The EMS editor supports the toy model, SD3/SD3.5, Flux.1 and PixArt-α/Σ pipelines; got {name} "
            f"with transformer {tname}."
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def _default_size(self) -> int:
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, h, w)`` of one latent."""
        raise NotImplementedError

    def tokenizers(self) -> list[tuple[Any, int, int]]:
        """``[(tokenizer, offset, length)]``: which tokenizer produced the text tokens at ``offset``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ text
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        """Encode prompts with the pipeline's own text encoder(s) (no CFG negatives)."""
        raise NotImplementedError

    def uncond(self, batch: int) -> TextEmbeds:
        """Embeddings of the unconditional (empty) prompt, repeated ``batch`` times; cached."""
        if self._uncond is None:
            self._uncond = self.encode([""])
        return self._uncond.expand(batch)

    # ------------------------------------------------------------------ prediction
    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        """One transformer call on ``z`` ``[B, C, h, w]`` at ``sigma`` ``[B]``; returns the velocity."""
        raise NotImplementedError

    @torch.no_grad()
    def velocity(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: TextEmbeds,
        guidance_scale: float | None = None,
        hook: Callable[[], Any] | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, C, h, w]`` with classifier-free guidance as configured.

        ``hook``: a context-manager factory (e.g. ``lambda: latentlens.steer(...)``) active around the
        transformer call(s) for these rows only.
        """
        batch = z.shape[0]
        sigma = self._sigma(sigma, batch)
        cond = cond.expand(batch)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        ctx = (hook() if hook is not None else None) or contextlib.nullcontext()
        with ctx:
            if scale > 1.0 and self.uses_batch_cfg:
                both = TextEmbeds.cat([self.uncond(batch), cond])
                v = self._call(torch.cat([z, z]), torch.cat([sigma, sigma]), both)  # [2B, C, h, w]
                v_u, v_c = v.chunk(2)
                return v_u + scale * (v_c - v_u)
            return self._call(z, sigma, cond)

    uses_batch_cfg = True

    def x0(self, z_t: torch.Tensor, sigma: torch.Tensor | float, cond: TextEmbeds, **kwargs: Any) -> torch.Tensor:
        """The clean-latent prediction ``x̂₀ = z_σ − σ v`` ``[B, C, h, w]``."""
        sigma_b = self._sigma(sigma, z_t.shape[0]).view(-1, 1, 1, 1)
        return z_t - sigma_b * self.velocity(z_t, sigma, cond, **kwargs)

    def _sigma(self, sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        return sigma.expand(batch).clone() if sigma.ndim == 0 else sigma

    # ------------------------------------------------------------------ schedules and sampling
    def sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """The pipeline scheduler's σ schedule ``[n + 1]`` from ~1 down to 0 (a private copy of the scheduler)."""
        return self._scheduler(num_inference_steps).sigmas.float().cpu()

    def _scheduler(self, num_inference_steps: int | None = None) -> Any:
        """A private copy of the pipeline's scheduler with its timesteps set for ``n`` steps."""
        n = int(num_inference_steps or self.num_inference_steps)
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        self._set_timesteps(scheduler, n)
        return scheduler

    def _set_timesteps(self, scheduler: Any, n: int) -> None:
        scheduler.set_timesteps(n)

    def noise(self, batch: int, seed: int | Sequence[int] | torch.Generator | None) -> torch.Tensor:
        """Gaussian noise ``[batch, C, h, w]``; an int seed (or one seed per row) makes it reproducible."""
        shape = (batch, *self.latent_shape())
        if isinstance(seed, torch.Generator):
            return torch.randn(shape, generator=seed).to(self.device, self.dtype)
        if seed is None:
            return torch.randn(shape).to(self.device, self.dtype)
        seeds = [int(seed)] * batch if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if len(seeds) != batch:
            raise ConfigError(f"{len(seeds)} seeds were given for {batch} images; give one per image.")
        rows = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(rows).to(self.device, self.dtype)

    @torch.no_grad()
    def ode(
        self,
        z: torch.Tensor,
        cond: TextEmbeds,
        sigma_from: float = 1.0,
        sigma_to: float = 0.0,
        num_inference_steps: int | None = None,
        hook: Callable[[int], Any] | None = None,
    ) -> torch.Tensor:
        """Euler-integrate the flow ODE from ``sigma_from`` to ``sigma_to`` (either direction).

        Uses the scheduler's σ grid restricted to the interval (plus its end points), so that
        denoising from 1 to 0 reproduces the pipeline's own sampler. Inversion (``sigma_to > sigma_from``)
        walks the same grid backwards. ``hook(i)``: a context manager (or None) active around the
        transformer call(s) of Euler step ``i``.
        """
        grid = self.sigmas(num_inference_steps)  # descending, ends at 0
        lo, hi = sorted((float(sigma_from), float(sigma_to)))
        inner = [float(s) for s in grid if lo + 1e-6 < float(s) < hi - 1e-6]
        points = sorted(set([lo, hi] + inner), reverse=True)  # descending
        if sigma_to > sigma_from:
            points = points[::-1]
        for i, (s, s_next) in enumerate(zip(points[:-1], points[1:])):
            step_hook = None if hook is None else (lambda i=i: hook(i))
            v = self.velocity(z, s, cond, hook=step_hook)
            z = z + (s_next - s) * v
        return z

    def generate(self, cond: TextEmbeds, seed: Any = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Generate latents ``[B, C, h, w]`` from noise (``seed`` or explicit ``noise``) under ``cond``."""
        z = self.noise(cond.batch, seed) if noise is None else noise.to(self.device, self.dtype)
        return self.ode(z, cond, 1.0, 0.0)

    # ------------------------------------------------------------------ images
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → latents ``[B, C, h, w]``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → images ``[B, 3, H, W]`` in [-1, 1] (clamped)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------- toy


class ToyEditModel(EditModel):
    """The bundled toy model: pixel space, so encode/decode are the identity (decode clamps to [-1, 1])."""

    kind = "toy"

    def __init__(self, pipe: Any, guidance_scale: float | None = None, **kwargs: Any) -> None:
        from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

        self.default_guidance = DEFAULT_GUIDANCE_SCALE
        self.default_steps = DEFAULT_NUM_INFERENCE_STEPS
        super().__init__(pipe, guidance_scale, **kwargs)

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size)

    def latent_shape(self) -> tuple[int, int, int]:
        return (int(self.transformer.config.in_channels), self.height, self.width)

    def tokenizers(self) -> list[tuple[Any, int, int]]:
        return [(self.pipe.tokenizer, 0, int(self.pipe.tokenizer_max_length))]

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
            pooled_projections=cond.pooled.to(self.dtype),
            return_dict=False,
        )[0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.float().clamp(-1, 1)


# ---------------------------------------------------------------------------------- SD3


class _VAEMixin:
    """VAE encode/decode with the pipeline's shift and scaling factors (SD3, Flux)."""

    pipe: Any

    def _vae_factors(self) -> tuple[float, float]:
        cfg = self.pipe.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return float(shift), float(cfg.scaling_factor)

    @torch.no_grad()
    def _vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        shift, scale = self._vae_factors()
        posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
        return (posterior.mode() - shift) * scale  # the distribution's mode: deterministic

    @torch.no_grad()
    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        shift, scale = self._vae_factors()
        return vae.decode((z / scale + shift).to(vae.device, vae.dtype), return_dict=False)[0].float().clamp(-1, 1)


class SD3EditModel(_VAEMixin, EditModel):
    """StableDiffusion3Pipeline (SD3 / SD3.5): CLIP-L + CLIP-G (+ T5) text, VAE latents, batch CFG."""

    kind = "sd3"
    default_guidance = 7.0
    default_steps = 28

    def _default_size(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.transformer.config.in_channels), self.height // f, self.width // f)

    def tokenizers(self) -> list[tuple[Any, int, int]]:
        clip_len = int(getattr(self.pipe, "tokenizer_max_length", 77))
        out = [(self.pipe.tokenizer, 0, clip_len)]
        if getattr(self.pipe, "tokenizer_3", None) is not None and getattr(self.pipe, "text_encoder_3", None):
            out.append((self.pipe.tokenizer_3, clip_len, int(self.max_sequence_length or 256)))
        return out

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        prompts = list(prompts)
        tokens, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=int(self.max_sequence_length or 256),
        )
        return TextEmbeds(tokens, pooled)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        return self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=(sigma * 1000.0).to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            pooled_projections=cond.pooled.to(self.dtype),
            return_dict=False,
        )[0].float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._vae_encode(images).to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(z)


# ---------------------------------------------------------------------------------- Flux


class FluxEditModel(_VAEMixin, EditModel):
    """FluxPipeline: CLIP pooled + T5 tokens, 2×2-packed VAE latents, embedded guidance or true CFG.

    As in ``FluxPipeline``: ``guidance_scale`` is the embedded guidance of a guidance-distilled
    transformer (``guidance_embeds``; ignored otherwise) and ``true_cfg_scale > 1`` runs true CFG
    against the empty prompt (two calls, in diffusers' ``cache_context("cond"/"uncond")``).
    """

    kind = "flux"
    default_guidance = 3.5
    default_steps = 28
    uses_batch_cfg = False

    def __init__(self, pipe: Any, guidance_scale: float | None = None, true_cfg_scale: float = 1.0,
                 **kwargs: Any) -> None:
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

    def tokenizers(self) -> list[tuple[Any, int, int]]:
        return [(self.pipe.tokenizer_2, 0, int(self.max_sequence_length or 512))]

    @property
    def distilled(self) -> bool:
        return bool(getattr(self.transformer.config, "guidance_embeds", False))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeds:
        tokens, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device,
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
            kwargs["mu"] = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=sigmas, **kwargs)

    def _ids(self, batch: int) -> torch.Tensor:
        c, h, w = self.latent_shape()
        return self.pipe._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, self.dtype)

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        b, c, h, w = z.shape
        packed = self.pipe._pack_latents(z.to(self.dtype), b, c, h, w)  # [B, hw/4, 4C]
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
            pooled_projections=cond.pooled.to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.dtype),
            txt_ids=txt_ids,
            img_ids=self._ids(b),
            return_dict=False,
        )[0]
        vae_f = int(self.pipe.vae_scale_factor)
        return self.pipe._unpack_latents(out, h * vae_f, w * vae_f, vae_f).float()  # [B, C, h, w]

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

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._vae_encode(images).to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(z)


# ---------------------------------------------------------------------------------- PixArt


class PixArtEditModel(_VAEMixin, EditModel):
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

    def tokenizers(self) -> list[tuple[Any, int, int]]:
        return [(self.pipe.tokenizer, 0, int(self.max_sequence_length or 120))]

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

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._vae_encode(images).to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(z)


__all__ = ["EditModel", "FluxEditModel", "PixArtEditModel", "SD3EditModel", "TextEmbeds", "ToyEditModel"]

"""What the editor (and anything that generates) needs from a pipeline: :class:`EditModel`.

:class:`EditModel` hides how an architecture encodes text, lays out its latent, calls its
transformer and decodes: the EMS sampler, the baselines and the benchmark are written once
against it. Each architecture's subclass lives in that architecture's adapter file
(``latentlens/adapters/{toy,sd3,flux,pixart}.py``) and is found through :func:`latentlens.adapters.adapter_for`.

Conventions (rectified flow, as in diffusers' ``FlowMatchEulerDiscreteScheduler``):
``z_σ = (1 − σ) z₀ + σ ε`` with σ ∈ [0, 1] (0 = clean, 1 = pure noise); the transformer predicts
the velocity ``v = ε − z₀``, so the clean prediction is ``x̂₀ = z_σ − σ v``. Latents ``z`` always
have the spatial layout ``[batch, channel, height, width]`` (Flux is packed only inside its ``_call``).
See ``docs/design.md`` (EMS) for how the editor uses it.

Example::

    model = EditModel.wrap(latentlens.load_pipeline("toy"))
    cond = model.encode(["a small red circle on the left on a gray background"])
    z = model.generate(cond, seed=0)              # [1, 3, 32, 32]
    images = model.decode(z)                      # [1, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar
from collections.abc import Callable, Sequence

import numpy as np
import torch

from latentlens.errors import ConfigError

if TYPE_CHECKING:
    from latentlens.adapters.base import Adapter


@dataclass
class TextEmbeds:
    """Per-token and pooled text embeddings of a batch of prompts, aligned position by position.

    ``tokens`` ``[batch, token, channel]`` is what the transformer receives as ``encoder_hidden_states``
    (SD3: CLIP-L|CLIP-G tokens then T5 tokens; Flux: T5; toy: MiniLM); ``pooled`` ``[batch, channel]`` is
    ``pooled_projections`` (None where the model has none). ``extra`` holds per-architecture inputs
    that do not depend on the prompt's meaning (Flux ``txt_ids``). ``mask`` ``[batch, token]`` is the
    text attention mask of models that take one (PixArt's T5 padding), else None.
    """

    tokens: torch.Tensor  # [batch, token, channel]
    pooled: torch.Tensor | None  # [batch, channel]
    extra: dict[str, Any] | None = None
    mask: torch.Tensor | None = None  # [batch, token]

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    def require_pooled(self) -> torch.Tensor:
        """The pooled embedding; a :class:`ConfigError` for models that have none."""
        if self.pooled is None:
            raise ConfigError("These text embeddings have no pooled vector, but this model needs one.")
        return self.pooled

    def __getitem__(self, index: Any) -> TextEmbeds:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return replace(
            self,
            tokens=self.tokens[index],
            pooled=None if self.pooled is None else self.pooled[index],
            mask=None if self.mask is None else self.mask[index],
        )

    def expand(self, batch: int) -> TextEmbeds:
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
    def cat(items: Sequence[TextEmbeds]) -> TextEmbeds:
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
    #: True for models trained on the shapes world (the toy models): the shapes captioner and the edit
    #: benchmark apply
    shapes_world: ClassVar[bool] = False
    #: the adapter class of this architecture (its text segments are the editor's tokenizers)
    adapter_class: ClassVar[type[Adapter] | None] = None
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
        adapter: Adapter | None = None,
    ) -> None:
        self.pipe = pipe
        if adapter is None:
            if self.adapter_class is None:
                raise ConfigError(f"{type(self).__name__} names no adapter_class; pass adapter=...")
            adapter = self.adapter_class(getattr(pipe, self.adapter_class.denoiser_attribute), pipe)
        self.adapter = adapter
        self.transformer = adapter.transformer  # the denoiser (a transformer, or a UNet)
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
    def wrap(pipe: Any, **kwargs: Any) -> EditModel:
        """The :class:`EditModel` for ``pipe`` (an existing :class:`EditModel` is returned as is).

        Same as :func:`latentlens.adapters.edit_model_for`: the pipeline's adapter (found by class
        hierarchy, as for recording) names the subclass.
        """
        if isinstance(pipe, EditModel):
            return pipe
        from latentlens.adapters.registry import edit_model_for  # the registry imports every subclass

        return edit_model_for(pipe, **kwargs)

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
        """``[(tokenizer, offset, length)]``: which tokenizer produced the text tokens at ``offset``.

        The adapter's text segments, the same the recorder uses to locate words.
        """
        segments = self.adapter.text_segments(self.max_sequence_length)
        return [(s.tokenizer, s.offset, s.length) for s in segments]

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
        """One transformer call on ``z`` ``[batch, channel, height, width]`` at ``sigma`` ``[batch]``; returns the velocity."""
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
        """Velocity ``[batch, channel, height, width]`` with classifier-free guidance as configured.

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
                v = self._call(torch.cat([z, z]), torch.cat([sigma, sigma]), both)  # [2*batch, channel, height, width]
                v_u, v_c = v.chunk(2)
                return v_u + scale * (v_c - v_u)
            return self._call(z, sigma, cond)

    uses_batch_cfg = True

    def x0(self, z_t: torch.Tensor, sigma: torch.Tensor | float, cond: TextEmbeds, **kwargs: Any) -> torch.Tensor:
        """The clean-latent prediction ``x̂₀ = z_σ − σ v`` ``[batch, channel, height, width]``."""
        sigma_b = self._sigma(sigma, z_t.shape[0]).view(-1, 1, 1, 1)
        return z_t - sigma_b * self.velocity(z_t, sigma, cond, **kwargs)

    def _sigma(self, sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        return sigma.expand(batch).clone() if sigma.ndim == 0 else sigma

    # ------------------------------------------------------------------ schedules and sampling
    def sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """The pipeline scheduler's σ schedule ``[step+1]`` from ~1 down to 0 (a private copy of the scheduler)."""
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
        """Gaussian noise ``[batch, channel, height, width]``; an int seed (or one seed per row) makes it reproducible."""
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
        """Generate latents ``[batch, channel, height, width]`` from noise (``seed`` or explicit ``noise``) under ``cond``."""
        z = self.noise(cond.batch, seed) if noise is None else noise.to(self.device, self.dtype)
        return self.ode(z, cond, 1.0, 0.0)

    # ------------------------------------------------------------------ images
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[batch, 3, height, width]`` in [-1, 1] → latents ``[batch, channel, height, width]``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → images ``[batch, 3, height, width]`` in [-1, 1] (clamped)."""
        raise NotImplementedError


class VAEEditModel(EditModel):
    """An :class:`EditModel` in a VAE's latent space, with the pipeline's shift and scaling factors (SD3, Flux, PixArt)."""

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

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._vae_encode(images).to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(z)


class DDPMFlowMixin:
    """A DDPM-schedule model (ε-, v- or x₀-prediction) seen through the rectified-flow conventions.

    A variance-preserving state ``x_t = a z₀ + b ε`` (``a = √ᾱ_t``, ``b = √(1 − ᾱ_t)``) is the flow
    state ``z_σ = x_t / (a + b)`` at ``σ = b / (a + b)``. ``_call`` maps σ to the (fractional)
    timestep of the scheduler's noise schedule, lets the subclass's :meth:`_predict` run the
    denoiser on ``x_t``, forms ``x̂₀`` from the scheduler's ``prediction_type`` and returns
    ``v = (z − x̂₀) / σ``. An Euler step of that flow between two timesteps of the schedule is exactly
    a deterministic DDIM step (η = 0), so :meth:`generate` with a ``DDIMScheduler``
    (``set_alpha_to_one=True``) reproduces the pipeline's own sampler. Put it before
    :class:`EditModel` in the bases (``class M(DDPMFlowMixin, VAEEditModel)``).
    """

    pipe: Any
    device: torch.device

    def __init__(self, pipe: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(pipe, *args, **kwargs)  # type: ignore[call-arg]
        scheduler = pipe.scheduler
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ConfigError(
                f"The {type(pipe).__name__}'s scheduler {type(scheduler).__name__} has no alphas_cumprod; use a "
                "DDPM-family scheduler (DDIMScheduler, DPMSolverMultistepScheduler, ...)."
            )
        prediction = str(getattr(scheduler.config, "prediction_type", "epsilon"))
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(
                f"The scheduler's prediction_type={prediction!r} is not one of 'epsilon', 'v_prediction', 'sample'."
            )
        self.prediction_type = prediction
        self._alphas = alphas.double().cpu()  # [timestep] ᾱ_t
        a, b = self._alphas.sqrt(), (1 - self._alphas).sqrt()
        self._sigma_table = (b / (a + b)).numpy()  # [timestep], increasing in t

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        """The denoiser's raw output ``[batch, channel, height, width]`` on ``x_t`` at fractional timesteps ``t`` ``[batch]`` (float32)."""
        raise NotImplementedError

    def _timestep(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """σ ``[batch]`` → (fractional timestep, a, b) ``[batch]`` each; σ beyond the schedule is clamped to its ends."""
        t = np.interp(sigma.double().cpu().numpy(), self._sigma_table, np.arange(len(self._sigma_table)))
        low = np.floor(t).astype(np.int64)
        high = np.minimum(low + 1, len(self._alphas) - 1)
        frac = torch.from_numpy(t - low)
        alpha = self._alphas[low] * (1 - frac) + self._alphas[high] * frac  # [batch]
        return torch.from_numpy(t), alpha.sqrt(), (1 - alpha).sqrt()

    def _call(self, z: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeds) -> torch.Tensor:
        t, a, b = (x.to(self.device, torch.float32).view(-1, 1, 1, 1) for x in self._timestep(sigma))
        x_t = (a + b) * z.float()  # [batch, channel, height, width]
        out = self._predict(x_t, t.view(-1), cond).float()[:, : z.shape[1]]  # learned-σ models add [variance]
        if self.prediction_type == "epsilon":
            x0 = (x_t - b * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - b * out  # a² + b² = 1
        else:
            x0 = out
        return (z.float() - x0) / sigma.to(self.device, torch.float32).view(-1, 1, 1, 1)

    def sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """σ of the scheduler's timesteps (descending), then 0."""
        steps = self._scheduler(num_inference_steps).timesteps.long().cpu().numpy()  # type: ignore[attr-defined]
        return torch.tensor([float(self._sigma_table[t]) for t in steps] + [0.0], dtype=torch.float32)

    def generate(self, cond: TextEmbeds, seed: Any = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """From ``x_T = noise`` at the schedule's first timestep, as the pipeline starts (``z = x_T / (a + b)``)."""
        model: Any = self
        x_T = model.noise(cond.batch, seed) if noise is None else noise.to(self.device, model.dtype)
        sigma_max = float(self.sigmas()[0])
        _, a, b = self._timestep(torch.tensor([sigma_max]))
        return model.ode(x_T / float(a + b), cond, sigma_max, 0.0)


__all__ = ["DDPMFlowMixin", "EditModel", "TextEmbeds", "VAEEditModel"]

"""The EMS editor: Extract → Manipulate → Sample, with text-only / image-only ablations one switch away.

Modes (``mode=``) — the paper's ablation, one switch away:

- ``"both"`` (EMS): Manipulate gives ``E(α) = E_s + α (E_t − E_s)``; Sample runs the constrained
  delta-denoising update of :func:`~latentlens.editor.sample.dds_update` driven by ``E(α)`` against
  the reference ``E_s``, restricted to the region ``M`` (by default the difference mask of
  :func:`~latentlens.editor.sample.diff_mask`, read from the same two embeddings).
- ``"text"`` (text space only): Manipulate, then no image-space optimisation — ``z_src`` is inverted
  along the flow ODE under ``E_s`` from σ = 0 up to ``inversion_sigma`` (Euler on the scheduler's σ
  grid) and re-sampled back down to 0 under ``E(α)`` (no constraint, no mask).
- ``"image"`` (image space only): no Manipulate step — the same image-space loop (σ schedule, η, K,
  ρ) driven by the target description alone, as plain score distillation toward its prediction,
  ``z ← z + η [x̂₀(z_σ; E_t) − z]``: no ``E_s`` reference branch, no α, no mask.

Edits along a :class:`~latentlens.Direction`: a text-space direction (``text.tokens`` /
``text.pooled``) replaces ``E(α)`` by ``E_s + α d``; an image-space direction (any block site) is
added with :func:`latentlens.steer` (strength α) around the target branch's transformer calls, at
the EMS iterations (or, in text mode, the regeneration steps) listed in ``steps`` (the
direction's own ``steps`` unless given; None = all).

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")
    editor = latentlens.EMSEditor(pipe)
    result = editor.edit("red_circle.png", target="a small blue circle on the left on a gray background")
    result.image.save("blue_circle.png")
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from latentlens.editor.describe import Describer, ShapesDescriber, make_describer
from latentlens.editor.images import load_image, save_image, to_pil, to_tensor
from latentlens.editor.manipulate import (
    TEXT_SITES,
    apply_text_direction,
    changed_tokens,
    check_degree,
    encode_pair,
    interpolate,
)
from latentlens.editor.model import EditModel
from latentlens.editor.sample import EMSParams, attention_mask, dds_update, diff_mask
from latentlens.errors import ConfigError

MODES = ("both", "text", "image")
#: Defaults of the editor (tuned on the toy model, see benchmarks/RESULTS.md)
DEFAULT_DEGREE = 1.0
DEFAULT_INVERSION_SIGMA = 1.0


@dataclass
class EditResult:
    """One edit: images (PIL), latents, texts, parameters and timing.

    ``mask`` is the attention mask actually used (bool ``[height, width]`` at image resolution) or None.
    """

    image: PIL.Image.Image
    source_image: PIL.Image.Image
    latent: torch.Tensor  # [1, channel, height, width]
    source_latent: torch.Tensor  # [1, channel, height, width]
    source: str | None
    target: str | None
    mode: str
    alpha: float
    mask: np.ndarray | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def degree(self) -> float:
        """Deprecated name of :attr:`alpha` (the editing degree α)."""
        warnings.warn("EditResult.degree is deprecated; use EditResult.alpha.", DeprecationWarning, stacklevel=2)
        return self.alpha

    @property
    def changed(self) -> bool:
        """Whether the latent moved at all."""
        return not torch.equal(self.latent, self.source_latent)

    def save(self, path: str | Path) -> Path:
        """Write the edited image atomically (PNG/JPEG by suffix)."""
        return save_image(self.image, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors or images)."""
        return {
            "source": self.source,
            "target": self.target,
            "mode": self.mode,
            "alpha": self.alpha,
            "seconds": round(self.seconds, 4),
            "latent_rms_change": float((self.latent - self.source_latent).float().pow(2).mean().sqrt()),
            "mask_fraction": None if self.mask is None else float(self.mask.mean()),
            "params": self.params,
        }


class EMSEditor:
    """Edit images with EMS on any pipeline latentlens supports (toy, SD3/SD3.5, Flux, PixArt via its flow reparametrisation).

    Args:
        pipe: a pipeline (or an :class:`EditModel`).
        mode: ``"both"`` (EMS), ``"text"`` or ``"image"`` (ablations, see module docstring).
        alpha: α, the editing degree (0 = no edit, 1 = the target, > 1 extrapolates); the same α as in
            :func:`latentlens.steer`. ``degree`` is its deprecated old name.
        describer: how the source description is extracted when none is given: a :class:`Describer`,
            ``"shapes"``, or a spec for :func:`~latentlens.editor.describe.make_describer`
            (default: the shapes captioner for the toy model, otherwise a source text is required).
        inversion_sigma: how far text mode inverts before regenerating (1 = all the way to noise).
        guidance_scale, num_inference_steps, max_sequence_length, height, width: passed to
            :meth:`EditModel.wrap`.
        **params: fields of :class:`~latentlens.editor.sample.EMSParams` (``iterations``, ``step_size``,
            ``t_range``, ``rho``, ``mask``, ``mask_threshold``, ``mask_sigma``, ``mask_samples``,
            ``mask_dilate``, ``cleanup_sigma``, ``schedule``, ``seed``).

    Example::

        editor = EMSEditor(pipe, alpha=1.0, rho=1.0, iterations=20, mask="attention")
        out = editor.edit(image, target="a small blue circle on the left on a gray background")
    """

    def __init__(
        self,
        pipe: Any,
        *,
        mode: str = "both",
        alpha: float | None = None,
        describer: Any = None,
        inversion_sigma: float = DEFAULT_INVERSION_SIGMA,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        max_sequence_length: int | None = None,
        height: int | None = None,
        width: int | None = None,
        degree: float | None = None,
        **params: Any,
    ) -> None:
        model_kwargs = {
            k: v
            for k, v in dict(
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                max_sequence_length=max_sequence_length,
                height=height,
                width=width,
            ).items()
            if v is not None
        }
        self.model = EditModel.wrap(pipe, **model_kwargs)
        self.pipe = self.model.pipe
        self.mode = _check_mode(mode)
        self.alpha = resolve_alpha(alpha, degree, DEFAULT_DEGREE)
        unknown = sorted(set(params) - set(EMSParams.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"Unknown EMS parameter(s) {unknown}; valid: {sorted(EMSParams.__dataclass_fields__)}.")
        self.params = EMSParams(**params)
        self.params.check()
        if not 0.0 < float(inversion_sigma) <= 1.0:
            raise ConfigError(f"inversion_sigma must be in (0, 1], got {inversion_sigma}.")
        self.inversion_sigma = float(inversion_sigma)
        if describer is None:
            self.describer: Describer | None = ShapesDescriber() if self.model.shapes_world else None
        else:
            self.describer = make_describer(describer)

    # ------------------------------------------------------------------ public
    def edit(
        self,
        image: Any = None,
        target: str | None = None,
        *,
        source: str | None = None,
        alpha: float | None = None,
        direction: Any = None,
        mode: str | None = None,
        latent: torch.Tensor | None = None,
        steps: Sequence[int] | None = None,
        degree: float | None = None,
        **params: Any,
    ) -> EditResult:
        """Edit one image towards ``target`` (text) or along ``direction``.

        Args:
            image: a path, PIL image or uint8 array (loaded by :func:`~latentlens.editor.images.load_image`'s
                policy), or None when ``latent`` is given.
            target: the target description (non-empty), unless ``direction`` is given.
            source: the source description; extracted with the describer when None.
            alpha, mode: override the editor's defaults for this edit (``degree``: deprecated name of ``alpha``).
            direction: a :class:`~latentlens.Direction` (or a path to one saved with ``Direction.save``).
            latent: the source latent ``[1, channel, height, width]`` (e.g. the generation's own) instead of encoding ``image``.
            steps: EMS iterations / regeneration steps at which an image-space direction is applied.
            **params: per-edit overrides of :class:`EMSParams` fields.
        """
        start = time.perf_counter()
        mode = _check_mode(mode or self.mode)
        alpha = resolve_alpha(alpha, degree, self.alpha)
        run_params = replace(self.params, **params) if params else self.params
        run_params.check()
        direction = _load_direction(direction)
        if direction is None:
            if target is None or not str(target).strip():
                raise ConfigError(
                    "The target description is empty; say what the edited image should show "
                    "(e.g. 'a small blue circle on the left on a gray background'), or give a direction."
                )
        elif target is not None and str(target).strip():
            raise ConfigError("Give either a target description or a direction, not both.")

        model = self.model
        size = (model.height, model.width)
        if latent is None:
            if image is None:
                raise ConfigError("Give an image (path, PIL image or array) or a source latent to edit.")
            pil = load_image(image, size=size)
            z_src = model.encode_image(to_tensor(pil))  # [1, channel, height, width]
            source_pil = pil
        else:
            z_src = latent.to(model.device, model.dtype)
            if z_src.ndim == 3:
                z_src = z_src.unsqueeze(0)
            expected = model.latent_shape()
            if tuple(z_src.shape[1:]) != tuple(expected):
                raise ConfigError(
                    f"The source latent has shape {tuple(z_src.shape)}; this model needs [1, {expected}]."
                )
            source_pil = to_pil(model.decode(z_src))[0] if image is None else load_image(image, size=size)
        if source is None or not str(source).strip():
            if self.describer is None:
                raise ConfigError(
                    "No source description: pass source='...' (what the image shows now) or a describer "
                    "(EMSEditor(pipe, describer=...)); this model has no default describer."
                )
            source = self.describer.describe(np.asarray(source_pil))

        z, mask = self._edit_latents(
            z_src, [source], None if direction is not None else [str(target)], alpha, mode, run_params, direction, steps
        )
        if torch.equal(z, z_src):
            out_image = source_pil
        else:
            out_image = to_pil(model.decode(z))[0]
        mask_np = None
        if mask is not None:
            m = torch.nn.functional.interpolate(mask.float(), size=size, mode="nearest")[0, 0]
            mask_np = m.cpu().numpy() > 0.5
        record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run_params).items()}
        record["inversion_sigma"] = self.inversion_sigma
        if direction is not None:
            record["direction"] = {"site": direction.site, "steps": steps if steps is not None else direction.steps}
        return EditResult(
            image=out_image,
            source_image=source_pil,
            latent=z.detach().cpu(),
            source_latent=z_src.detach().cpu(),
            source=source,
            target=None if direction is not None else str(target),
            mode=mode,
            alpha=alpha,
            mask=mask_np,
            seconds=time.perf_counter() - start,
            params=record,
        )

    def edit_latents(
        self,
        z_src: torch.Tensor,
        sources: Sequence[str],
        targets: Sequence[str],
        *,
        alpha: float | None = None,
        mode: str | None = None,
        degree: float | None = None,
        **params: Any,
    ) -> torch.Tensor:
        """Batched text edits of latents ``[batch, channel, height, width]`` (one source and one target per row) → ``[batch, channel, height, width]``."""
        if len(sources) != z_src.shape[0] or len(targets) != z_src.shape[0]:
            raise ConfigError(f"Give one source and one target per latent ({z_src.shape[0]}).")
        if any(not str(t).strip() for t in targets):
            raise ConfigError("A target description is empty; every edit needs a target.")
        run_params = replace(self.params, **params) if params else self.params
        z, _ = self._edit_latents(
            z_src,
            list(sources),
            list(targets),
            resolve_alpha(alpha, degree, self.alpha),
            _check_mode(mode or self.mode),
            run_params,
            None,
            None,
        )
        return z

    # ------------------------------------------------------------------ core
    def _edit_latents(
        self,
        z_src: torch.Tensor,
        sources: list[str],
        targets: list[str] | None,
        alpha: float,
        mode: str,
        params: EMSParams,
        direction: Any,
        steps: Sequence[int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.model
        b = z_src.shape[0]
        hook = None
        if direction is None:
            if targets is None:
                raise ConfigError("A text edit needs target descriptions; pass targets or a direction.")
            e_s, e_t = encode_pair(model, sources, targets)
            e_alpha = interpolate(e_s, e_t, alpha)
            token_sets = [changed_tokens(model, s, t) for s, t in zip(sources, targets)]
            src_tokens = [ts[0] for ts in token_sets]
            tgt_tokens = [ts[1] for ts in token_sets]
        else:
            e_s = model.encode(sources)
            e_t = None
            if direction.site in TEXT_SITES:
                e_alpha = apply_text_direction(e_s, direction, alpha)
            else:
                e_alpha = e_s
                hook = self._steer_hook(direction, alpha, steps)
                steer_all = self._steer_hook(direction, alpha, [0])  # the diff mask sees the steering at every draw
            toks = list(direction.tokens or []) if direction.site == "text.tokens" else []
            src_tokens = [toks] * b
            tgt_tokens = [toks] * b

        if mode == "text":
            hi = self.inversion_sigma
            noisy = model.ode(z_src, e_s, 0.0, hi)
            return model.ode(noisy, e_alpha, hi, 0.0, hook=hook), None

        if mode == "image":
            # image space only: plain score distillation toward the target description (no E_s reference,
            # no α, no mask); along a direction, toward the source embedding with the image-space steering
            if direction is not None and direction.site in TEXT_SITES:
                raise ConfigError(
                    f"A text-space direction ({direction.site}) acts through the Manipulate step, which the image-only "
                    "ablation leaves out; use mode='both' or mode='text' for it."
                )
            drive = e_t if e_t is not None else e_s
            return dds_update(model, z_src, drive, None, params, hook=hook), None

        if (
            hook is None
            and torch.equal(e_alpha.tokens, e_s.tokens)
            and (e_s.pooled is None or torch.equal(e_alpha.pooled, e_s.pooled))
        ):
            return z_src.clone(), None  # α = 0 or target = source: nothing to edit, exactly

        mask = None
        if params.mask == "attention":
            mask = attention_mask(
                model,
                z_src,
                [e_s, e_alpha],
                [src_tokens, tgt_tokens],
                threshold=params.mask_threshold,
                sigma=params.mask_sigma,
                seed=params.seed,
            )
        elif params.mask == "diff":
            mask = diff_mask(
                model,
                z_src,
                e_alpha,
                e_s,
                threshold=params.mask_threshold,
                sigma=params.mask_sigma,
                samples=params.mask_samples,
                dilate=params.mask_dilate,
                seed=params.seed,
                hook=None if hook is None else (lambda: steer_all(0)),
            )
        z = dds_update(model, z_src, e_alpha, e_s, params, mask=mask, hook=hook)
        return z, mask

    def _steer_hook(self, direction: Any, alpha: float, steps: Sequence[int] | None) -> Any:
        from latentlens.interventions import steer

        chosen = direction.steps if steps is None else list(steps)
        selected = None if chosen is None else set(int(s) for s in chosen)
        vector = direction.vector
        tokens = direction.tokens
        pipe = self.pipe
        steer(pipe, direction.site, vector, alpha=alpha, tokens=tokens)  # validate the site now (clear errors)

        def hook(k: int) -> Any:
            if selected is not None and k not in selected:
                return None
            return steer(pipe, direction.site, vector, alpha=alpha, tokens=tokens)

        return hook


def resolve_alpha(alpha: float | None, degree: float | None, default: float) -> float:
    """The editing degree α from ``alpha`` or its deprecated name ``degree`` (``default`` when neither)."""
    if degree is not None:
        warnings.warn(
            "degree= is deprecated; pass alpha= (the same editing degree α as in latentlens.steer).",
            DeprecationWarning,
            stacklevel=3,
        )
        if alpha is not None and float(alpha) != float(degree):
            raise ConfigError(f"alpha={alpha} and its deprecated name degree={degree} disagree; pass only alpha.")
        alpha = degree
    return check_degree(default if alpha is None else alpha)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not one of {', '.join(MODES)} (both = EMS; text/image = ablations).")
    return mode


def _load_direction(direction: Any) -> Any:
    if direction is None or hasattr(direction, "vector"):
        return direction
    if isinstance(direction, (str, Path)):
        from latentlens.direction import Direction

        return Direction.load(direction)
    raise ConfigError(f"direction must be a Direction or the path of a saved one, got {type(direction).__name__}.")


def edit(pipe: Any, image: Any = None, target: str | None = None, **kwargs: Any) -> EditResult:
    """One-call EMS edit: ``edit(pipe, "in.png", "a small blue circle ...", alpha=1.0).image``.

    Keyword arguments go to :class:`EMSEditor` (``mode``, ``alpha``, ``describer``, EMS parameters) or to
    :meth:`EMSEditor.edit` (``source``, ``direction``, ``latent``, ``steps``).
    """
    per_edit = {k: kwargs.pop(k) for k in ("source", "direction", "latent", "steps") if k in kwargs}
    return EMSEditor(pipe, **kwargs).edit(image, target, **per_edit)


__all__ = ["DEFAULT_DEGREE", "EMSEditor", "EditResult", "MODES", "edit"]

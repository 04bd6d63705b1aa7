"""Directions that edit: build the token-wise text-stream edit directions and measure what every direction does.

``analyze`` saves class-mean directions at the best probe cells; a probe cell says where an
attribute can be *read*, not where steering it changes the image (on the toy MM-DiT the image
stream never edits colour: joint attention re-reads it from the text tokens). This module adds
one edit direction per (attribute, value) — the difference of class means per text-token position
at the first text site (block 0's text input when recorded), other attributes regressed out,
over samples whose prompt is the canonical caption (one token layout) — and validates any
direction by steering real prompts of the run with it:

* shapes world (labels the oracle reads): ``success`` = fraction of samples whose attribute was
  another value and that the oracle now reads as the direction's value, ``kept`` = fraction whose
  other attributes are still the prompt's; ``score = success × min(kept)``.
* elsewhere: the patching effect measure toward the value's mean image,
  ``(d(x, x̄_to) − d(x_steered, x̄_to)) / d(x, x̄_to)``, averaged over samples (``score``).

Example::

    from latentlens.analysis.validate import validate_direction
    report = validate_direction(pipe, d, prompts, seeds, labels, attribute="color", to="blue", n=16)
    report["score"], report["success"], report["kept"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentlens.errors import ConfigError

EDIT_SITES = ("blocks.0.resid_in.txt", "text.tokens", "blocks.0.resid_out.txt")
EDIT_ALPHA = 1.0  # token-wise class means keep their natural scale: alpha 1 moves a sample onto the class mean
MEAN_ALPHA = 4.0  # token-mean class means need a push (benchmarks/bench_steering.py)
CFG = "cond"  # the directions come from captions: steer only the conditional half of a CFG batch


def is_shapes_world(labels: Mapping[str, Sequence[Any]]) -> bool:
    """Whether ``labels`` hold every shapes-world attribute with values the oracle knows."""
    from latentlens import shapes

    return all(a in labels and set(map(str, labels[a])) <= set(shapes.VALUES[a]) for a in shapes.ATTRIBUTES)


def canonical_mask(prompts: Sequence[str], labels: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """``[sample]`` bool: the sample's prompt is the canonical caption of its labels (one token layout)."""
    from latentlens import shapes

    out = []
    for i, prompt in enumerate(prompts):
        combo = shapes.Attributes(**{a: str(labels[a][i]) for a in shapes.ATTRIBUTES})
        out.append(prompt == shapes.canonical_caption(combo))
    return np.asarray(out, dtype=bool)


def edit_directions(
    X: np.ndarray,  # [sample, token, channel] at ``site``, one token layout
    labels: Mapping[str, Sequence[Any]],
    site: str,
    **provenance: Any,
) -> dict[str, Any]:
    """``{"edit/<attribute>/<value>": Direction}``: token-wise class means, value vs. the rest, other attributes
    regressed out when there are enough samples (else plain class means)."""
    from latentlens.analysis.directions import class_mean_direction

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ConfigError(f"edit_directions needs token-wise activations [n, tokens, channel]; got shape {X.shape}.")
    out: dict[str, Any] = {}
    for attribute, raw in labels.items():
        values = np.asarray([str(v) for v in raw])
        others = {a: np.asarray([str(v) for v in labels[a]]) for a in labels if a != attribute}
        levels = 1 + sum(len(set(column)) - 1 for column in [values, *others.values()])
        adjust = others if len(values) > 2 * levels else None
        for value in sorted(set(values)):
            if (values == value).sum() < 1 or (values != value).sum() < 1:
                continue
            out[f"edit/{attribute}/{value}"] = class_mean_direction(
                X,
                values,
                to=value,
                site=site,
                steps=None,
                attribute=attribute,
                adjust_for=adjust,
                recipe="token-wise text-stream class means (canonical captions)",
                **provenance,
            )
    return out


def validate_direction(
    pipe: Any,
    direction: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    labels: Mapping[str, Sequence[Any]],
    *,
    attribute: str,
    to: str,
    n: int = 16,
    alpha: float | None = None,
    cfg: str = CFG,
    num_inference_steps: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Steer ``n`` of the run's samples whose ``attribute`` is not ``to`` along ``direction`` and measure the edit.

    Returns ``{"measure": "oracle" | "pixel_effect", "score", "success", "kept", "n", "alpha", "cfg", ...}``
    (see the module docstring). ``alpha`` None tries 1 and 2 for token-wise directions (4 otherwise) and
    reports the best. A token-wise direction is checked on samples with its token layout (canonical captions
    in the shapes world): it adds one row per token position, so it only fits prompts laid out like that.
    """
    from latentlens.analysis.patching import generate_images, patch_effect
    from latentlens.interventions import steer

    values = np.asarray([str(v) for v in labels[attribute]])
    token_wise = direction.token_rows is not None
    if alpha is None:
        alphas = [EDIT_ALPHA, 2 * EDIT_ALPHA] if token_wise else [MEAN_ALPHA]
    else:
        alphas = [float(alpha)]
    rng = np.random.default_rng(seed)
    eligible = values != str(to)
    layout = ""
    if token_wise and is_shapes_world(labels):
        eligible &= canonical_mask(prompts, labels)
        layout = " and whose prompt is the canonical caption (the direction's token layout)"
    pool = np.flatnonzero(eligible)
    if len(pool) == 0:
        raise ConfigError(f"No sample has {attribute} other than {to!r}{layout}; there is nothing to edit toward it.")
    chosen = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    kwargs = {} if num_inference_steps is None else {"num_inference_steps": int(num_inference_steps)}

    def run(idx: np.ndarray, steered: bool, alpha: float = 0.0) -> np.ndarray:
        images = []
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            p, s = [prompts[i] for i in part], [int(seeds[i]) for i in part]
            if steered:
                with steer(pipe, direction, alpha=alpha, cfg=cfg):
                    images.append(generate_images(pipe, p, s, kwargs))
            else:
                images.append(generate_images(pipe, p, s, kwargs))
        return np.concatenate(images)

    common: dict[str, Any] = {
        "n": len(chosen),
        "cfg": cfg,
        "attribute": attribute,
        "to": str(to),
        "num_inference_steps": num_inference_steps,
        "alphas_tried": alphas,
        "samples": f"run samples whose {attribute} is not {to}{layout}",
    }
    # outside the shapes world: (the unsteered images, the mean image of samples that have ``to``)
    pixel: tuple[np.ndarray, np.ndarray] | None = None
    if not is_shapes_world(labels):
        targets = np.flatnonzero(values == str(to))
        reference = run(
            np.sort(rng.choice(targets, size=min(n, len(targets)), replace=False)),
            False,
        ).mean(axis=0)
        pixel = (run(chosen, False), reference)
    reports: list[dict[str, Any]] = []
    for a in alphas:
        steered = run(chosen, True, a)
        report = {**common, "alpha": float(a)}
        if pixel is None:
            from latentlens import shapes

            read = shapes.read_batch((np.clip(steered, 0, 1) * 255).round().astype(np.uint8))
            success = float(np.mean([getattr(r, attribute) == str(to) for r in read]))
            kept = {
                k: float(np.mean([getattr(r, k) == str(labels[k][i]) for r, i in zip(read, chosen)]))
                for k in shapes.ATTRIBUTES
                if k != attribute
            }
            report.update(
                measure="oracle",
                success=success,
                kept=kept,
                score=success * min(kept.values()),
            )
        else:
            base, reference = pixel
            effect = patch_effect(base, np.broadcast_to(reference, base.shape), steered)
            report.update(
                measure="pixel_effect",
                success=None,
                kept=None,
                score=float(np.mean(effect)),
                effect=float(np.mean(effect)),
            )
        reports.append(report)
    return max(reports, key=lambda r: r["score"])  # the first of the best (alphas is never empty)


def rank_key(meta: dict[str, Any]) -> tuple[int, float]:
    """Sort key of a saved direction's JSON metadata: validated first, best ``score`` first."""
    validation = (meta.get("provenance") or {}).get("validation") or {}
    score = validation.get("score")
    return (0, -float(score)) if isinstance(score, (int, float)) else (1, 0.0)


__all__ = [
    "canonical_mask",
    "edit_directions",
    "is_shapes_world",
    "rank_key",
    "validate_direction",
]

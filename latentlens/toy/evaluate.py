"""Measure the toy model with the shapes-world oracle: per-attribute accuracy and one-attribute edits.

Example::

    from latentlens.toy.evaluate import attribute_accuracy, generate_images
    from latentlens.shapes import held_out_combinations
    pipe = latentlens.load_pipeline("toy")
    report = attribute_accuracy(pipe, held_out_combinations(), seed=0)
    report["per_attribute"]["shape"]   # fraction of images whose shape the oracle reads as asked
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 32,
) -> np.ndarray:
    """Generate one image per (prompt, seed), one generator per image; returns uint8 ``[batch, height, width, 3]``."""
    chunks: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        images = pipe(
            batch_prompts,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        ).images  # [batch, height, width, 3] floats in [0, 1]
        chunks.append(np.round(np.asarray(images) * 255).clip(0, 255).astype(np.uint8))
    if not chunks:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def score_readings(asked: Sequence[Any], read: Sequence[Any]) -> dict[str, Any]:
    """Per-attribute and all-five accuracy of oracle readings ``read`` against the asked attributes."""
    from latentlens.shapes import ATTRIBUTES

    n = len(asked)
    per_attribute = {
        attribute: sum(getattr(a, attribute) == getattr(r, attribute) for a, r in zip(asked, read)) / max(n, 1)
        for attribute in ATTRIBUTES
    }
    all_five = sum(a == r for a, r in zip(asked, read)) / max(n, 1)
    return {"n": n, "per_attribute": per_attribute, "all_five": all_five}


def attribute_accuracy(
    pipe: Any,
    combinations: Sequence[Any],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Generate the canonical caption of each combination (seed ``seed + i``) and score it with the oracle."""
    from latentlens.shapes import canonical_caption, read_batch

    prompts = [canonical_caption(a) for a in combinations]
    seeds = [seed + i for i in range(len(prompts))]
    images = generate_images(pipe, prompts, seeds, num_inference_steps, guidance_scale, batch_size)
    read = read_batch(images) if len(images) else []
    report = score_readings(combinations, read)
    report["errors"] = [{"asked": a.as_dict(), "read": r.as_dict()} for a, r in zip(combinations, read) if a != r][:20]
    return report


def one_attribute_edits(
    pipe: Any,
    combinations: Sequence[Any],
    pairs_per_attribute: int,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Same seed, prompts differing in one attribute: how often only that attribute changes.

    For each attribute, ``pairs_per_attribute`` base combinations (drawn from ``combinations``) get
    a second prompt with that attribute set to another random value; both images use the same seed.
    ``only_that_changed``: the oracle reads the new value on the edited image and the other four
    attributes are read the same on both. ``target_reached``: the new value is read, whatever else.
    """
    from latentlens.shapes import ATTRIBUTES, VALUES, canonical_caption, read_batch

    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    for index, attribute in enumerate(ATTRIBUTES):
        bases = [combinations[int(i)] for i in rng.integers(len(combinations), size=pairs_per_attribute)]
        edits = []
        for base in bases:
            options = [v for v in VALUES[attribute] if v != getattr(base, attribute)]
            edits.append(base.replace(**{attribute: options[int(rng.integers(len(options)))]}))
        seeds = [seed + 10_000 * (index + 1) + i for i in range(len(bases))]
        prompts = [canonical_caption(a) for a in bases] + [canonical_caption(a) for a in edits]
        images = generate_images(pipe, prompts, seeds + seeds, num_inference_steps, guidance_scale, batch_size)
        read = read_batch(images)
        read_base, read_edit = read[: len(bases)], read[len(bases) :]
        others = [a for a in ATTRIBUTES if a != attribute]
        only = reached = 0
        for edit, rb, re_ in zip(edits, read_base, read_edit):
            hit = getattr(re_, attribute) == getattr(edit, attribute)
            reached += hit
            only += hit and all(getattr(rb, o) == getattr(re_, o) for o in others)
        n = max(len(bases), 1)
        results[attribute] = {"n": len(bases), "only_that_changed": only / n, "target_reached": reached / n}
    return results


def two_object_accuracy(
    pipe: Any,
    pairs: Sequence[Any],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 32,
    template: int | None = None,
) -> dict[str, Any]:
    """Generate the canonical caption of each two-object combination (seed ``seed + i``) and score both objects.

    ``template`` picks another two-object caption template (``latentlens.shapes.TWO_OBJECT_TEMPLATES``;
    it must describe every pair's layout), e.g. 1 to name the right/bottom object first. The oracle detects the layout from the image and reads each object where it is, so an object
    drawn in the wrong place or with the other object's colour counts as wrong (binding errors are
    reported separately). Example::

        from latentlens.shapes import two_object_held_out_combinations
        report = two_object_accuracy(pipe, two_object_held_out_combinations()[:64])
        report["both_right"], report["binding_errors"]["color"]
    """
    from latentlens.shapes import (
        make_two_object_caption,
        read_two_object_batch,
        score_two_object_readings,
    )

    prompts = [make_two_object_caption(p, template=template).text for p in pairs]
    seeds = [seed + i for i in range(len(prompts))]
    images = generate_images(pipe, prompts, seeds, num_inference_steps, guidance_scale, batch_size)
    readings = read_two_object_batch(images) if len(images) else []
    report = score_two_object_readings(pairs, readings)
    report["errors"] = [
        {"asked": prompt, "read": [o.as_dict() for o in r.objects]}
        for prompt, p, r in zip(prompts, pairs, readings)
        if p.objects != r.objects
    ][:20]
    return report


def two_object_edits(
    pipe: Any,
    pairs: Sequence[Any],
    pairs_per_attribute: int,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Same seed, prompt changed in one attribute of one object: does only that attribute of that object change?

    For each object attribute (shape, colour, size), ``pairs_per_attribute`` base scenes drawn from
    ``pairs`` get that attribute of a random object (first or second) set to another value (a new
    colour also differs from the other object's). Both images use the same seed and are read by
    the oracle. ``only_that_changed``: the edited object reads the new value and every other
    attribute of both objects reads as on the base image; ``target_reached``: the new value is read;
    ``other_object_kept``: the other object reads the same on both images.
    """
    from latentlens.shapes import (
        OBJECT_ATTRIBUTES,
        VALUES,
        canonical_two_object_caption,
        read_two_object_batch,
    )

    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    for index, attribute in enumerate(OBJECT_ATTRIBUTES):
        bases = [pairs[int(i)] for i in rng.integers(len(pairs), size=pairs_per_attribute)]
        which = [int(k) for k in rng.integers(2, size=len(bases))]
        edits = []
        for base, k in zip(bases, which):
            other = base.objects[1 - k]
            options = [
                v
                for v in VALUES[attribute]
                if v != getattr(base.objects[k], attribute) and not (attribute == "color" and v == other.color)
            ]
            edits.append(base.replace_object(k, **{attribute: options[int(rng.integers(len(options)))]}))
        seeds = [seed + 20_000 * (index + 1) + i for i in range(len(bases))]
        prompts = [canonical_two_object_caption(p) for p in bases] + [canonical_two_object_caption(p) for p in edits]
        images = generate_images(pipe, prompts, seeds + seeds, num_inference_steps, guidance_scale, batch_size)
        read = read_two_object_batch(images)
        read_base, read_edit = read[: len(bases)], read[len(bases) :]
        only = reached = kept = 0
        for edit, k, rb, re_ in zip(edits, which, read_base, read_edit):
            hit = getattr(re_.objects[k], attribute) == getattr(edit.objects[k], attribute)
            same_other = rb.objects[1 - k] == re_.objects[1 - k]
            rest = all(
                getattr(rb.objects[k], a) == getattr(re_.objects[k], a)
                for a in ("shape", "color", "size", "position", "background")
                if a != attribute
            )
            reached += hit
            kept += same_other
            only += hit and same_other and rest
        n = max(len(bases), 1)
        results[attribute] = {
            "n": len(bases),
            "only_that_changed": only / n,
            "target_reached": reached / n,
            "other_object_kept": kept / n,
        }
    return results

"""Check a direction by steering with it: shapes-world prompts, generate, read back with the oracle.

Example::

    from latentlens.analysis.steering import steering_check
    report = steering_check(pipe, direction, attribute="color", source="red", target="blue", n=40)
    report["success"], report["kept"]     # 0.9, {'shape': 1.0, 'size': 0.97, 'position': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from latentlens.errors import ConfigError


def _generate(pipe: Any, prompts: list[str], seeds: Sequence[int], num_inference_steps: int | None) -> np.ndarray:
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = {"output_type": "np", "generator": generators}
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    with torch.no_grad():
        images = np.asarray(pipe(prompts, **kwargs).images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return images


def steering_check(
    pipe: Any,
    direction: Any,
    *,
    attribute: str,
    source: str,
    target: str,
    n: int = 40,
    alpha: float = 1.0,
    keep: Sequence[str] = ("shape", "size", "position"),
    seed: int = 0,
    batch_size: int = 20,
    num_inference_steps: int | None = None,
    object_tokens: bool = False,
    cfg: str = "both",
) -> dict[str, Any]:
    """Generate ``n`` shapes-world images whose ``attribute`` is ``source`` while steering along ``direction``.

    Prompts are canonical captions of training combinations with ``attribute == source`` (seeded
    choice). Returns the fraction the oracle reads as ``target`` (``success``), the fraction whose
    ``keep`` attributes are still as asked (``kept``, per attribute), the same two numbers without
    steering (``baseline``), and the images (``images`` uint8 ``[sample, height, width, 3]``). ``cfg`` picks the
    rows of the CFG-doubled batch that are steered (``"cond"``, ``"uncond"`` or ``"both"``, as in ``steer``).
    """
    from latentlens import shapes
    from latentlens.interventions import steer

    if attribute not in shapes.ATTRIBUTES:
        raise ConfigError(f"Unknown attribute {attribute!r}; use one of {', '.join(shapes.ATTRIBUTES)}.")
    for value in (source, target):
        if value not in shapes.VALUES[attribute]:
            raise ConfigError(f"Unknown {attribute} {value!r}; use one of {', '.join(shapes.VALUES[attribute])}.")
    pool = [c for c in shapes.training_combinations() if getattr(c, attribute) == source]
    rng = np.random.default_rng(seed)
    combos = [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=len(pool) < n)]
    prompts = [shapes.canonical_caption(c) for c in combos]
    seeds = [seed * 100_000 + i for i in range(n)]

    def token_set(combo: Any) -> tuple[int, ...] | None:
        if not object_tokens:
            return None
        patch = int(getattr(pipe, "patch_size", 4))
        size = int(getattr(pipe, "default_sample_size", 32))
        side = size // patch
        mask = shapes.render(combo, canvas=size).mask.reshape(side, patch, side, patch).mean(axis=(1, 3)) > 0.25
        return tuple(int(i) for i in np.flatnonzero(mask.reshape(-1)))  # row-major patch order

    def run(steered: bool) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * n
        groups: dict[Any, list[int]] = {}
        for i, combo in enumerate(combos):
            groups.setdefault(token_set(combo) if steered else None, []).append(i)
        for tokens, members in groups.items():
            for start in range(0, len(members), batch_size):
                idx = members[start : start + batch_size]
                p, s = [prompts[i] for i in idx], [seeds[i] for i in idx]
                if steered:
                    with steer(pipe, direction, alpha=alpha, tokens=list(tokens) if tokens else None, cfg=cfg):
                        images = _generate(pipe, p, s, num_inference_steps)
                else:
                    images = _generate(pipe, p, s, num_inference_steps)
                for i, image in zip(idx, images):
                    out[i] = image
        return np.stack([image for image in out if image is not None])  # every row was filled above

    def score(images: np.ndarray) -> tuple[float, dict[str, float]]:
        read = shapes.read_batch(images)
        success = float(np.mean([getattr(r, attribute) == target for r in read]))
        kept = {a: float(np.mean([getattr(r, a) == getattr(c, a) for r, c in zip(read, combos)])) for a in keep}
        return success, kept

    base_images = run(False)
    images = run(True)
    base_success, base_kept = score(base_images)
    base_source = float(np.mean([getattr(r, attribute) == source for r in shapes.read_batch(base_images)]))
    success, kept = score(images)
    return {
        "attribute": attribute,
        "source": source,
        "target": target,
        "n": n,
        "alpha": alpha,
        "site": getattr(direction, "site", None),
        "steps": getattr(direction, "steps", None),
        "success": success,
        "kept": kept,
        "baseline": {"source_read_as_source": base_source, "success": base_success, "kept": base_kept},
        "images": images,
        "baseline_images": base_images,
        "prompts": prompts,
    }

"""Disentanglement measures: the cosine matrix of directions and the SDE metric (DESIGN.md §7).

Example::

    from latentlens.analysis.metrics import cosine_matrix, sde
    names, C = cosine_matrix({"color": d_color, "size": d_size})   # C [2, 2], 1 on the diagonal
    sde(recon_x, recon_flip, mask)          # {'effectiveness': ..., 'leakage': ..., 'sde': ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from latentlens.errors import ConfigError


def _vector(value: Any) -> np.ndarray:
    if hasattr(value, "vector"):
        value = value.vector
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def cosine_matrix(directions: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarity of directions (vectors, tensors or :class:`~latentlens.Direction`).

    Returns ``(names, matrix [k, k])``. All directions must have the same width; a zero vector
    gives NaN in its row and column.
    """
    if not directions:
        raise ConfigError("cosine_matrix needs at least one direction.")
    names = list(directions)
    vectors = [_vector(directions[n]) for n in names]
    widths = {len(v) for v in vectors}
    if len(widths) != 1:
        detail = ", ".join(f"{n}: {len(v)}" for n, v in zip(names, vectors))
        raise ConfigError(f"cosine_matrix needs directions of one width; got {detail}. Compare directions of one site.")
    V = np.stack(vectors)  # [k, d]
    norms = np.linalg.norm(V, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = V / norms[:, None]
    unit[norms == 0] = np.nan
    matrix = np.clip(unit @ unit.T, -1.0, 1.0)
    return names, matrix


def sde(
    reconstruction: Any,  # [..., H, W, C] or [..., C, H, W]; x reconstructed under p_x
    flipped: Any,  # same shape; x reconstructed under p_flip from the same noise
    mask: Any,  # bool [..., H, W]: the attribute's region M
    *,
    channels_last: bool | None = None,
) -> dict[str, float]:
    """SDE of DESIGN.md §7 from two reconstructions and the region mask.

    ``D`` = per-pixel squared difference (summed over colour channels); effectiveness = mean of
    ``D`` inside ``M``, leakage = mean outside; ``SDE = eff / (eff + leak)`` (NaN when both are 0:
    an edit that changed nothing has no SDE). Batches are pooled: means run over every pixel of
    every image.
    """
    a = np.asarray(reconstruction.detach().cpu() if hasattr(reconstruction, "detach") else reconstruction, dtype=np.float64)
    b = np.asarray(flipped.detach().cpu() if hasattr(flipped, "detach") else flipped, dtype=np.float64)
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask).astype(bool)
    if a.shape != b.shape:
        raise ConfigError(f"The two reconstructions differ in shape: {a.shape} vs {b.shape}.")
    if channels_last is None:
        channels_last = a.shape[-1] in (1, 3, 4) and a.shape[-3] not in (1, 3, 4)
    D = ((a - b) ** 2).sum(axis=-1 if channels_last else -3)  # [..., H, W]
    if D.shape[-2:] != m.shape[-2:]:
        raise ConfigError(f"The mask has spatial shape {m.shape[-2:]} but the images have {D.shape[-2:]}.")
    m = np.broadcast_to(m, D.shape)
    inside, outside = int(m.sum()), int((~m).sum())
    if inside == 0 or outside == 0:
        raise ConfigError("The mask must mark some pixels inside and some outside the attribute's region.")
    eff = float(D[m].mean())
    leak = float(D[~m].mean())
    total = eff + leak
    return {"effectiveness": eff, "leakage": leak, "sde": eff / total if total > 0 else math.nan,
            "pixels_inside": inside, "pixels_outside": outside}


def sde_shapes(
    pipe: Any,
    pairs: Sequence[tuple[Any, str]],
    *,
    seed: int = 0,
    num_inference_steps: int | None = None,
    generate: Callable[[Any, list[str], int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the SDE metric with a pipeline on shapes-world attribute flips.

    Args:
        pipe: a pipeline generating shapes-world images (the toy model).
        pairs: ``[(Attributes, attribute_to_flip), ...]``; the flipped value is the next value of that
            attribute in :data:`latentlens.shapes.VALUES` (cyclic), the caption is the canonical one.
        generate: ``f(pipe, prompts, seed) -> uint8 [n, H, W, 3]``; default: ``pipe(prompts,
            generator=seed...)`` with ``output_type="np"``, the same noise for every image.

    Returns per attribute: effectiveness, leakage, SDE, and the oracle's verdict (fraction of flipped
    images read as the target value while every other attribute stays as asked). The region M is
    the union of the rendered object masks of x and of the flipped attributes (jitter-free render).
    """
    from latentlens import shapes

    gen = generate or _default_generate(num_inference_steps)
    by_attribute: dict[str, dict[str, list]] = {}
    for attributes, attribute in pairs:
        values = shapes.VALUES[attribute]
        target = attributes.replace(**{attribute: values[(values.index(getattr(attributes, attribute)) + 1) % len(values)]})
        images = gen(pipe, [shapes.canonical_caption(attributes), shapes.canonical_caption(target)], seed)
        size = images.shape[1]
        mask = shapes.render(attributes, canvas=size).mask | shapes.render(target, canvas=size).mask
        entry = by_attribute.setdefault(attribute, {"x": [], "flip": [], "mask": [], "ok": []})
        entry["x"].append(images[0].astype(np.float64) / 255.0)
        entry["flip"].append(images[1].astype(np.float64) / 255.0)
        entry["mask"].append(mask)
        read = shapes.read_attributes(images[1])
        entry["ok"].append(read == target)
    out: dict[str, Any] = {}
    for attribute, entry in by_attribute.items():
        result = sde(np.stack(entry["x"]), np.stack(entry["flip"]), np.stack(entry["mask"]), channels_last=True)
        result["oracle_success"] = float(np.mean(entry["ok"]))
        result["n"] = len(entry["ok"])
        out[attribute] = result
    return out


def _default_generate(num_inference_steps: int | None) -> Callable[[Any, list[str], int], np.ndarray]:
    def generate(pipe: Any, prompts: list[str], seed: int) -> np.ndarray:
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in prompts]
        kwargs: dict[str, Any] = {"output_type": "np", "generator": generators}
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        images = np.asarray(pipe(prompts, **kwargs).images)
        if images.dtype != np.uint8:
            images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return images

    return generate

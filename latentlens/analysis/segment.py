"""Segmentation from attention maps: one binary mask per concept word, from prompt-token or concept maps.

Methods (``method=``):

- ``"img2txt"``: the image→text attention of the concept's tokens *in the prompt* (each concept must
  occur in the prompt); per block and step, a token's weights are renormalised over the concepts.
- ``"concept"``: ConceptAttention's output-space maps ``blocks.{i}.attn.img2concept_out``
  (image attention outputs · concept outputs), softmax over the concepts per block and step.
- ``"concept_attn"``: the concept attention weights ``blocks.{i}.attn.img2concept``.

Pooling (the default, :data:`DEFAULT_POOLING`): the mean over the later half of the joint blocks
(``blocks[len // 2:]``; on the toy model blocks 3–5) and every step of the normalised maps;
``blocks=`` / ``steps=`` choose others. Masks (``rule=``, default ``"otsu"``):
a concept's mask is where its pooled map exceeds the Otsu threshold of that map at the token grid
(at image resolution: the bilinearly upsampled map against the same threshold); ``"argmax"``: a
token (pixel) belongs to the concept whose pooled map is largest there.

Example::

    result = segment(pipe, "a small red circle on the left on a gray background", ["circle", "background"], seed=0)
    result.masks["circle"].shape   # (height, width), bool
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal
from collections.abc import Sequence

import numpy as np
import torch

from latentlens.adapters import adapter_for
from latentlens.concepts import check_concepts
from latentlens.errors import ConfigError
from latentlens.names import concept_names
from latentlens.recorder import record
from latentlens.text import word_token_indices

SegmentMethod = Literal["img2txt", "concept", "concept_attn"]
MaskRule = Literal["otsu", "argmax"]
DEFAULT_RULE: MaskRule = "otsu"
METHODS: tuple[str, ...] = ("img2txt", "concept", "concept_attn")
#: the stated default pooling: mean over the later half of the joint blocks and every denoising step
DEFAULT_POOLING = {"blocks": "later half", "steps": "all"}


@dataclass
class Segmentation:
    """Masks and the maps they come from.

    ``maps``: ``[step, block, concept, height, width]`` normalised over the concepts; ``pooled``:
    ``[concept, height, width]``; ``token_masks``/``masks``: per concept, bool at the token grid / at the
    image's resolution; ``image``: uint8 ``[height, width, 3]``.
    """

    concepts: list[str]
    method: str
    blocks: list[int]
    steps: list[int]
    maps: torch.Tensor
    pooled: torch.Tensor
    token_masks: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    image: np.ndarray


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(METHODS)}.")
    return method


def grid_of(n_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The token grid ``(rows, cols)`` of ``n_tokens`` image tokens for a ``height × width`` image."""
    rows = round(math.sqrt(n_tokens * height / width))
    if rows <= 0 or n_tokens % rows:
        raise ConfigError(f"{n_tokens} image tokens do not form a grid for a {height}x{width} image.")
    return rows, n_tokens // rows


def normalise(maps: torch.Tensor, method: str) -> torch.Tensor:
    """Per token, weights over the concepts (last axis) that sum to 1."""
    maps = maps.double()
    if method == "concept":
        return torch.softmax(maps, dim=-1)
    total = maps.sum(dim=-1, keepdim=True)
    return maps / total.clamp_min(1e-30)


def otsu_threshold(values: torch.Tensor) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu), exact (no histogram)."""
    v = values.flatten().double().sort().values
    n = v.numel()
    if n < 2 or float(v[-1] - v[0]) == 0.0:
        return float(v[0]) if n else 0.0
    csum = v.cumsum(0)
    k = torch.arange(1, n, dtype=torch.float64)  # split after k values
    m0 = csum[:-1] / k
    m1 = (csum[-1] - csum[:-1]) / (n - k)
    score = k * (n - k) * (m0 - m1) ** 2
    score[v[1:] == v[:-1]] = -1.0  # only split between distinct values
    i = int(score.argmax())
    return float((v[i] + v[i + 1]) / 2)


def masks_from_pooled(
    pooled: torch.Tensor, size: tuple[int, int] | None = None, rule: MaskRule = DEFAULT_RULE
) -> np.ndarray:
    """bool ``[concept, height, width]`` (or, with ``size=(H, W)``, after bilinear upsampling, ``[concept, height, width]``).

    ``rule``: ``"otsu"`` (default) — each concept's mask is where its map exceeds the Otsu threshold of
    that map at the token grid; ``"argmax"`` — each place goes to the concept whose map is largest
    (a single concept: above its mean).
    """
    grid = pooled.double()
    x = grid
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    if rule == "otsu":
        return np.stack([(x[c] > otsu_threshold(grid[c])).numpy() for c in range(x.shape[0])])
    if rule != "argmax":
        raise ConfigError(f"rule={rule!r} is not one of 'otsu', 'argmax'.")
    if x.shape[0] == 1:
        return (x > x.mean()).numpy()
    best = x.argmax(dim=0)
    return np.stack([(best == c).numpy() for c in range(x.shape[0])])


def _selection(spec: Any, available: list[int], what: str, default: list[int] | None = None) -> list[int]:
    if spec is None:
        return list(available if default is None else default)
    if spec == "all":
        return list(available)
    chosen = [int(s) for s in spec]
    bad = [s for s in chosen if s not in available]
    if bad or not chosen:
        raise ConfigError(f"{what}={list(spec)!r} selects {bad or 'nothing'}; available: {available}.")
    return chosen


def record_maps(
    pipe: Any,
    prompts: Sequence[str],
    concepts: Sequence[Sequence[str]] | Sequence[str],
    method: str = "concept",
    seeds: Sequence[int] | None = None,
    num_inference_steps: int | None = None,
    **pipe_kwargs: Any,
) -> tuple[np.ndarray, torch.Tensor, list[int]]:
    """Generate ``prompts`` and record the maps of ``method``.

    Returns images uint8 ``[batch, height, width, 3]``, maps ``[step, block, batch, image_token, concept]``
    normalised over the concepts, and the block numbers. ``concepts``: one list for every prompt (the
    concept method needs the same concepts for all prompts in one call).
    """
    check_method(method)
    prompts = list(prompts)
    per_prompt = [list(c) for c in concepts] if concepts and not isinstance(concepts[0], str) else None
    shared = None if per_prompt is not None else check_concepts(list(concepts))  # type: ignore[arg-type]
    adapter = adapter_for(pipe)
    kwargs = dict(pipe_kwargs, output_type="np")
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    if seeds is not None:
        kwargs["generator"] = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if method == "img2txt":
        lists: list[list[str]] = per_prompt if per_prompt is not None else [list(shared or [])] * len(prompts)
        # positions of each concept's tokens in each prompt (checked before any model work)
        positions = [[word_token_indices(adapter, c, p) for c in cs] for p, cs in zip(prompts, lists)]
        with record(pipe, attention="blocks.*.attn.img2txt", cfg="cond") as rec:
            images = pipe(prompts, **kwargs).images
        names = list(rec.names)
        blocks = [int(n.split(".")[1]) for n in names]
        per_block = []
        for n in names:
            m = rec[n].double()  # [step, batch, image_token, text_token]
            cols = [
                torch.stack([m[:, b][..., pos].mean(dim=-1) for pos in positions[b]], dim=-1)
                for b in range(len(prompts))
            ]  # per prompt [step, image_token, concept]
            per_block.append(torch.stack(cols, dim=1))  # [step, batch, image_token, concept]
    else:
        if per_prompt is not None:
            raise ConfigError("The concept methods take one list of concepts for all prompts of a call.")
        kind = "img2concept_out" if method == "concept" else "img2concept"
        if not concept_names(adapter):
            raise ConfigError(
                f"method={method!r} needs joint text blocks; the {adapter.name!r} architecture has none. "
                "Use method='img2txt'."
            )
        with record(pipe, attention=f"blocks.*.attn.{kind}", concepts=shared, cfg="cond") as rec:
            images = pipe(prompts, **kwargs).images
        names = list(rec.names)
        blocks = [int(n.split(".")[1]) for n in names]
        per_block = [rec[n].double() for n in names]
    maps = normalise(torch.stack(per_block, dim=1), method)  # [step, block, batch, image_token, concept]
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr, maps, blocks


def pool(maps: torch.Tensor, blocks: list[int], steps: Any = None, use_blocks: Any = None) -> torch.Tensor:
    """Mean over the chosen steps (default: all) and blocks (default: the later half) of ``[step, block, ...]`` maps."""
    step_sel = _selection(steps, list(range(maps.shape[0])), "steps")
    block_sel = _selection(use_blocks, blocks, "blocks", blocks[len(blocks) // 2 :])
    bi = [blocks.index(b) for b in block_sel]
    return maps[step_sel][:, bi].mean(dim=(0, 1))


def segment(
    pipe: Any,
    prompt: str,
    concepts: Sequence[str],
    seed: int = 0,
    method: SegmentMethod = "concept_attn",
    blocks: Sequence[int] | Literal["all"] | None = None,
    steps: Sequence[int] | Literal["all"] | None = None,
    num_inference_steps: int | None = None,
    rule: MaskRule = DEFAULT_RULE,
    **pipe_kwargs: Any,
) -> Segmentation:
    """Generate ``prompt`` and segment the image into one binary mask per concept (see the module doc).

    Example: ``segment(pipe, "a red circle on a gray background", ["circle", "background"]).masks["circle"]``.
    """
    concepts = check_concepts(list(concepts))
    images, maps, block_ids = record_maps(pipe, [prompt], concepts, method, [seed], num_inference_steps, **pipe_kwargs)
    image = images[0]
    h, w = image.shape[:2]
    rows, cols = grid_of(maps.shape[-2], h, w)
    grid_maps = maps[:, :, 0].transpose(-1, -2).unflatten(-1, (rows, cols))  # [step, block, concept, height, width]
    use_steps = _selection(steps, list(range(grid_maps.shape[0])), "steps")
    use_blocks = _selection(blocks, block_ids, "blocks", block_ids[len(block_ids) // 2 :])
    pooled = pool(grid_maps, block_ids, use_steps, use_blocks)
    token = masks_from_pooled(pooled, rule=rule)
    full = masks_from_pooled(pooled, (h, w), rule=rule)
    return Segmentation(
        concepts=concepts,
        method=method,
        blocks=use_blocks,
        steps=use_steps,
        maps=grid_maps,
        pooled=pooled,
        token_masks={c: token[i] for i, c in enumerate(concepts)},
        masks={c: full[i] for i, c in enumerate(concepts)},
        image=image,
    )


__all__ = [
    "DEFAULT_POOLING",
    "DEFAULT_RULE",
    "METHODS",
    "MaskRule",
    "SegmentMethod",
    "Segmentation",
    "grid_of",
    "masks_from_pooled",
    "normalise",
    "otsu_threshold",
    "pool",
    "record_maps",
    "segment",
]

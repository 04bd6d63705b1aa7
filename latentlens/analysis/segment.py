"""Segmentation from attention maps: one binary mask per concept word, from prompt-token or concept maps.

Methods (``method=``):

- ``"img2txt"``: the image→text attention of the concept's tokens *in the prompt* (each concept must
  occur in the prompt); per block and step, a token's weights are renormalised over the concepts.
- ``"concept"``: ConceptAttention's output-space maps ``blocks.{i}.attn.img2concept_out``
  (image attention outputs · concept outputs), softmax over the concepts per block and step.
- ``"concept_attn"`` (default): the concept attention weights ``blocks.{i}.attn.img2concept``.

Pooling (the default, :data:`DEFAULT_POOLING`): the mean over the later half of the joint blocks
(``blocks[len // 2:]``; on the toy model blocks 3–5) and every step of the normalised maps;
``blocks=`` / ``steps=`` choose others. Masks (``rule=``):

- ``"refine"`` (default): each concept's Otsu mask (below) seeds a 2-means clustering (concept vs
  rest, at most :data:`REFINE_ROUNDS` rounds) of the image tokens' features
  ``blocks.{feature_block}.resid_out.img`` at the last denoising step (default block:
  ``blocks[len // 3]``, block 2 on the toy model); each token's *coverage* is its position on the
  line from the rest's median to the concept's most extreme token (0 → 1, :func:`refine_coverage`),
  and the mask is coverage > :data:`COVERAGE_THRESHOLD` (0.6; the benchmark's truth counts a token as
  object when at least half of it is, and the estimate runs high: rescaling to the most extreme token
  makes partly covered tokens look fuller, most of all for small objects; 0.6 was chosen on the
  development split of toy v2, see ``benchmarks/RESULTS.md``). At image resolution: the coverage
  upsampled bilinearly, against the same threshold. The maps say *which* tokens are the concept; the
  features place the boundary.
- ``"half"`` (maps only): a concept's mask is where its pooled map exceeds the midpoint between that
  map's median and its maximum at the token grid (the map read as coverage: rest at the median, a
  fully covered token at the maximum); at image resolution the upsampled map against the same value.
- ``"otsu"``: a concept's mask is where its pooled map exceeds the Otsu threshold of that map at the
  token grid (at image resolution: the bilinearly upsampled map against the same threshold).
- ``"argmax"``: a token (pixel) belongs to the concept whose pooled map is largest there.

The defaults (method, pooling, rule, feature block) were chosen on a development split of the
shapes world and measured on a separate held-out split (``benchmarks/bench_segment.py``).

Example::

    result = segment(pipe, "a small red circle on the left on a gray background", ["circle", "background"], seed=0)
    result.masks["circle"].shape   # (height, width), bool
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal
from collections.abc import Sequence

import numpy as np
import torch

from latentlens.adapters import adapter_for
from latentlens.concepts import check_concepts
from latentlens.errors import ConfigError
from latentlens.names import concept_names, recordable_names, select_names
from latentlens.recorder import record
from latentlens.runs import default_num_inference_steps
from latentlens.text import word_token_indices

SegmentMethod = Literal["img2txt", "concept", "concept_attn"]
MaskRule = Literal["refine", "half", "otsu", "argmax"]
DEFAULT_RULE: MaskRule = "refine"
METHODS: tuple[str, ...] = ("img2txt", "concept", "concept_attn")
RULES: tuple[str, ...] = ("refine", "half", "otsu", "argmax")
#: at most this many 2-means rounds in the ``"refine"`` rule (it stops earlier when the split is stable)
REFINE_ROUNDS = 10
#: the ``"refine"`` rule's mask: estimated coverage above this (chosen on toy v2's development split: 0.5 → 0.834,
#: 0.55 → 0.858, 0.6 → 0.861, 0.7 → 0.809 token-grid IoU, concept_attn, default pooling)
COVERAGE_THRESHOLD = 0.6
#: the stated default pooling: mean over the later half of the joint blocks and every denoising step
DEFAULT_POOLING = {"blocks": "later half", "steps": "all"}


@dataclass
class Segmentation:
    """Masks and the maps they come from.

    ``maps``: ``[step, block, concept, height, width]`` normalised over the concepts; ``pooled``:
    ``[concept, height, width]``; ``token_masks``/``masks``: per concept, bool at the token grid / at the
    image's resolution; ``image``: uint8 ``[height, width, 3]``; ``rule`` the mask rule;
    ``feature_block`` and ``coverage`` ``[concept, height, width]`` (the estimated fraction of each token
    the concept covers) for the ``"refine"`` rule, else None.
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
    rule: str = DEFAULT_RULE
    feature_block: int | None = None
    coverage: torch.Tensor | None = None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(METHODS)}.")
    return method


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"rule={rule!r} is not one of {', '.join(repr(r) for r in RULES)}.")
    return rule


def default_feature_block(blocks: Sequence[int]) -> int:
    """The ``"refine"`` rule's default feature block: the one a third of the way through ``blocks``."""
    return list(blocks)[len(blocks) // 3]


def feature_site(block: int) -> str:
    """The site whose image tokens the ``"refine"`` rule clusters."""
    return f"blocks.{block}.resid_out.img"


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


def refine_coverage(seeds: np.ndarray, features: torch.Tensor, rounds: int = REFINE_ROUNDS) -> torch.Tensor:
    """Per concept, the fraction of each token it covers, estimated from the tokens' features.

    ``seeds``: bool ``[concept, token]`` (initial masks, e.g. Otsu of the maps); ``features``
    ``[token, channel]``. Per concept: 2-means of the features, concept vs rest, starting from its seed
    (at most ``rounds`` rounds); then each token's projection on the line between the two centroids,
    rescaled so that the rest's median is 0 and the concept's most extreme token is 1. Returns float64
    ``[concept, token]``; a seed that is empty or everything is returned as 0/1 unchanged.

    Example: ``refine_coverage(np.array([[True, False, False]]), torch.tensor([[1.0], [0.9], [0.0]]))``
    → ``[[1.0, 0.9, 0.0]]``.
    """
    x = features.double().reshape(features.shape[0], -1)  # [token, channel]
    out = torch.as_tensor(np.asarray(seeds), dtype=torch.float64).clone()
    for c in range(out.shape[0]):
        m = torch.as_tensor(np.asarray(seeds[c]), dtype=torch.bool)
        if m.all() or not m.any():
            continue
        for _ in range(rounds):
            inside, rest = x[m].mean(dim=0), x[~m].mean(dim=0)
            new = ((x - inside) ** 2).sum(dim=1) < ((x - rest) ** 2).sum(dim=1)
            if new.all() or not new.any() or torch.equal(new, m):
                break
            m = new
        inside, rest = x[m].mean(dim=0), x[~m].mean(dim=0)
        t = (x - rest) @ (inside - rest)  # [token]
        lo, hi = float(t[~m].median()), float(t[m].max())
        if hi > lo:
            out[c] = (t - lo) / (hi - lo)
    return out


def masks_from_pooled(
    pooled: torch.Tensor,
    size: tuple[int, int] | None = None,
    rule: MaskRule = DEFAULT_RULE,
    features: torch.Tensor | None = None,
) -> np.ndarray:
    """bool ``[concept, height, width]`` (or, with ``size=(H, W)``, after bilinear upsampling, ``[concept, height, width]``).

    ``rule``: ``"refine"`` (default; needs ``features`` ``[token, channel]`` of the grid's tokens in
    row-major order) — the Otsu masks refined by :func:`refine_coverage`, coverage > :data:`COVERAGE_THRESHOLD`;
    ``"half"`` — each concept's map above the midpoint of its median and its maximum; ``"otsu"`` — each concept's mask is where its map exceeds the Otsu threshold of that map at the
    token grid; ``"argmax"`` — each place goes to the concept whose map is largest (a single concept:
    above its mean).
    """
    check_rule(rule)
    grid = pooled.double()
    if rule == "refine":
        if features is None:
            raise ConfigError("rule='refine' needs the image tokens' features; pass features=[token, channel].")
        return masks_from_coverage(coverage_from_pooled(grid, features), size)
    x = grid
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    if rule == "otsu":
        return np.stack([(x[c] > otsu_threshold(grid[c])).numpy() for c in range(x.shape[0])])
    if rule == "half":
        return np.stack([(x[c] > half_threshold(grid[c])).numpy() for c in range(x.shape[0])])
    if x.shape[0] == 1:
        return (x > x.mean()).numpy()
    best = x.argmax(dim=0)
    return np.stack([(best == c).numpy() for c in range(x.shape[0])])


def half_threshold(values: torch.Tensor) -> float:
    """The midpoint between the median and the maximum of ``values`` (the ``"half"`` rule)."""
    v = values.flatten().double()
    median = float(v.median())
    return median + 0.5 * (float(v.max()) - median)


def coverage_from_pooled(pooled: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The ``"refine"`` rule's coverage ``[concept, height, width]``: Otsu masks of ``pooled`` refined by ``features``.

    ``features``: ``[token, channel]``, the grid's tokens in row-major order.
    """
    grid = pooled.double()
    if features.shape[0] != grid.shape[-2] * grid.shape[-1]:
        raise ConfigError(f"features have {features.shape[0]} tokens but the maps' grid is {tuple(grid.shape[-2:])}.")
    seeds = masks_from_pooled(grid, rule="otsu").reshape(grid.shape[0], -1)
    return refine_coverage(seeds, features).reshape(grid.shape)


def masks_from_coverage(
    coverage: torch.Tensor, size: tuple[int, int] | None = None, threshold: float = COVERAGE_THRESHOLD
) -> np.ndarray:
    """bool ``[concept, height, width]`` where ``coverage`` ``[concept, height, width]`` exceeds ``threshold``
    (optionally upsampled)."""
    x = coverage.double()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return (x > threshold).numpy()


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


@dataclass
class MapRecording:
    """What :func:`record_maps` returns.

    ``images`` uint8 ``[batch, height, width, 3]``; ``maps`` ``[step, block, batch, image_token, concept]``
    normalised over the concepts; ``blocks`` the block numbers of the block axis; ``features``
    ``[batch, image_token, channel]`` (``blocks.{feature_block}.resid_out.img`` at the last step) or None.
    """

    images: np.ndarray
    maps: torch.Tensor
    blocks: list[int]
    features: torch.Tensor | None = None
    feature_block: int | None = None


def map_names(adapter: Any, method: str) -> list[str]:
    """The recorded map names of ``method`` (one per block, in block order), checked before any model work."""
    check_method(method)
    if method == "img2txt":
        return select_names(recordable_names(adapter), "blocks.*.attn.img2txt")
    kind = "img2concept_out" if method == "concept" else "img2concept"
    names = [n for n in concept_names(adapter) if n.endswith("." + kind)]
    if not names:
        raise ConfigError(
            f"method={method!r} needs joint text blocks; the {adapter.name!r} architecture has none. "
            "Use method='img2txt'."
        )
    return names


def record_maps(
    pipe: Any,
    prompts: Sequence[str],
    concepts: Sequence[Sequence[str]] | Sequence[str],
    method: str = "concept",
    seeds: Sequence[int] | None = None,
    num_inference_steps: int | None = None,
    feature_block: int | None = None,
    **pipe_kwargs: Any,
) -> MapRecording:
    """Generate ``prompts`` and record the maps of ``method`` (and, with ``feature_block``, the image
    tokens' features of that block at the last denoising step, for the ``"refine"`` rule).

    ``concepts``: one list for all prompts, or one list per prompt (the concept methods need the same
    concepts for all prompts of one call). Example::

        rec = record_maps(pipe, ["a red circle on a gray background"], ["circle", "background"], "concept_attn")
        rec.maps.shape   # [step, block, 1, image_token, 2]
    """
    prompts = list(prompts)
    per_prompt = [list(c) for c in concepts] if concepts and not isinstance(concepts[0], str) else None
    shared = None if per_prompt is not None else check_concepts(list(concepts))  # type: ignore[arg-type]
    adapter = adapter_for(pipe)
    names = map_names(adapter, method)
    blocks = [int(n.split(".")[1]) for n in names]
    if feature_block is not None and feature_site(feature_block) not in recordable_names(adapter):
        raise ConfigError(
            f"feature_block={feature_block!r} has no image-stream site {feature_site(feature_block)!r}; "
            f"choose one of the blocks {blocks}."
        )
    kwargs = dict(pipe_kwargs, output_type="np")
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    if seeds is not None:
        kwargs["generator"] = [torch.Generator().manual_seed(int(s)) for s in seeds]
    n_steps = num_inference_steps if num_inference_steps is not None else default_num_inference_steps(pipe)
    if method == "img2txt":
        lists: list[list[str]] = per_prompt if per_prompt is not None else [list(shared or [])] * len(prompts)
        # positions of each concept's tokens in each prompt (checked before any model work)
        positions = [[word_token_indices(adapter, c, p) for c in cs] for p, cs in zip(prompts, lists)]
    elif per_prompt is not None:
        raise ConfigError("The concept methods take one list of concepts for all prompts of a call.")
    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(
            record(pipe, attention=names, cfg="cond", concepts=None if method == "img2txt" else shared)
        )
        feats = None
        if feature_block is not None:  # only the last step: features are [token, channel] per step
            last = None if n_steps is None else [n_steps - 1]
            feats = stack.enter_context(record(pipe, sites=feature_site(feature_block), steps=last, cfg="cond"))
        images = pipe(prompts, **kwargs).images
    if method == "img2txt":
        per_block = []
        for n in names:
            m = rec[n].double()  # [step, batch, image_token, text_token]
            cols = [
                torch.stack([m[:, b][..., pos].mean(dim=-1) for pos in positions[b]], dim=-1)
                for b in range(len(prompts))
            ]  # per prompt [step, image_token, concept]
            per_block.append(torch.stack(cols, dim=1))  # [step, batch, image_token, concept]
    else:
        per_block = [rec[n].double() for n in names]
    maps = normalise(torch.stack(per_block, dim=1), method)  # [step, block, batch, image_token, concept]
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    features = None if feats is None else feats[feature_site(int(feature_block or 0))][-1].double()
    return MapRecording(arr, maps, blocks, features, feature_block)


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
    feature_block: int | None = None,
    **pipe_kwargs: Any,
) -> Segmentation:
    """Generate ``prompt`` and segment the image into one binary mask per concept (see the module doc).

    ``feature_block`` (``rule="refine"`` only): the block whose image-stream features place the
    boundary (default :func:`default_feature_block` of the map blocks).

    Example: ``segment(pipe, "a red circle on a gray background", ["circle", "background"]).masks["circle"]``.
    """
    concepts = check_concepts(list(concepts))
    check_rule(rule)
    if rule != "refine" and feature_block is not None:
        raise ConfigError(f"feature_block={feature_block!r} is used only by rule='refine', not rule={rule!r}.")
    map_blocks = [int(n.split(".")[1]) for n in map_names(adapter_for(pipe), method)]
    use_blocks = _selection(blocks, map_blocks, "blocks", map_blocks[len(map_blocks) // 2 :])
    if rule == "refine" and feature_block is None:
        feature_block = default_feature_block(map_blocks)
    got = record_maps(
        pipe, [prompt], concepts, method, [seed], num_inference_steps, feature_block=feature_block, **pipe_kwargs
    )
    image = got.images[0]
    h, w = image.shape[:2]
    rows, cols = grid_of(got.maps.shape[-2], h, w)
    grid_maps = got.maps[:, :, 0].transpose(-1, -2).unflatten(-1, (rows, cols))  # [step, block, concept, height, width]
    use_steps = _selection(steps, list(range(grid_maps.shape[0])), "steps")
    pooled = pool(grid_maps, got.blocks, use_steps, use_blocks)
    coverage = None
    if got.features is not None:
        coverage = coverage_from_pooled(pooled, got.features[0])  # [concept, height, width]
        token, full = masks_from_coverage(coverage), masks_from_coverage(coverage, (h, w))
    else:
        token, full = masks_from_pooled(pooled, rule=rule), masks_from_pooled(pooled, (h, w), rule=rule)
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
        rule=rule,
        feature_block=feature_block,
        coverage=coverage,
    )


__all__ = [
    "DEFAULT_POOLING",
    "DEFAULT_RULE",
    "METHODS",
    "REFINE_ROUNDS",
    "RULES",
    "MapRecording",
    "MaskRule",
    "SegmentMethod",
    "Segmentation",
    "check_rule",
    "coverage_from_pooled",
    "default_feature_block",
    "feature_site",
    "grid_of",
    "half_threshold",
    "map_names",
    "COVERAGE_THRESHOLD",
    "masks_from_coverage",
    "masks_from_pooled",
    "normalise",
    "otsu_threshold",
    "pool",
    "record_maps",
    "refine_coverage",
    "segment",
]

"""What the /attention page's concept box runs: regenerate a run's sample and record concept maps for typed words.

The sample is generated again from its own prompt and seed with the run's generation settings, and
:func:`latentlens.record` with ``concepts=`` records ``blocks.{i}.attn.img2concept`` (attention
weights, softmax over the concepts) and ``blocks.{i}.attn.img2concept_out`` (ConceptAttention's
output space, here with a softmax over the concepts per image token) of every joint block at every
step. The maps are kept as one ``.npz`` in the dashboard's result folder, named by an id the page
holds; nothing is pickled.

Example::

    maps = compute_concept_maps(index, "shapes", 3, ["circle", "background"])
    maps.weights.shape   # [step, block, image_token, concept]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

import latentlens

from dashboards import config
from dashboards.data import DashboardError, open_run, run_manifest
from dashboards.limits import bounded_text

MAX_CONCEPTS = 8
KINDS = ("weights", "output")


@dataclass
class ConceptMaps:
    """Concept maps of one sample: ``weights`` and ``output`` ``[step, block, image_token, concept]``."""

    concepts: list[str]
    blocks: list[int]
    weights: np.ndarray
    output: np.ndarray
    image: np.ndarray  # uint8 [height, width, 3], the regenerated sample


def parse_concepts(text: Any) -> list[str]:
    """The comma-separated words of the concept box as a checked list (a clear error otherwise)."""
    text = bounded_text(text, "The concept words", 400)
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    if not words:
        raise DashboardError("Type one or more concept words, separated by commas, e.g. circle, background.")
    if len(words) > MAX_CONCEPTS:
        raise DashboardError(f"{len(words)} concepts were typed; at most {MAX_CONCEPTS} are mapped at once.")
    return latentlens.check_concepts(words)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compute_concept_maps(index: Any, run_id: str, sample: int, concepts: list[str]) -> ConceptMaps:
    """Regenerate ``sample`` of the run and record the maps of ``concepts`` (see the module doc)."""
    import torch

    from dashboards.editing import load_pipeline_for

    run = open_run(index, run_id)
    manifest = run_manifest(run)
    model_id = str((manifest.get("model") or {}).get("id") or "")
    if not model_id:
        raise DashboardError(f"The run {run_id!r} does not name its model in manifest.json; it cannot be regenerated.")
    prompts = manifest.get("prompts") or []
    seeds = manifest.get("seeds") or []
    if not 0 <= sample < len(prompts):
        raise DashboardError(f"Sample {sample} is out of range; the run has samples 0..{len(prompts) - 1}.")
    generation = {k: v for k, v in (manifest.get("generation") or {}).items() if v is not None}
    seed = int(seeds[sample]) if sample < len(seeds) else sample
    pipe = load_pipeline_for(model_id)
    with latentlens.record(pipe, attention="blocks.*.attn.img2concept*", concepts=concepts) as rec:
        out = pipe(prompts[sample], generator=torch.Generator().manual_seed(seed), output_type="np", **generation)
    names = [n for n in rec.names if n.endswith(".img2concept")]
    blocks = [int(n.split(".")[1]) for n in names]
    weights = torch.stack([rec[n][:, 0] for n in names], dim=1).double().numpy()  # [step, block, token, concept]
    output = torch.stack([rec[n + "_out"][:, 0] for n in names], dim=1).double().numpy()
    image = (np.clip(np.asarray(out.images[0]), 0, 1) * 255).round().astype(np.uint8)
    return ConceptMaps(list(concepts), blocks, weights, _softmax(output), image)


def save_concept_maps(maps: ConceptMaps) -> str:
    """Keep the maps as ``.npz`` in the result folder; returns their id."""
    arrays = {
        "weights": maps.weights.astype(np.float32),
        "output": maps.output.astype(np.float32),
        "blocks": np.asarray(maps.blocks, dtype=np.int64),
        "concepts": np.asarray(maps.concepts, dtype=str),
        "image": maps.image,
    }
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
    maps_id = digest.hexdigest()[:32]
    np.savez_compressed(config.result_dir() / f"concepts-{maps_id}.npz", **arrays)  # type: ignore[arg-type]
    return maps_id


def load_concept_maps(maps_id: Any) -> ConceptMaps:
    """The maps saved under ``maps_id`` by :func:`save_concept_maps`."""
    if not isinstance(maps_id, str) or not maps_id.isalnum():
        raise DashboardError("The concept maps' id is not valid; map the concepts again.")
    path = config.result_dir() / f"concepts-{maps_id}.npz"
    if not path.is_file():
        raise DashboardError("The concept maps are no longer on the server; map the concepts again.")
    with np.load(path, allow_pickle=False) as data:
        return ConceptMaps(
            [str(c) for c in data["concepts"]],
            [int(b) for b in data["blocks"]],
            data["weights"],
            data["output"],
            data["image"],
        )


__all__ = [
    "KINDS",
    "MAX_CONCEPTS",
    "ConceptMaps",
    "compute_concept_maps",
    "load_concept_maps",
    "parse_concepts",
    "save_concept_maps",
]

"""Segmentation from attention maps on the shapes world: prompt-token maps vs concept maps (toy model).

For ``--n`` generated images (random shapes-world captions, seed i for image i), the concepts are
``[shape word, "background"]``; the object's mask is the shapes-world oracle's mask of the
*generated* image (images where the oracle finds no object are counted and skipped). One recorded run
per batch gives all three maps of the same images: ``img2txt`` (the prompt's shape/background
tokens), ``concept_attn`` (``img2concept``) and ``concept`` (``img2concept_out``).

IoU of the object concept's mask with the object mask, at the token grid (exact mask downsampled:
a token is object when at least half of its pixels are) and at image resolution (pooled maps
upsampled bilinearly), per block (pooled over steps), per step (pooled over blocks) and pooled over
both (the default of ``latentlens segment``).

    flock /tmp/ll-cpu.lock python benchmarks/bench_segment.py --n 200 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch

from latentlens import load_pipeline, record
from latentlens.analysis.segment import grid_of, masks_from_pooled, normalise
from latentlens.shapes import sample_scenes
from latentlens.shapes.oracle import object_mask
from latentlens.text import word_token_indices

METHODS = ("img2txt", "concept_attn", "concept")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def token_truth(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A token is object when at least half of its pixels are."""
    h, w = mask.shape
    frac = mask.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))
    return frac >= 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the toy model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy")
    scenes = sample_scenes(args.n, np.random.default_rng(args.seed))
    by_shape: dict[str, list[int]] = defaultdict(list)
    for i, (scene, _caption) in enumerate(scenes):
        by_shape[scene.attributes.shape].append(i)
    # scores[method][(scope, key)] -> list of IoU; scope in token/image x pooled/block/step
    scores: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in METHODS}
    skipped = 0
    start = time.time()
    load0 = os.getloadavg()
    kw = {} if args.steps is None else {"num_inference_steps": args.steps}
    for shape, idx in sorted(by_shape.items()):
        concepts = [shape, "background"]
        for s in range(0, len(idx), args.batch):
            part = idx[s : s + args.batch]
            prompts = [scenes[i][1].text for i in part]
            cols = [[word_token_indices(pipe, c, p) for c in concepts] for p in prompts]
            gens = [torch.Generator().manual_seed(args.seed + i) for i in part]
            with record(pipe, attention=["blocks.*.attn.img2txt", "blocks.*.attn.img2concept*"],
                        concepts=concepts) as rec:
                images = pipe(prompts, generator=gens, output_type="np", **kw).images
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
            blocks = sorted({int(n.split(".")[1]) for n in rec.names})
            raw = {
                "img2txt": torch.stack([
                    torch.stack([
                        torch.stack([rec[f"blocks.{b}.attn.img2txt"][:, j][..., pos].double().mean(-1)
                                     for pos in cols[j]], -1)
                        for j in range(len(part))], 1)
                    for b in blocks], 1),
                "concept_attn": torch.stack([rec[f"blocks.{b}.attn.img2concept"] for b in blocks], 1),
                "concept": torch.stack([rec[f"blocks.{b}.attn.img2concept_out"] for b in blocks], 1),
            }  # [step, block, batch, image_token, concept]
            for j in range(len(part)):
                truth = object_mask(images[j])
                if not truth.any():
                    skipped += 1
                    continue
                h, w = truth.shape
                for m in METHODS:
                    maps = normalise(raw[m][:, :, j], m)  # [step, block, token, concept]
                    rows, cc = grid_of(maps.shape[-2], h, w)
                    g = maps.transpose(-1, -2).unflatten(-1, (rows, cc))  # [step, block, concept, r, c]
                    tt = token_truth(truth, rows, cc)
                    pooled = {"pooled": g.mean((0, 1))}
                    pooled.update({f"block {b}": g[:, k].mean(0) for k, b in enumerate(blocks)})
                    pooled.update({f"step {t}": g[t].mean(0) for t in range(g.shape[0])})
                    for key, p in pooled.items():
                        scores[m]["token " + key].append(iou(masks_from_pooled(p)[0], tt))
                        scores[m]["image " + key].append(iou(masks_from_pooled(p, (h, w))[0], truth))
            print(f"{shape}: {s + len(part)}/{len(idx)} images, {time.time() - start:.0f} s", flush=True)
    result = {
        "n": args.n, "skipped_no_object": skipped, "seconds": round(time.time() - start, 1),
        "load_start": load0, "load_end": os.getloadavg(),
        "mean_iou": {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in scores.items()},
    }
    for m in METHODS:
        r = result["mean_iou"][m]
        print(f"{m:13s} token pooled {r['token pooled']:.3f}  image pooled {r['image pooled']:.3f}  "
              + "  ".join(f"{k.split(' ', 1)[1]}={v:.3f}" for k, v in r.items() if k.startswith("token ")
                          and k != "token pooled"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

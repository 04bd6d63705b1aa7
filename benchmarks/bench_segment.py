"""Segmentation from attention maps on the shapes world: prompt-token maps vs concept maps (toy model).

For ``--n`` generated images (random shapes-world captions, seed i for image i), the concepts are
``[shape word, "background"]``; the object's mask is the shapes-world oracle's mask of the
*generated* image (images where the oracle finds no object are counted and skipped). One recorded run
per batch gives all three maps of the same images: ``img2txt`` (the prompt's shape/background
tokens), ``concept_attn`` (``img2concept``) and ``concept`` (``img2concept_out``).

IoU of the object concept's mask with the object mask, at the token grid (exact mask downsampled:
a token is object when at least half of its pixels are) and at image resolution (pooled maps
upsampled bilinearly), per block (pooled over steps), per step (pooled over the default blocks),
with the default pooling of ``latentlens segment`` (later half of the blocks, all steps) and over
all blocks; for both mask rules (Otsu, argmax).

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
from latentlens.analysis.segment import grid_of, masks_from_pooled, normalise, pool
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


def generate(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Generate the images and record the raw maps: ``{method: [image, step, block, token, concept]}``, truth."""
    pipe = load_pipeline("toy")
    scenes = sample_scenes(args.n, np.random.default_rng(args.seed))
    by_shape: dict[str, list[int]] = defaultdict(list)
    for i, (scene, _caption) in enumerate(scenes):
        by_shape[scene.attributes.shape].append(i)
    raw: dict[str, list] = {m: [None] * args.n for m in METHODS}
    truth: list = [None] * args.n
    kw = {} if args.steps is None else {"num_inference_steps": args.steps}
    start = time.time()
    for shape, idx in sorted(by_shape.items()):
        concepts = [shape, "background"]
        for s in range(0, len(idx), args.batch):
            part = idx[s : s + args.batch]
            prompts = [scenes[i][1].text for i in part]
            cols = [[word_token_indices(pipe, c, p) for c in concepts] for p in prompts]
            gens = [torch.Generator().manual_seed(args.seed + i) for i in part]
            with record(
                pipe, attention=["blocks.*.attn.img2txt", "blocks.*.attn.img2concept*"], concepts=concepts
            ) as rec:
                images = pipe(prompts, generator=gens, output_type="np", **kw).images
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
            blocks = sorted({int(n.split(".")[1]) for n in rec.names})
            for j, i in enumerate(part):
                truth[i] = object_mask(images[j])
                raw["img2txt"][i] = torch.stack(
                    [
                        torch.stack([rec[f"blocks.{b}.attn.img2txt"][:, j][..., pos].mean(-1) for pos in cols[j]], -1)
                        for b in blocks
                    ],
                    1,
                ).numpy()  # [step, block, token, concept]
                raw["concept_attn"][i] = torch.stack(
                    [rec[f"blocks.{b}.attn.img2concept"][:, j] for b in blocks], 1
                ).numpy()
                raw["concept"][i] = torch.stack(
                    [rec[f"blocks.{b}.attn.img2concept_out"][:, j] for b in blocks], 1
                ).numpy()
            print(f"{shape}: {s + len(part)}/{len(idx)} images, {time.time() - start:.0f} s", flush=True)
    out = {m: np.stack(v) for m, v in raw.items()}
    out["truth"] = np.stack(truth)
    out["seconds"] = np.array(time.time() - start)
    return out


def evaluate(data: dict[str, np.ndarray], rule: str) -> dict[str, dict[str, float]]:
    """Mean IoU per method: token/image x pooled / per block / per step / last-half blocks."""
    truth_all = data["truth"]
    keep = [i for i in range(len(truth_all)) if truth_all[i].any()]
    result: dict[str, dict[str, float]] = {}
    for m in METHODS:
        scores: dict[str, list[float]] = defaultdict(list)
        for i in keep:
            truth = truth_all[i]
            h, w = truth.shape
            maps = normalise(torch.from_numpy(data[m][i]), m)  # [step, block, token, concept]
            rows, cc = grid_of(maps.shape[-2], h, w)
            g = maps.transpose(-1, -2).unflatten(-1, (rows, cc))  # [step, block, concept, r, c]
            tt = token_truth(truth, rows, cc)
            nb = g.shape[1]
            blocks = list(range(nb))
            pooled = {"default": pool(g, blocks), "all blocks": pool(g, blocks, use_blocks="all")}
            pooled.update({f"block {b}": g[:, b].mean(0) for b in range(nb)})
            pooled.update({f"step {t}": pool(g, blocks, steps=[t]) for t in range(g.shape[0])})
            for key, p in pooled.items():
                scores["token " + key].append(iou(masks_from_pooled(p, rule=rule)[0], tt))
                if key in ("default", "all blocks") or key.startswith("block"):
                    scores["image " + key].append(iou(masks_from_pooled(p, (h, w), rule=rule)[0], truth))
        result[m] = {k: float(np.mean(v)) for k, v in scores.items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the toy model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="save the raw maps and masks (.npz) for --load")
    ap.add_argument("--load", default=None, help="evaluate saved maps instead of generating")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    if args.load:
        data = dict(np.load(args.load))
    else:
        data = generate(args)
        if args.save:
            np.savez_compressed(args.save, **data)
    result = {
        "n": len(data["truth"]),
        "no_object": int(sum(not t.any() for t in data["truth"])),
        "generate_seconds": float(data["seconds"]),
        "load_start": load0,
        "load_end": os.getloadavg(),
        "rules": {},
    }
    for rule in ("otsu", "argmax"):
        res = evaluate(data, rule)
        result["rules"][rule] = res
        for m in METHODS:
            r = res[m]
            print(
                f"{rule:6s} {m:13s} token default {r['token default']:.3f} all blocks {r['token all blocks']:.3f} "
                f"image default {r['image default']:.3f}  "
                + " ".join(
                    f"{k.split(' ', 1)[1]}={v:.2f}"
                    for k, v in r.items()
                    if k.startswith("token ") and ("block " in k or k.endswith(("step 0", "step 10", "step 19")))
                )
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

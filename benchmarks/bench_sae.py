"""SAE benchmark (issue 17): how well SAE features match ground truth, and steering with them vs class means.

Part ``sweep``: trains a TopK SAE (``latentlens.analysis.sae_run.train_run_sae``) at each site of a run
recorded with ``probes/shapes.yaml`` and reports held-out FVU, dead features, mean L0 and the fraction of
the 20 attribute values whose best single feature reaches F1 >= 0.9 (held-out, sample level).

Part ``steer``: red -> blue with ``latentlens.analysis.steering.steering_check`` (oracle success and
shape / size / position kept, canonical red prompts, CFG conditional rows, as in bench_steering.py), at
block 0's text input, where the SAE aligns best and the class-mean recipe works:

1. the SAE's blue feature minus its red feature (decoder rows at their mean activations), on every token;
2. the class-mean blue − red difference of the token means at the same site, rescaled to the SAE
   direction's norm (same site, same size of push);
3. the token-wise, balanced class-mean recipe of bench_steering.py (row 3 there).

Each row also measures how far out of distribution the steered activations are — at that site they are
exactly ``x + alpha * d`` (block 0's text input does not depend on the step or the noise), so they are
computed for the steered prompts themselves: the SAE's relative reconstruction error
``|x - x̂|² / |x - mean|²`` (median over token rows, as a ratio to the unsteered rows'), and the distance to
the nearest recorded activation of the run (mean over rows, as a ratio to the same distance for recorded
rows of held-out samples).

Usage::

    latentlens record --model toy --probe probes/shapes.yaml --dtype float16 --batch-size 40 --out runs/shapes
    python benchmarks/bench_sae.py runs/shapes --part sweep [--json]
    python benchmarks/bench_sae.py runs/shapes --part steer --n 40 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

import latentlens
from latentlens import shapes
from latentlens.analysis.sae_run import load_sae_result, site_folder, train_run_sae
from latentlens.analysis.steering import steering_check

TEXT_INPUT = "blocks.0.resid_in.txt"
SWEEP = (  # (site, steps): the text input is the same at every step, so one step of it suffices
    (TEXT_INPUT, [0]),
    *((f"blocks.{b}.resid_out.txt", [19]) for b in range(5)),
    *((f"blocks.{b}.resid_out.img", [19]) for b in range(6)),
    ("blocks.3.resid_out.img", [10]),
    ("blocks.3.resid_out.img", [15, 17, 19]),
)
WRITE = {TEXT_INPUT: [0], "blocks.3.resid_out.img": [19]}  # results kept on disk (dashboard, steering)


def sweep(run_dir: str, features: int, k: int, epochs: int) -> list[dict[str, Any]]:
    rows = []
    for site, steps in SWEEP:
        write = WRITE.get(site) == steps
        s = train_run_sae(run_dir, site, steps=steps, n_features=features, k=k, epochs=epochs, write=write, quiet=True)
        summary = s["alignment_summary"] or {}
        rows.append({"site": site, "steps": steps, "features": features, "k": k, "epochs": epochs, "fvu": s["fvu"],
                     "dead_fraction": s["dead_fraction"], "l0": s["l0"], "f1_fraction": summary.get("fraction"),
                     "f1_hits": summary.get("f1_at_least_0.9"), "rows_trained": s["rows"]["trained"],
                     "seconds": s["seconds"]["total"], "written": write,
                     "alignment": {key: {"feature": r["feature"], "f1": r["f1"], "iou": r["iou"]}
                                   for key, r in s["alignment"].items()}})
        print(f"done: {site} {steps} fvu {s['fvu']:.3f} F1>=0.9 {summary.get('fraction')}", file=sys.stderr, flush=True)
    return rows


def red_prompts(n: int, seed: int) -> list[str]:
    """The canonical red prompts ``steering_check`` steers (its seeded choice, repeated here)."""
    pool = [c for c in shapes.training_combinations() if c.color == "red"]
    rng = np.random.default_rng(seed)
    return [shapes.canonical_caption(pool[int(i)]) for i in rng.choice(len(pool), size=n, replace=len(pool) < n)]


def text_input(pipe: Any, prompts: list[str]) -> np.ndarray:
    """``[n, tokens, channel]`` block 0's text input for ``prompts`` (one cheap denoising step)."""
    with latentlens.record(pipe, sites=TEXT_INPUT, cfg="cond") as rec:
        with torch.no_grad():
            pipe(prompts, num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    return rec[TEXT_INPUT][0].float().numpy()


def nearest_distance(rows: np.ndarray, reference: torch.Tensor) -> np.ndarray:
    """Euclidean distance of every row to its nearest reference row ``[rows]``."""
    out = []
    for start in range(0, len(rows), 1024):
        block = torch.from_numpy(np.ascontiguousarray(rows[start : start + 1024], dtype=np.float32))
        out.append(torch.cdist(block, reference).min(dim=1).values.numpy())
    return np.concatenate(out)


def steer_rows(run_dir: str, n: int, seed: int, cfg: str, alphas: list[float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run = latentlens.open_run(run_dir)
    folder = site_folder(run_dir, TEXT_INPUT)
    if not (folder / "sae.safetensors").is_file():
        raise SystemExit(f"No SAE at {TEXT_INPUT} in {run_dir}; run `--part sweep` (or `latentlens sae`) first.")
    sae = latentlens.SparseAutoencoder.load(folder / "sae")
    alignment = load_sae_result(run_dir, TEXT_INPUT)["summary"]["alignment"]
    blue, red = alignment["color=blue"], alignment["color=red"]
    if blue["feature"] == red["feature"]:
        raise SystemExit("The SAE's best blue and red features are the same feature; retrain with more features.")
    # 1. SAE: blue feature minus red feature, each at its mean activation
    sae_vector = sae.feature_vector(blue["feature"]) - sae.feature_vector(red["feature"])
    sae_dir = latentlens.Direction(torch.from_numpy(sae_vector), site=TEXT_INPUT, provenance={
        "method": "sae_feature_difference", "to": "blue", "from": "red", "features": [blue["feature"], red["feature"]]})
    # 2. class means of the token means at the same site, rescaled to the SAE direction's norm
    samples = sorted(run.completed)
    labels = np.asarray([run.manifest["labels"][i]["color"] for i in samples])
    X = np.asarray(run[TEXT_INPUT][0 : len(samples), 0], dtype=np.float32)  # [n, tokens, channel]
    mean_dir = latentlens.class_mean_direction(X.mean(axis=1), labels, to="blue", from_="red", site=TEXT_INPUT,
                                               attribute="color")
    mean_dir = mean_dir.scaled(sae_dir.norm / mean_dir.norm)
    # 3. the token-wise balanced recipe over the canonical captions
    prompts = run.manifest["prompts"]
    rows = [run.manifest["labels"][i] for i in samples]
    canonical = np.asarray([prompts[i] == shapes.canonical_caption(shapes.Attributes(**rows[j]))
                            for j, i in enumerate(samples)])
    token_dir = latentlens.class_mean_direction(
        X[canonical], labels[canonical], to="blue", from_="red", site=TEXT_INPUT, attribute="color",
        adjust_for={a: np.asarray([r[a] for r in rows])[canonical] for a in ("shape", "size", "position", "background")})

    # out-of-distribution references: recorded rows of the first 80 % of samples; baseline = the rest's distance
    tokens = X.shape[1]
    split = int(0.8 * len(samples))
    reference = torch.from_numpy(X[:split].reshape(-1, X.shape[-1]))
    in_dist = float(nearest_distance(X[split:].reshape(-1, X.shape[-1]), reference).mean())
    pipe = latentlens.load_pipeline("toy")
    steered_prompts = red_prompts(n, seed)
    x = text_input(pipe, steered_prompts)  # [n, tokens, channel]
    if x.shape[1] != tokens:
        raise SystemExit(f"The toy pipeline gives {x.shape[1]} text tokens, the run {tokens}; re-record the run.")
    base_err = float(np.median(sae.reconstruction_error(x.reshape(-1, x.shape[-1]))))

    plans = [(f"SAE feature blue − red (f{blue['feature']} − f{red['feature']}), every token", sae_dir, a) for a in alphas]
    plans += [("class means of token means blue − red, SAE direction's norm, every token", mean_dir, a) for a in alphas]
    plans += [("token-wise balanced class means (bench_steering row 3)", token_dir, 1.0)]
    results = []
    for name, direction, alpha in plans:
        started = time.perf_counter()
        report = steering_check(pipe, direction, attribute="color", source="red", target="blue", n=n, alpha=alpha,
                                batch_size=40, cfg=cfg, seed=seed)
        vector = direction.vector.numpy()  # [dim] or [tokens, dim]
        steered = (x + alpha * (vector if vector.ndim == 2 else vector[None, :])).reshape(-1, x.shape[-1])
        results.append({
            "direction": name, "alpha": alpha, "norm": direction.norm, "n": n, "cfg": cfg, "seed": seed,
            "success": report["success"], "kept": report["kept"], "baseline": report["baseline"],
            "sae_error": float(np.median(sae.reconstruction_error(steered))), "sae_error_ratio":
                float(np.median(sae.reconstruction_error(steered))) / base_err,
            "nn_distance_ratio": float(nearest_distance(steered, reference).mean()) / in_dist,
            "seconds": round(time.perf_counter() - started, 1),
        })
        print(f"done: {name} alpha {alpha}", file=sys.stderr, flush=True)
    meta = {"sae_error_unsteered": base_err, "nn_distance_in_distribution": in_dist,
            "sae": {"features": int(sae.n_features), "k": int(sae.k), "blue": blue, "red": red},
            "cosine_sae_vs_class_mean": float(sae_dir.cosine(mean_dir))}
    return results, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--part", choices=("sweep", "steer", "both"), default="both")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=40, help="prompts per steering row (default 40).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", default="cond", choices=("cond", "uncond", "both"))
    parser.add_argument("--alphas", default="1,4", help="alphas of steering rows 1 and 2 (default 1,4).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
                            "threads": args.threads, "run": args.run_dir}
    out: dict[str, Any] = {"meta": meta}
    if args.part in ("sweep", "both"):
        out["sweep"] = sweep(args.run_dir, args.features, args.k, args.epochs)
    if args.part in ("steer", "both"):
        out["steer"], out["steer_meta"] = steer_rows(args.run_dir, args.n, args.seed, args.cfg,
                                                     [float(a) for a in args.alphas.split(",")])
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    if "sweep" in out:
        print("| site | steps | FVU | dead | L0 | values with F1 ≥ 0.9 | rows | s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in out["sweep"]:
            print(f"| {r['site']} | {','.join(map(str, r['steps']))} | {r['fvu']:.3f} | {r['dead_fraction']:.1%} | "
                  f"{r['l0']:.2f} | {r['f1_hits']}/20 | {r['rows_trained']:,} | {r['seconds']:.1f} |")
    if "steer" in out:
        print("| direction | α | read blue | shape kept | size kept | position kept | SAE error ×unsteered | "
              "NN distance ×in-dist | s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in out["steer"]:
            k = r["kept"]
            print(f"| {r['direction']} | {r['alpha']:g} | {r['success']:.3f} | {k['shape']:.3f} | {k['size']:.3f} | "
                  f"{k['position']:.3f} | {r['sae_error_ratio']:.2f} | {r['nn_distance_ratio']:.2f} | {r['seconds']} |")
        print(json.dumps(out["steer_meta"], default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

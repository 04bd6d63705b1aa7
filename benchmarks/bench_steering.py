"""Steering benchmark (issue 4): turn red objects blue (or ``--source`` into ``--target``) along a class-mean
colour direction, judged by the oracle.

Directions come from a run recorded with ``probes/shapes.yaml`` (which records block 0's text input
and every block's output). Each row steers ``n`` canonical-caption prompts of red training
combinations with ``latentlens.analysis.steering.steering_check`` and reports the fraction the
oracle reads as blue (*success*) and the fraction whose shape / size / position are still the
prompt's (*kept*), next to the same prompts and seeds without steering (*baseline*). Only the
conditional half of the CFG batch is steered by default (``--cfg cond``): the directions come from
captions, and adding them to the empty prompt's tokens of the unconditional half hurts (measured in
RESULTS.md).

Rows (all class-mean differences target − source, blue − red by default, ``alpha`` as given):

1. ``img, token mean``: the image stream at the grid's best image cell for colour, mean over tokens.
2. ``txt out, token mean``: block 0's text-stream output, mean over tokens, steps 10–19, alpha 4
   (the best token-mean setting found by a sweep; see RESULTS.md).
3. ``txt in, token-wise``: block 0's text input, one difference per token position over the
   canonical-caption samples of the run, other attributes regressed out (``adjust_for``), alpha 1,
   every step.
4. the same without ``adjust_for`` (plain class means), to show what the adjustment buys.

Usage::

    latentlens record --model toy --probe probes/shapes.yaml --dtype float16 --batch-size 40 --out runs/shapes
    latentlens analyze runs/shapes --umap none
    python benchmarks/bench_steering.py runs/shapes --n 40 [--json]
    python benchmarks/bench_steering.py runs/shapes --rows 3 --source orange --target purple --n 8
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
from latentlens.analysis.steering import steering_check

KEEP = ("shape", "size", "position")
TEXT_INPUT = "blocks.0.resid_in.txt"
TEXT_OUTPUT = "blocks.0.resid_out.txt"


def run_labels(run: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """Prompts and per-attribute labels of the run's completed samples, in sample order."""
    samples = sorted(run.completed)
    if samples != list(range(len(samples))):
        raise SystemExit("The run has gaps in its completed samples; finish it with `latentlens record --resume`.")
    prompts = [run.manifest["prompts"][i] for i in samples]
    rows = [run.manifest["labels"][i] for i in samples]
    return prompts, {a: np.asarray([r[a] for r in rows]) for a in shapes.ATTRIBUTES}


def site_features(run: Any, site: str, steps: list[int], n: int) -> np.ndarray:
    """``[n, tokens, channel]`` float32: the site's activations averaged over ``steps``."""
    if site not in run.names:
        raise SystemExit(f"The run did not record {site!r}; re-record it with probes/shapes.yaml (its record.sites).")
    array = run[site]
    recorded = run.recorded_steps(array.shape[1])
    return np.mean([np.asarray(array[0:n, recorded.index(s)], dtype=np.float32) for s in steps], axis=0)


def best_image_cell(run_dir: str) -> tuple[str, int]:
    """The analysis' best (site, step) for colour in the image stream."""
    results = latentlens.load_results(run_dir)
    cells = [p for p in results.probes if p["attribute"] == "color" and p["stream"] == "img"]
    best = max(cells, key=lambda p: (p["accuracy"], -p["step"]))
    return best["site"], int(best["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=40, help="prompts per row (default 40).")
    parser.add_argument("--cfg", default="cond", choices=("cond", "uncond", "both"),
                        help="CFG rows to steer (default cond: the direction comes from captions, not the empty prompt).")
    parser.add_argument("--seed", type=int, default=0, help="steering_check's seed: which red prompts and noise.")
    parser.add_argument("--rows", default="1,2,3,4", help="which rows to run, e.g. 3 or 1,3.")
    parser.add_argument("--source", default="red", help="the colour steered from (default red).")
    parser.add_argument("--target", default="blue", help="the colour steered to (default blue).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table.")
    args = parser.parse_args(argv)
    if args.source not in shapes.COLORS or args.target not in shapes.COLORS or args.source == args.target:
        parser.error(f"--source {args.source!r} and --target {args.target!r} must be two different colours of "
                     f"the shapes world: {', '.join(shapes.COLORS)}.")
    torch.set_num_threads(args.threads)

    run = latentlens.open_run(args.run_dir)
    prompts, labels = run_labels(run)
    n_samples = len(prompts)
    steps_all = list(range(int(run.manifest["generation"]["num_inference_steps"] or 20)))
    pipe = latentlens.load_pipeline("toy")
    canonical = np.asarray([
        p == shapes.canonical_caption(shapes.Attributes(**{a: labels[a][i] for a in shapes.ATTRIBUTES}))
        for i, p in enumerate(prompts)
    ])
    others = {a: labels[a] for a in shapes.ATTRIBUTES if a != "color"}
    rows = {int(r) for r in args.rows.split(",")}
    plans: list[tuple[str, Any, float]] = []
    if 1 in rows:
        site, step = best_image_cell(args.run_dir)
        X = site_features(run, site, [step], n_samples).mean(axis=1)
        d = latentlens.class_mean_direction(X, labels["color"], to=args.target, from_=args.source, site=site, steps=steps_all,
                                            attribute="color")
        plans.append((f"img, token mean ({site} @ {step}, applied at every step)", d, 4.0))
    if 2 in rows:
        steps = list(range(10, 20))
        X = site_features(run, TEXT_OUTPUT, steps, n_samples).mean(axis=1)
        d = latentlens.class_mean_direction(X, labels["color"], to=args.target, from_=args.source, site=TEXT_OUTPUT, steps=steps,
                                            attribute="color")
        plans.append((f"txt out, token mean ({TEXT_OUTPUT}, steps 10-19)", d, 4.0))
    if rows & {3, 4}:  # read once for both rows
        X = site_features(run, TEXT_INPUT, [0], n_samples)[canonical]  # [n_canonical, tokens, channel]
    for row, adjust in ((3, True), (4, False)):
        if row not in rows:
            continue
        d = latentlens.class_mean_direction(
            X, labels["color"][canonical], to=args.target, from_=args.source, site=TEXT_INPUT, steps=None, attribute="color",
            adjust_for={a: v[canonical] for a, v in others.items()} if adjust else None,
            samples="canonical captions",
        )
        what = "balanced" if adjust else "plain"
        plans.append((f"txt in, token-wise {what} ({TEXT_INPUT}, {int(canonical.sum())} canonical samples, every step)", d, 1.0))

    results = []
    for name, direction, alpha in plans:
        start = time.perf_counter()
        report = steering_check(pipe, direction, attribute="color", source=args.source, target=args.target, n=args.n,
                                alpha=alpha, batch_size=40, cfg=args.cfg, seed=args.seed)
        results.append({
            "direction": name, "alpha": alpha, "norm": direction.norm, "n": args.n, "cfg": args.cfg, "seed": args.seed,
            "success": report["success"], "kept": report["kept"], "baseline": report["baseline"],
            "seconds": round(time.perf_counter() - start, 1),
        })
        print(f"done: {name}", file=sys.stderr, flush=True)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
            "threads": args.threads, "run": args.run_dir, "samples": n_samples}
    if args.json:
        print(json.dumps({"meta": meta, "rows": results}, indent=2))
        return 0
    print(f"| direction | α | success ({args.source} → {args.target}) | shape kept | size kept | position kept | unsteered: shape / size / position | s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        k, b = r["kept"], r["baseline"]["kept"]
        print(f"| {r['direction']} | {r['alpha']:g} | {r['success']:.3f} | {k['shape']:.3f} | {k['size']:.3f} | "
              f"{k['position']:.3f} | {b['shape']:.3f} / {b['size']:.3f} / {b['position']:.3f} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality of the toy model, read by the shapes-world oracle (issue 3's quality table).

Generates the canonical caption of trained and held-out combinations at the default settings
(seed ``--seed + i`` per image), reads every image with the oracle, and prints per-attribute
accuracy, all-five accuracy and the one-attribute-edit rates as a table and as JSON.

Usage::

    python benchmarks/toy_quality.py                       # shipped model, 240 trained + 80 held-out, 40 pairs/attribute
    python benchmarks/toy_quality.py --model /work/toy_train/pipeline --n-trained 96 --pairs 0
    python benchmarks/toy_quality.py --steps 20 --guidance 4 --json-out /tmp/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentlens.models import load_pipeline
    from latentlens.shapes import ATTRIBUTES, held_out_combinations, training_combinations
    from latentlens.toy.evaluate import attribute_accuracy, one_attribute_edits
    from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="'toy' or a pipeline folder (default: toy).")
    parser.add_argument("--n-trained", type=int, default=240, help="Trained combinations to generate (default 240).")
    parser.add_argument("--n-held-out", type=int, default=80, help="Held-out combinations (default 80, all).")
    parser.add_argument("--pairs", type=int, default=40, help="One-attribute-edit pairs per attribute (default 40).")
    parser.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--shift", type=float, default=None, help="Override the scheduler's shift.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", default=None, help="Also write the JSON report to this file.")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    if args.shift is not None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=args.shift)
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)

    rng = np.random.default_rng(args.seed)
    trained_all = training_combinations()
    trained = [trained_all[int(i)] for i in rng.choice(len(trained_all), size=min(args.n_trained, len(trained_all)), replace=False)]
    held_out = held_out_combinations()[: args.n_held_out]

    start = time.time()
    report: dict = {
        "model": args.model,
        "settings": {**settings, "shift": float(pipe.scheduler.config.shift), "seed": args.seed},
        "trained": attribute_accuracy(pipe, trained, seed=args.seed, **settings),
        "held_out": attribute_accuracy(pipe, held_out, seed=args.seed + 100_000, **settings),
    }
    if args.pairs > 0:
        report["one_attribute_edits"] = one_attribute_edits(pipe, trained, args.pairs, seed=args.seed, **settings)
    report["seconds"] = round(time.time() - start, 1)

    header = "| split | n | " + " | ".join(ATTRIBUTES) + " | all five |"
    lines = [header, "|" + "---|" * (len(ATTRIBUTES) + 3)]
    for split in ("trained", "held_out"):
        r = report[split]
        cells = " | ".join(f"{100 * r['per_attribute'][a]:.1f}%" for a in ATTRIBUTES)
        lines.append(f"| {split.replace('_', '-')} | {r['n']} | {cells} | {100 * r['all_five']:.1f}% |")
    if "one_attribute_edits" in report:
        edits = report["one_attribute_edits"]
        lines.append("")
        lines.append("| one-attribute edit (same seed) | " + " | ".join(ATTRIBUTES) + " |")
        lines.append("|" + "---|" * (len(ATTRIBUTES) + 1))
        lines.append("| only that attribute changed | " + " | ".join(f"{100 * edits[a]['only_that_changed']:.1f}%" for a in ATTRIBUTES) + " |")
        lines.append("| edited attribute reached | " + " | ".join(f"{100 * edits[a]['target_reached']:.1f}%" for a in ATTRIBUTES) + " |")
    print("\n".join(lines), file=sys.stderr)
    document = json.dumps(report, indent=2)
    print(document)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            handle.write(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

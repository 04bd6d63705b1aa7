"""Quality of the toy model, read by the shapes-world oracle: one-object and two-object tables.

One object: the canonical caption of random trained combinations and of the held-out ones
(each held-out combination with ``--held-out-seeds`` seeds, so n >= 300), per-attribute and
all-five accuracy, and same-seed one-attribute edits. Two objects (world v2): the canonical
two-object caption of random trained and held-out pairs, per-attribute accuracy over both
objects, both-objects-entirely-right, binding errors (attributes swapped between the objects),
and same-seed edits of one attribute of one object. Seeds are ``--seed + i`` per image; prints
Markdown tables on stderr and the JSON report on stdout.

Usage::

    python benchmarks/toy_quality.py                       # shipped model, n = 300 / 320 / 300 / 300
    python benchmarks/toy_quality.py --model /work/toy2_train/pipeline --json-out /tmp/q.json
    python benchmarks/toy_quality.py --n-trained 96 --held-out-seeds 1 --n-two 96 --pairs 0 --two-pairs 0   # quick
    python benchmarks/toy_quality.py --checkpoint /work/toy2_train/checkpoint.pt   # EMA of a run in progress
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _sample(pool: list, n: int, rng: np.random.Generator) -> list:
    return [
        pool[int(i)]
        for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    ]


def _tables(report: dict) -> str:
    from latentlens.shapes import ATTRIBUTES, OBJECT_ATTRIBUTES

    lines = [
        "One object (canonical captions):",
        "",
        "| split | n | " + " | ".join(ATTRIBUTES) + " | all five |",
    ]
    lines.append("|" + "---|" * (len(ATTRIBUTES) + 3))
    for split in ("trained", "held_out"):
        r = report[split]
        cells = " | ".join(f"{100 * r['per_attribute'][a]:.1f}%" for a in ATTRIBUTES)
        lines.append(
            f"| {split.replace('_', '-')} | {r['n']} | {cells} | {100 * r['all_five']:.1f}% |"
        )
    if "one_attribute_edits" in report:
        edits = report["one_attribute_edits"]
        lines += [
            "",
            "| one-attribute edit (same seed) | " + " | ".join(ATTRIBUTES) + " |",
        ]
        lines.append("|" + "---|" * (len(ATTRIBUTES) + 1))
        lines.append(
            "| only that attribute changed | "
            + " | ".join(
                f"{100 * edits[a]['only_that_changed']:.1f}%" for a in ATTRIBUTES
            )
            + " |"
        )
        lines.append(
            "| edited attribute reached | "
            + " | ".join(f"{100 * edits[a]['target_reached']:.1f}%" for a in ATTRIBUTES)
            + " |"
        )
    if "two_trained" in report:
        lines += [
            "",
            "Two objects ("
            + (
                "canonical two-object captions"
                if report.get("two_template") is None
                else f"two-object template {report['two_template']}"
            )
            + "; per attribute = mean over both objects):",
            "",
        ]
        lines.append(
            "| split | n | "
            + " | ".join(ATTRIBUTES)
            + " | both entirely right | any binding error | "
            + " | ".join(f"{a} swapped" for a in OBJECT_ATTRIBUTES)
            + " |"
        )
        lines.append("|" + "---|" * (len(ATTRIBUTES) + 4 + len(OBJECT_ATTRIBUTES)))
        for split in ("two_trained", "two_held_out"):
            r = report[split]
            cells = " | ".join(
                f"{100 * r['per_attribute'][a]:.1f}%" for a in ATTRIBUTES
            )
            swaps = " | ".join(
                f"{100 * r['binding_errors'][a]:.1f}%" for a in OBJECT_ATTRIBUTES
            )
            name = split.replace("two_", "").replace("_", "-")
            lines.append(
                f"| {name} | {r['n']} | {cells} | {100 * r['both_right']:.1f}% | {100 * r['any_binding_error']:.1f}% | {swaps} |"
            )
    if "two_object_edits" in report:
        edits = report["two_object_edits"]
        lines += [
            "",
            "| one attribute of one object edited (same seed) | n | only that changed | reached | other object kept |",
        ]
        lines.append("|---|---|---|---|---|")
        for a in OBJECT_ATTRIBUTES:
            e = edits[a]
            lines.append(
                f"| {a} | {e['n']} | {100 * e['only_that_changed']:.1f}% | {100 * e['target_reached']:.1f}% | {100 * e['other_object_kept']:.1f}% |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentlens.models import load_pipeline
    from latentlens.shapes import (
        held_out_combinations,
        training_combinations,
        two_object_held_out_combinations,
        two_object_training_combinations,
    )
    from latentlens.toy.evaluate import (
        attribute_accuracy,
        one_attribute_edits,
        two_object_accuracy,
        two_object_edits,
    )
    from latentlens.toy.pipeline import (
        DEFAULT_GUIDANCE_SCALE,
        DEFAULT_NUM_INFERENCE_STEPS,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="toy", help="'toy' or a pipeline folder (default: toy)."
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="A train-toy checkpoint.pt: its EMA weights are exported to a temporary folder and measured (overrides --model).",
    )
    parser.add_argument(
        "--n-trained",
        type=int,
        default=300,
        help="Trained one-object combinations (default 300).",
    )
    parser.add_argument(
        "--n-held-out",
        type=int,
        default=80,
        help="Held-out one-object combinations (default 80, all).",
    )
    parser.add_argument(
        "--held-out-seeds",
        type=int,
        default=4,
        help="Seeds per held-out combination (default 4: n = 320).",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=40,
        help="One-object one-attribute-edit pairs per attribute (default 40).",
    )
    parser.add_argument(
        "--n-two",
        type=int,
        default=300,
        help="Two-object scenes per split, trained and held-out (default 300; 0 skips).",
    )
    parser.add_argument(
        "--two-pairs",
        type=int,
        default=60,
        help="Two-object one-attribute-edit pairs per attribute (default 60).",
    )
    parser.add_argument(
        "--two-template",
        type=int,
        default=None,
        help="Caption template of the two-object tables (default: the canonical one, 0; 1 names the "
        "right/bottom object first; see latentlens.shapes.TWO_OBJECT_TEMPLATES).",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument(
        "--shift", type=float, default=None, help="Override the scheduler's shift."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--json-out", default=None, help="Also write the JSON report to this file."
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    step = None
    if args.checkpoint:
        import tempfile

        from latentlens.toy.train import export_checkpoint

        step = int(
            torch.load(args.checkpoint, map_location="cpu", weights_only=False)["step"]
        )
        args.model = str(
            export_checkpoint(args.checkpoint, tempfile.mkdtemp(prefix="toy_quality_"))
        )
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.shift is not None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, shift=args.shift
        )
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)

    rng = np.random.default_rng(args.seed)
    trained = _sample(training_combinations(), args.n_trained, rng)
    held_out = held_out_combinations()[: args.n_held_out] * max(args.held_out_seeds, 1)

    start = time.time()
    report: dict = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "checkpoint_step": step,
        "settings": {
            **settings,
            "shift": float(pipe.scheduler.config.shift),
            "seed": args.seed,
        },
        "trained": attribute_accuracy(pipe, trained, seed=args.seed, **settings),
        "held_out": attribute_accuracy(
            pipe, held_out, seed=args.seed + 100_000, **settings
        ),
    }
    if args.pairs > 0:
        report["one_attribute_edits"] = one_attribute_edits(
            pipe, trained, args.pairs, seed=args.seed, **settings
        )
    if args.n_two > 0:
        two_trained = _sample(two_object_training_combinations(), args.n_two, rng)
        two_held = _sample(two_object_held_out_combinations(), args.n_two, rng)
        report["two_template"] = args.two_template
        report["two_trained"] = two_object_accuracy(
            pipe, two_trained, seed=args.seed + 200_000, template=args.two_template, **settings
        )
        report["two_held_out"] = two_object_accuracy(
            pipe, two_held, seed=args.seed + 300_000, template=args.two_template, **settings
        )
        if args.two_pairs > 0:
            report["two_object_edits"] = two_object_edits(
                pipe, two_trained, args.two_pairs, seed=args.seed, **settings
            )
    report["seconds"] = round(time.time() - start, 1)

    print(_tables(report), file=sys.stderr)
    document = json.dumps(report, indent=2)
    print(document)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            handle.write(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

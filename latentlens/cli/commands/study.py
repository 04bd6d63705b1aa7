"""``latentlens study``: the paper's three claims measured on several toy models, with verdicts.

Example::

    $ latentlens study --models toy,toy-pixart,toy-unet --out runs/study --n 200
    $ latentlens study --models toy,/path/to/saved/toy/pipeline --out runs/quick --n 10 --json
"""

from __future__ import annotations

import argparse
import sys

NAME = "study"
HELP = (
    "Record, probe and edit several shapes-world models on the same prompts and seeds; write findings.md "
    "(tables, figures, 95 % intervals) and findings.json with a verdict per claim."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        required=True,
        help="Comma-separated models: toy, toy-pixart, toy-unet or folders holding a saved toy pipeline.",
    )
    parser.add_argument("--out", required=True, help="The study folder (new, empty, or a previous study's).")
    parser.add_argument(
        "--n", type=int, default=200, help="Edits per model, cycling the five attributes (default 200)."
    )
    parser.add_argument(
        "--probe-samples", type=int, default=None, help="Prompts recorded for the probes (default: max(2 n, 50))."
    )
    parser.add_argument(
        "--two-object-pairs",
        type=int,
        default=None,
        help="Two-object prompt edits per object attribute (default: max(n // 3, 2); 0 skips them).",
    )
    parser.add_argument(
        "--num-inference-steps", type=int, default=None, metavar="N", help="Denoising steps (default: the model's)."
    )
    parser.add_argument("--json", action="store_true", help="Print findings.json on stdout.")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this study (defaults left out)."""
    parts = ["latentlens study", f"--models {args.models}", f"--out {args.out}", f"--n {args.n}"]
    for option in ("probe_samples", "two_object_pairs", "num_inference_steps"):
        value = getattr(args, option)
        if value is not None:
            parts.append(f"--{option.replace('_', '-')} {value}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from latentlens.cli import print_json
    from latentlens.study import run_study

    models = [m for m in str(args.models).split(",") if m.strip()]
    findings = run_study(
        models, args.out, n=args.n, probe_samples=args.probe_samples, two_object_pairs=args.two_object_pairs,
        num_inference_steps=args.num_inference_steps, command=_command(args), quiet=args.json,
    )  # fmt: skip
    if args.json:
        print_json(findings)
    else:
        for claim in ("claim1", "claim2", "claim3", "dit_vs_unet"):
            print(f"{claim}: {findings['verdicts'][claim]['verdict']}")
        print(f"Findings written to {args.out}/findings.md and findings.json.", file=sys.stderr)
    return 0

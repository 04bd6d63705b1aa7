"""``latentlens patch-grid``: activation patching per (site, step) from source prompts into base prompts.

The grid is saved in ``OUT/analysis/patching/NAME/`` (``latentlens.load_results(OUT)`` and the
dashboard's /causal page read it; give a recorded run folder as OUT to see it beside that run's
probe grid). With ``--json`` one document is printed:
``{"metric", "cells": [{"site", "step": <int or "all">, "effect", "ci": [lo, hi], "oracle_flip"}], "n"}``.

Example::

    $ latentlens patch-grid --model toy --attribute color --from red --to blue --n 20 \\
        --sites 'blocks.*.resid_out.*' --out runs/shapes --json
    $ latentlens patch-grid --pairs pairs.jsonl --sites 'blocks.*.resid_out.txt' --tokens red --out grids
    $ latentlens patch-grid --attribute color --from red --to blue --n 20 --ablate runs/shapes/analysis/directions/color/red --out grids
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentlens.errors import ConfigError, StoreError

NAME = "patch-grid"
HELP = "Activation patching grid (site x step) from source into base prompts; saved for load_results and /causal."


def _column(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step index or 'all'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options

    parser.add_argument(
        "--model",
        default="toy",
        help=MODEL_HELP,
    )
    add_device_options(parser)
    parser.add_argument(
        "--pairs",
        metavar="PAIRS.jsonl",
        help='one {"base": ..., "source": ..., "seed": N} per line (optional "attribute", '
        '"base_value", "source_value" let the shapes oracle judge each patch).',
    )
    parser.add_argument(
        "--attribute",
        help="shapes world: build the pairs; the attribute changed (e.g. color).",
    )
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="VALUE",
        help="shapes world: the base prompts' value (e.g. red).",
    )
    parser.add_argument(
        "--to",
        metavar="VALUE",
        help="shapes world: the source prompts' value (e.g. blue).",
    )
    parser.add_argument("--n", type=int, default=20, help="shapes world: number of pairs (default 20).")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="shapes world: which combinations and noise seeds (default 0).",
    )
    parser.add_argument(
        "--sites",
        nargs="+",
        default=["blocks.*.resid_out.*"],
        metavar="GLOB",
        help="patchable sites, names or globs (default 'blocks.*.resid_out.*').",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        type=_column,
        default=None,
        metavar="STEP",
        help="grid columns: step indices and/or 'all' (default: every step and 'all').",
    )
    parser.add_argument(
        "--tokens",
        nargs="+",
        default=None,
        metavar="WORD",
        help="patch only the text tokens of these words (text-stream sites; base and source must "
        "tokenize to the same layout).",
    )
    parser.add_argument(
        "--ablate",
        metavar="DIRECTION",
        help="instead of patching, project this saved direction (path without .json) out of its site.",
    )
    parser.add_argument(
        "--metric",
        choices=("rms", "mae"),
        default="rms",
        help="pixel distance (default rms).",
    )
    parser.add_argument(
        "--inference-steps",
        type=int,
        default=None,
        metavar="N",
        help="denoising steps of every run (default: the model's default).",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=20,
        help="pairs per pipeline call (default 20).",
    )
    parser.add_argument(
        "--keep-images",
        type=int,
        default=4,
        metavar="K",
        help="patched images kept per cell, of the first K pairs (default 4; the dashboard shows them).",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="grid name (default e.g. color_red_blue, or 'grid').",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder the grid is saved in (DIR/analysis/patching/NAME).",
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads.")
    parser.add_argument("--json", action="store_true", help="print one JSON document with the cells.")


def _pairs(args: argparse.Namespace) -> list:
    from latentlens.analysis.patching import load_pairs, shapes_pairs

    world = [args.attribute, args.from_, args.to]
    if args.pairs and any(v is not None for v in world):
        raise ConfigError("Give either --pairs FILE or --attribute/--from/--to (shapes world), not both.")
    if args.pairs:
        return load_pairs(args.pairs)
    if any(v is None for v in world):
        raise ConfigError(
            "Give --pairs PAIRS.jsonl, or --attribute, --from and --to (with --n) to build "
            "shapes-world pairs, e.g. --attribute color --from red --to blue --n 20."
        )
    return shapes_pairs(args.attribute, args.from_, args.to, n=args.n, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from latentlens.cli import print_json
    from latentlens.cli.options import model_dtype, resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, but a folder is needed; give a folder path.")
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: give at least 1 pair.")
    pairs = _pairs(args)
    device = resolve_device(args.device)
    direction = None
    if args.ablate:
        from latentlens.direction import Direction

        if args.tokens:
            raise ConfigError("--tokens applies to patching; an ablation uses the direction's own tokens.")
        direction = Direction.load(args.ablate)
    import torch

    import latentlens
    from latentlens.analysis.patching import ablate_direction, patch_grid

    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    pipe = latentlens.load_pipeline(args.model, device=device, torch_dtype=model_dtype(args.model_dtype))
    common = {
        "metric": args.metric,
        "num_inference_steps": args.inference_steps,
        "batch_size": args.batch_size,
        "keep_images": args.keep_images,
    }
    if direction is not None:
        grid = ablate_direction(pipe, pairs, direction, steps=args.steps or ["all"], **common)
    else:

        def progress(done: int, total: int) -> None:
            if not args.json and (done == total or done % max(1, total // 20) < len(pairs)):
                print(
                    f"patch-grid: {done}/{total} patched images",
                    file=sys.stderr,
                    flush=True,
                )

        grid = patch_grid(
            pipe,
            pairs,
            sites=args.sites,
            steps=args.steps,
            tokens=args.tokens,
            progress=progress,
            **common,
        )
    folder = grid.save(out, args.name)
    if args.json:
        print_json({**grid.to_json(), "saved": str(folder)})
        return 0
    print(f"{'site':<28} {'step':>4} {'effect':>8} {'95% CI':>17} {'oracle':>7}")
    for cell in grid.cells():
        flip = "" if cell["oracle_flip"] is None else f"{cell['oracle_flip']:.2f}"
        print(
            f"{cell['site']:<28} {cell['step']!s:>4} {cell['effect']:>8.3f} "
            f"  [{cell['ci'][0]:.3f}, {cell['ci'][1]:.3f}] {flip:>7}"
        )
    print(f"{grid.n} pairs; grid saved to {folder}.")
    return 0

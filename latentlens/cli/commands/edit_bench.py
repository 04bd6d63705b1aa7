"""``latentlens edit-bench``: the shapes-world edit benchmark (EMS, ablations, baselines).

Example::

    $ latentlens edit-bench --model toy --n 200 --json > bench.json
    $ latentlens edit-bench --model toy --n 20 --methods ems sdedit flowedit --no-sde
    $ latentlens edit-bench --model toy --two-objects --n 150     # one object of two edited, the other kept
    $ latentlens edit-bench --model toy --n 200 --device cuda --model-dtype bfloat16

The protocols are documented in :mod:`latentlens.editor.bench` and :mod:`latentlens.editor.bench_two`.
"""

from __future__ import annotations

import argparse
import sys

from latentlens.errors import ConfigError

NAME = "edit-bench"
HELP = "Run the shapes-world edit benchmark (oracle success, preservation, PSNR, SDE, time) for EMS and baselines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options
    from latentlens.editor.bench import METHODS

    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    add_device_options(parser)
    parser.add_argument(
        "--n",
        type=int,
        default=200,
        help="Number of edits (spread over all five attributes, or three with --two-objects).",
    )
    parser.add_argument(
        "--two-objects",
        action="store_true",
        help="Two-object scenes: edit one attribute of one object; report the other object kept and the leakage "
        "outside the edited object's mask (needs a toy model trained on shapes world v2).",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="Methods to compare.")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the cases and of the source generations "
        "(0: the benchmark; 2 and 3: the dev cases the EMS defaults were tuned on).",
    )
    parser.add_argument(
        "--no-sde",
        action="store_true",
        help="Skip the SDE reconstructions (about half the time; the two-object benchmark has none).",
    )
    parser.add_argument("--batch-size", type=int, default=25, help="Edits per batched model call.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")


def run(args: argparse.Namespace) -> int:
    import torch

    from latentlens.cli import print_json
    from latentlens.cli.options import model_dtype, resolve_device
    from latentlens.editor.bench import run_benchmark
    from latentlens.editor.bench_two import run_two_object_benchmark
    from latentlens.models import load_pipeline

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}.")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    pipe = load_pipeline(args.model, device=device, torch_dtype=model_dtype(args.model_dtype))
    say = lambda msg: print(msg, file=sys.stderr)
    if args.two_objects:
        two = run_two_object_benchmark(
            pipe, n=args.n, methods=args.methods, seed=args.seed, batch_size=args.batch_size, progress=say
        )
        if args.json:
            print_json(two.to_dict())
        else:
            print(two.table())
            print(f"\nsources whose oracle reading matches their prompt: {two.sources_matching_prompt:.1%}")
        return 0
    result = run_benchmark(
        pipe,
        n=args.n,
        methods=args.methods,
        seed=args.seed,
        batch_size=args.batch_size,
        sde=not args.no_sde,
        progress=say,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.table())
        print(f"\nsources whose oracle reading matches their prompt: {result.sources_matching_prompt:.1%}")
    return 0

"""``latentlens train-toy``: train a toy model (MM-DiT, PixArt or UNet) on the shapes world (seeded, resumable).

Example::

    $ latentlens train-toy --out /work/toy_train --steps 8000 --seed 0 --threads 1
    $ latentlens train-toy --out /work/toy_train --steps 8000 --seed 0 --threads 1   # resumes
    $ latentlens train-toy --world v2 --out /work/toy2_train --seed 0 --threads 1    # one + two objects
    $ latentlens train-toy --arch pixart --world v2 --out runs/train-toy-pixart --device cuda --install
"""

from __future__ import annotations

import argparse
import sys

NAME = "train-toy"
HELP = (
    "Train a toy model on the shapes world (--arch mmdit: the bundled toy MM-DiT, pixart, unet; rectified flow, "
    "seeded, resumable; v2 takes hours on one CPU core, minutes on a GPU)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.toy.train import TrainConfig

    from latentlens.toy.architectures import ARCHITECTURES

    defaults = TrainConfig()
    parser.add_argument("--out", required=True, help="Folder for checkpoint, loss log and the trained pipeline.")
    parser.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        default="mmdit",
        help="Denoiser: mmdit (SD3Transformer2DModel, the bundled 'toy'), pixart (PixArtTransformer2DModel, "
        "'toy-pixart') or unet (UNet2DConditionModel, 'toy-unet'); sizes as planned in docs/toy_models.md. "
        "Default mmdit.",
    )
    parser.add_argument(
        "--device", default=None, help="Where to train: cpu (default) or cuda; a run may resume on another device."
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="After training, install the EMA weights (fp16, with SHA256SUMS) as the bundled weights of --arch "
        "(latentlens/toy/weights, weights-pixart or weights-unet), so --model toy|toy-pixart|toy-unet loads them.",
    )
    parser.add_argument(
        "--world",
        choices=("v1", "v2"),
        default="v1",
        help="Shapes world and recipe: v1 = one object (the shipped model's), v2 = one- and two-object scenes "
        "(sizes and schedule as in the model card). Default v1.",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"Total optimiser steps (default: the world's, v1 {defaults.steps})."
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"Images per step (default: the world's, v1 {defaults.batch_size}).",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"Random seed (default {defaults.seed}).")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Require a checkpoint in --out and continue it (without this flag a matching checkpoint is continued too).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads for torch (default {defaults.num_threads}; 1 is faster on a heavily shared machine).",
    )
    parser.add_argument("--json", action="store_true", help="Print a JSON summary on stdout.")


def run(args: argparse.Namespace) -> int:
    from latentlens.cli import print_json
    from latentlens.toy.train import TrainConfig, train_toy

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "num_threads": args.threads, "device": args.device}
    config = TrainConfig.for_world(
        args.world, arch=args.arch, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None}
    )
    result = train_toy(config, args.out, resume=args.resume, progress=True)
    if args.install:
        from latentlens.toy.train import install_checkpoint

        result["installed"] = str(install_checkpoint(result["checkpoint"]))
        print(f"Installed the EMA weights in {result['installed']}.", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(
            f"Trained {result['steps']} steps in {result['seconds_total']:.0f} s; "
            f"pipeline saved to {result['pipeline_dir']} (loss log {result['loss_log']}).",
            file=sys.stderr,
        )
    return 0

"""``latentlens sae RUN_DIR --site SITE``: train a TopK sparse autoencoder on one site and check its features.

Writes ``RUN_DIR/analysis/sae/<site>/`` (the SAE as safetensors + JSON, per-feature statistics for the
dashboard's /features page) and the best-aligned features as directions under
``RUN_DIR/analysis/directions/sae/<site>/``. Prints the fraction of variance unexplained on held-out
samples, the dead-feature fraction, the mean L0 and, when the run has labels, each attribute value's
best single feature (held-out F1 at sample level, token-level IoU with the object mask).
With ``--json`` one document: ``{"fvu", "dead_fraction", "l0", "alignment": {"color=red": {"feature", "f1",
"iou", ...}}, ...}``.

Example::

    latentlens sae runs/shapes --site blocks.0.resid_in.txt --steps 0 --features 256 --k 8 --json
"""

from __future__ import annotations

import argparse

NAME = "sae"
HELP = "Train a sparse autoencoder on one site of a run; report FVU, dead features, L0 and ground-truth alignment."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `latentlens record`.")
    parser.add_argument("--site", required=True, help="the recorded site to train on, e.g. blocks.3.resid_out.img.")
    parser.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=None,
        metavar="STEP",
        help="denoising steps whose token rows are used (default: every recorded step).",
    )
    parser.add_argument("--features", type=int, default=256, metavar="F", help="dictionary size (default 256).")
    parser.add_argument("--k", type=int, default=8, help="active features per token row (TopK; default 8).")
    parser.add_argument("--epochs", type=int, default=3, metavar="E", help="passes over the training rows (default 3).")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Adam step (default 256).")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3).")
    parser.add_argument(
        "--aux-k",
        type=int,
        default=None,
        help="dead features the auxiliary loss may use per row (default: half the site's width).",
    )
    align = parser.add_mutually_exclusive_group()
    align.add_argument(
        "--alignment",
        dest="alignment",
        action="store_true",
        default=None,
        help="require ground-truth alignment (an error if the run has no labels).",
    )
    align.add_argument(
        "--no-alignment",
        dest="alignment",
        action="store_false",
        help="skip the alignment (default: align when the run has labels).",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu).")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's).")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation, shuffling and held-out split.")
    parser.add_argument("--json", action="store_true", help="print one JSON document with the results.")


def run(args: argparse.Namespace) -> int:
    from latentlens.analysis.sae_run import F1_GOAL, train_run_sae
    from latentlens.cli import print_json

    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads))
    summary = train_run_sae(
        args.run_dir,
        args.site,
        steps=args.steps,
        n_features=args.features,
        k=args.k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        aux_k=args.aux_k,
        alignment=args.alignment,
        device=args.device,
        seed=args.seed,
        quiet=args.json,
    )
    if args.json:
        print_json(summary)
        return 0
    rows = summary["rows"]
    print(
        f"SAE {summary['n_features']} features, k={summary['k']} at {summary['site']} (steps "
        f"{', '.join(map(str, summary['steps']))}): {rows['trained']:,} training rows, {rows['held_out']:,} held-out rows, "
        f"{summary['seconds']['total']:.1f} s."
    )
    print(
        f"held-out FVU {summary['fvu']:.4f} · dead features {summary['dead_fraction']:.1%} · mean L0 {summary['l0']:.2f}"
    )
    if summary["alignment"]:
        print(f"{'attribute=value':<22} {'feature':>7} {'F1':>6} {'precision':>9} {'recall':>6} {'IoU':>6}")
        for name, r in summary["alignment"].items():
            iou = "-" if r["iou"] is None else f"{r['iou']:.3f}"
            print(f"{name:<22} {r['feature']:>7} {r['f1']:>6.3f} {r['precision']:>9.3f} {r['recall']:>6.3f} {iou:>6}")
        s = summary["alignment_summary"]
        print(f"{s[f'f1_at_least_{F1_GOAL}']} of {s['values']} values have a feature with F1 >= {F1_GOAL}.")
    if summary.get("iou_note"):
        print(f"IoU unavailable: {summary['iou_note']}")
    if summary.get("paths"):
        print(f"Results written to {summary['paths']['folder']}/.")
    return 0

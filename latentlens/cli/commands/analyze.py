"""``latentlens analyze RUN_DIR``: probe grid, PCA, embeddings, directions and cosine matrix of a run.

Results go to ``RUN_DIR/analysis/`` (read by the dashboard and :mod:`latentlens.results`).
With ``--json`` one JSON document is printed: the best probe cell per attribute and stream
(``{"probes": [{"attribute", "stream", "site", "step", "accuracy", ...}], ...}``).

Example::

    latentlens analyze runs/shapes --json
    latentlens analyze runs/shapes --sites 'blocks.*.resid_out.img' --steps 4 8
"""

from __future__ import annotations

import argparse
import sys

NAME = "analyze"
HELP = "Fit probes, PCA and directions on a recorded run; results go to RUN_DIR/analysis/."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `latentlens record`.")
    parser.add_argument(
        "--sites",
        nargs="+",
        default=None,
        metavar="SITE",
        help="sites to analyse (names or globs; default: every recorded activation site).",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=None,
        metavar="STEP",
        help="denoising steps to analyse (default: every recorded step).",
    )
    parser.add_argument(
        "--attributes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="labels to probe (default: every label of the run).",
    )
    parser.add_argument(
        "--features",
        choices=("mean", "mean+grid"),
        default="mean",
        help="per-sample features: token mean (default) or token mean + 2x2 spatial means.",
    )
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the probes (default 1.0).")
    parser.add_argument(
        "--max-features",
        type=int,
        default=64,
        metavar="K",
        help="project wider cells on their top K principal components before probing (default 64; 0 = off).",
    )
    parser.add_argument(
        "--umap",
        choices=("best", "all", "none"),
        default="best",
        help="which cells get a 2-D UMAP embedding (default: the best probe cells).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads for the fit (default: torch's; 1 is faster on a busy machine).",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and control task.")
    parser.add_argument(
        "--max-read-mb",
        type=float,
        default=256,
        metavar="MB",
        help="raw activations read at once, in MiB (default 256); the run is streamed, so "
        "runs larger than memory can be analysed.",
    )
    parser.add_argument(
        "--validate",
        type=int,
        default=16,
        metavar="N",
        help="steer up to N of the run's samples with every saved direction and store the measured edit "
        "effect with it (default 16; 0 skips; runs without a loadable model skip it). In the shapes world a "
        "direction's check stops once it provably misses the edit goal (90 %% success, 90 %% kept); each "
        "direction's report states the samples it used.",
    )
    parser.add_argument(
        "--validate-full",
        action="store_true",
        help="steer all N samples with every direction at every alpha (no early stop; about 3x the time).",
    )
    parser.add_argument(
        "--validate-only",
        nargs="+",
        metavar="GLOB",
        default=None,
        help="validate only the directions whose names match one of these globs, e.g. 'edit/color/*' "
        "(default: every saved direction; the others are saved unvalidated).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document with the results.")


def _read_bytes(mb: float) -> int:
    if not mb > 0:
        from latentlens.errors import ConfigError

        raise ConfigError(f"--max-read-mb must be a positive number of MiB, got {mb}.")
    return int(mb * 2**20)


def run(args: argparse.Namespace) -> int:
    from latentlens.analysis.run import analyze_run
    from latentlens.cli import print_json

    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads))
    summary = analyze_run(
        args.run_dir,
        sites=args.sites,
        steps=args.steps,
        attributes=args.attributes,
        features=args.features,
        C=args.C,
        max_features=args.max_features or None,
        umap=args.umap,
        random_state=args.seed,
        quiet=False,
        max_read_bytes=_read_bytes(args.max_read_mb),
        validate=max(0, args.validate),
        validate_early_stop=not args.validate_full,
        validate_only=args.validate_only,
    )
    if args.json:
        print_json(summary)
        return 0
    print(
        f"Analysed {summary['samples']} samples of {summary['run']} "
        f"({len(summary['sites'])} sites x {len(summary['steps'])} steps) in {summary['seconds']['total']:.1f} s."
    )
    if summary["probes"]:
        print(
            f"{'attribute':<12} {'stream':<6} {'site':<28} {'step':>4} {'accuracy':>9} {'95% CI':>15} {'selectivity':>11}"
        )
        for p in summary["probes"]:
            print(
                f"{p['attribute']:<12} {p['stream']:<6} {p['site']:<28} {p['step']:>4} {p['accuracy']:>9.3f} "
                f"  [{p['ci_low']:.3f}, {p['ci_high']:.3f}] {p['selectivity']:>11.3f}"
            )
    elif summary.get("note"):
        print(summary["note"])
    for cell in summary["nan_cells"]:
        print(
            f"warning: NaN/inf values at site {cell['site']} step {cell['step']} ({cell['nan_count']} values).",
            file=sys.stderr,
        )
    for r in (summary.get("direction_effects") or [])[:5]:
        kept = "" if r.get("kept") is None else f", others kept >= {min(r['kept'].values()):.2f}"
        success = "" if r.get("success") is None else f", edits {r['success']:.2f}"
        print(f"direction {r['name']:<28} score {r['score']:.3f}{success}{kept} (n {r['n']}, alpha {r['alpha']:g})")
    targets = (summary.get("validation") or {}).get("targets") or {}
    for attribute, by_target in targets.items():
        for to, t in by_target.items():
            print(
                f"edit toward {attribute}={to:<10} from each sample's own {attribute}: edits {t['success']:.2f}, "
                f"others kept >= {min(t['kept'].values()):.2f} (n {t['n']} over {t['pairs']} from-to directions)"
                + ("" if t["meets_goal"] else f"; weakest from {t['weakest']['from']}")
            )
    print(f"Results written to {summary['run']}/analysis/.")
    return 0

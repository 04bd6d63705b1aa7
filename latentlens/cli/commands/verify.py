"""``latentlens verify RUN_DIR``: check a run's journal, metadata and every finished sample's data.

Chunk files of the wrong size and data that differs from the checksum written with it
are reported per sample; exit status 1 when anything is damaged. The fix is
``latentlens record ... --resume --repair``, which records exactly those samples again.

Example::

    $ latentlens verify runs/shapes
    runs/shapes: 200 finished samples, 24 arrays, all intact (checked sizes and checksums).
"""

from __future__ import annotations

import argparse
import sys

NAME = "verify"
HELP = "Check a recorded run for damaged files and samples (sizes and checksums)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run folder written by `latentlens record`.",
    )
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help="check chunk file sizes only (fast; skips reading the data back).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document.")


def run(args: argparse.Namespace) -> int:
    from latentlens.analysis.run import open_analysable_run

    store = open_analysable_run(args.run_dir)
    report = store.verify(checksums=not args.sizes_only)
    if args.json:
        from latentlens.cli import print_json

        print_json(
            {
                "run": str(args.run_dir),
                "samples": len(store.completed),
                "arrays": len(store.names),
                "ok": report.ok,
                "damaged": {str(k): v for k, v in sorted(report.damaged.items())},
            }
        )
    elif report.ok:
        what = "sizes" if args.sizes_only else "sizes and checksums"
        print(
            f"{args.run_dir}: {len(store.completed)} finished samples, {len(store.names)} arrays, all intact "
            f"(checked {what})."
        )
    else:
        print(f"latentlens verify: {report.message()}", file=sys.stderr)
    return 0 if report.ok else 1


__all__ = ["NAME", "HELP", "add_arguments", "run"]

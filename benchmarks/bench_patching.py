"""Patching benchmark (issue 15): the toy MM-DiT's red → blue colour patching grid beside its colour probe grid.

Builds ``n`` shapes-world pairs (a red prompt as base, the same combination in blue as source, one
noise seed per pair), runs :func:`latentlens.analysis.patching.patch_grid` over every block output
(both streams) and block 0's text input, every step and all steps, saves the grid into RUN_DIR
(``RUN_DIR/analysis/patching/color_red_blue``, read by the dashboard's /causal page) and prints
markdown tables: effect and oracle flip per block × column, next to the colour probe accuracy of
the run's analysis (``latentlens analyze RUN_DIR`` first).

Usage::

    python benchmarks/bench_patching.py RUN_DIR --n 16 [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

import latentlens
from latentlens.analysis.patching import patch_grid, shapes_pairs

SITES = ["blocks.0.resid_in.txt", "blocks.*.resid_out.*"]


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table(title: str, rows: list[str], columns: list, values: np.ndarray) -> str:
    lines = [
        f"**{title}**",
        "",
        "| | " + " | ".join(str(c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in zip(rows, values):
        lines.append(f"| {name} | " + " | ".join(_fmt(float(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = latentlens.load_pipeline("toy")
    pairs = shapes_pairs("color", "red", "blue", n=args.n, seed=args.seed)
    started = time.perf_counter()
    grid = patch_grid(
        pipe,
        pairs,
        sites=SITES,
        batch_size=args.n,
        progress=lambda d, t: (
            print(f"{d}/{t}", file=sys.stderr, flush=True)
            if d % (20 * args.n) == 0
            else None
        ),
    )
    seconds = time.perf_counter() - started
    folder = grid.save(args.run_dir)
    res = latentlens.load_results(args.run_dir)
    print(
        f"n = {grid.n} pairs, {len(grid.sites)} sites x {len(grid.columns)} columns in {seconds:.0f} s; saved to {folder}\n"
    )
    for stream in ("img", "txt"):
        blocks, columns, effect, _ = grid.table(stream)
        _, _, flip, _ = grid.table(stream, "oracle_flip")
        print(
            table(
                f"patching effect, {stream} stream (block x step)",
                [f"block {b}" for b in blocks],
                columns,
                effect,
            )
        )
        print(
            table(
                f"oracle reads blue, {stream} stream",
                [f"block {b}" for b in blocks],
                columns,
                flip,
            )
        )
        try:
            pb, ps, acc, _ = res.probe_grid("color", stream)
            print(
                table(
                    f"colour probe accuracy, {stream} stream",
                    [f"block {b}" for b in pb],
                    ps,
                    acc,
                )
            )
        except latentlens.LatentlensError as error:
            print(f"(no probe grid: {error})\n")
    for site in ("blocks.0.resid_in.txt",):
        cell = grid.cell(site, "all")
        print(
            f"{site} @ all: effect {cell['effect']:.3f} [{cell['ci'][0]:.3f}, {cell['ci'][1]:.3f}], "
            f"oracle blue {cell['oracle_flip']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

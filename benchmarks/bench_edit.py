"""The shapes-world edit benchmark (issue 5): EMS vs its ablations vs prompt swap, SDEdit, FlowEdit.

Runs :func:`latentlens.editor.bench.run_benchmark` (protocol in its docstring), prints the
Markdown tables that go into ``benchmarks/RESULTS.md`` and optionally writes the full JSON.

Usage::

    nice -n 10 python benchmarks/bench_edit.py                          # shipped toy model, 200 edits, all methods
    python benchmarks/bench_edit.py --n 20 --methods ems sdedit         # quick look
    python benchmarks/bench_edit.py --model /tmp/toy --json-out /tmp/bench.json --threads 1
    python benchmarks/bench_edit.py --dev --n 200 --methods ems --ems '{"alpha": 1.5}'   # tuning: dev set only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentlens.editor.bench import BENCH_SEED, DEV_SEED, METHODS, run_benchmark
    from latentlens.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="'toy' or a toy pipeline folder (default: toy).")
    parser.add_argument("--n", type=int, default=200, help="Edits (default 200, spread over all five attributes).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=None,
                        help=f"Seed of the cases and source generations (default {BENCH_SEED}: the benchmark).")
    parser.add_argument("--dev", action="store_true",
                        help=f"Use the tuning (dev) set, seed {DEV_SEED}, instead of the benchmark's seed {BENCH_SEED}.")
    parser.add_argument("--no-sde", action="store_true", help="Skip the SDE reconstructions (faster).")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy 2-core box).")
    parser.add_argument("--ems", default="{}", help="JSON dict of EMSEditor overrides (alpha, iterations, rho, ...).")
    parser.add_argument("--baselines", default="{}", help='JSON dict, e.g. {"sdedit": {"strength": 0.5}}.')
    parser.add_argument("--json-out", default=None, help="Write the full result (summary, per attribute, settings) here.")
    args = parser.parse_args(argv)
    if args.dev and args.seed is not None:
        parser.error("--dev and --seed both choose the cases; give one.")
    seed = DEV_SEED if args.dev else (BENCH_SEED if args.seed is None else args.seed)

    torch.set_num_threads(max(1, args.threads))
    pipe = load_pipeline(args.model)
    start = time.time()
    result = run_benchmark(
        pipe, n=args.n, methods=args.methods, seed=seed, batch_size=args.batch_size, sde=not args.no_sde,
        editor_kwargs=json.loads(args.ems), baseline_kwargs=json.loads(args.baselines),
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    wall = time.time() - start
    print(result.table())
    print(f"\nsources whose oracle reading matches their prompt: {result.sources_matching_prompt:.1%}")
    print(f"settings: {json.dumps(result.settings)}")
    print(f"wall time {wall:.0f} s on {platform.processor() or platform.machine()} with {args.threads} torch thread(s)")
    if args.json_out:
        doc = result.to_dict()
        doc["wall_seconds"] = wall
        with open(args.json_out, "w") as handle:
            json.dump(doc, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

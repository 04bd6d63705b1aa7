"""The shapes-world edit benchmark (issue 5): EMS vs its ablations vs prompt swap, SDEdit, FlowEdit.

Runs :func:`latentlens.editor.bench.run_benchmark` (protocol in its docstring), prints the
Markdown tables that go into ``benchmarks/RESULTS.md`` and optionally writes the full JSON.

Usage::

    nice -n 10 python benchmarks/bench_edit.py                          # shipped toy model, 200 edits, all methods
    python benchmarks/bench_edit.py --n 20 --methods ems sdedit         # quick look
    python benchmarks/bench_edit.py --model /tmp/toy --json-out /tmp/bench.json --threads 1
    python benchmarks/bench_edit.py --n 20 --ems '{"degree": 1.5, "iterations": 12}'   # tuning
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentlens.editor.bench import METHODS, run_benchmark
    from latentlens.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="'toy' or a toy pipeline folder (default: toy).")
    parser.add_argument("--n", type=int, default=200, help="Edits (default 200, spread over all five attributes).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy 2-core box).")
    parser.add_argument("--ems", default="{}", help="JSON dict of EMSEditor overrides (degree, iterations, rho, ...).")
    parser.add_argument("--baselines", default="{}", help='JSON dict, e.g. {"sdedit": {"strength": 0.5}}.')
    parser.add_argument("--json-out", default=None, help="Write the full result (summary, per attribute, settings) here.")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    pipe = load_pipeline(args.model)
    start = time.time()
    result = run_benchmark(
        pipe, n=args.n, methods=args.methods, seed=args.seed, batch_size=args.batch_size,
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

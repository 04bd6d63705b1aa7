"""Recording on Ray (issue 13): throughput of 2 workers vs 1, and of 1 Ray worker vs the serial path.

The toy model records ``--prompts`` prompts (default 200, ``--steps`` denoising steps, the default
sites ``blocks.*.resid_out.*``, images saved) three times into fresh run folders:

1. **serial**: :func:`latentlens.runs.record_prompts` in this process (the pipeline loaded before
   the clock starts);
2. **Ray, 1 worker** and 3. **Ray, 2 workers** on a local Ray cluster started once beforehand
   (``num_cpus=2``), one CPU and one torch thread per worker.

Every path uses one torch thread per pipeline. Reported per path: the wall time of the whole call,
the Ray start-up inside it (starting the worker processes, which import torch and build their
pipeline: ``RunResult.startup_seconds``), and the throughput after start-up (prompts / (wall −
start-up)), which is what a long run sees. Goals: 2 workers ≥ 1.7× the throughput of 1; 1 Ray
worker's time per prompt ≤ 1.10× the serial path's. The 2-worker store is checked to be
byte-identical to the serial one.

Usage::

    python benchmarks/bench_ray.py                    # table + JSON on stdout
    python benchmarks/bench_ray.py --prompts 40       # quicker
    python benchmarks/bench_ray.py --update-results   # rewrite the Ray section of RESULTS.md

Both CPU cores must be free for the 2-worker figure to mean anything (see RESULTS.md for how
the figures there were taken).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN = "<!-- ray:begin -->"
END = "<!-- ray:end -->"


def _prompts(n: int) -> list[str]:
    colors = ("red", "green", "blue", "yellow", "purple")
    shapes = ("circle", "square", "triangle", "cross")
    places = ("left", "right", "top", "bottom", "centre")
    out = [f"a {c} {s} at the {p}" for c in colors for s in shapes for p in places]
    return [out[i % len(out)] + ("" if i < len(out) else f", variant {i // len(out)}") for i in range(n)]


def _same(a: Path, b: Path) -> bool:
    from latentlens.store import open_run

    ra, rb = open_run(a), open_run(b)
    if sorted(ra.completed) != sorted(rb.completed) or ra.names != rb.names:
        return False
    return all(np.asarray(ra[n]).tobytes() == np.asarray(rb[n]).tobytes() for n in ra.names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--update-results", action="store_true")
    parser.add_argument("--note", default="", help="how the machine was kept quiet (written to RESULTS.md).")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import ray

    import latentlens
    from latentlens.distributed import connect
    from latentlens.runs import record_prompts

    load_before = os.getloadavg()
    started = time.perf_counter()
    connect("local", num_cpus=2, object_store_memory=200 * 2**20)
    ray_start = time.perf_counter() - started
    pipe = latentlens.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    prompts = _prompts(args.prompts)
    common = dict(num_inference_steps=args.steps, batch_size=args.batch_size, progress=False, model_id="toy")
    scratch = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    rows: dict[str, dict[str, float]] = {}
    try:
        for label, extra in (("serial", {}), ("ray_1", {"ray": "local", "workers": 1}),
                             ("ray_2", {"ray": "local", "workers": 2})):
            t0 = time.perf_counter()
            result = record_prompts(pipe, prompts, scratch / label, **common, **extra)
            wall = time.perf_counter() - t0
            startup = result.startup_seconds
            rows[label] = {"wall_s": round(wall, 2), "startup_s": round(startup, 2),
                           "prompts_per_s": round(len(prompts) / (wall - startup), 3),
                           "prompts_per_s_end_to_end": round(len(prompts) / wall, 3),
                           "retried": result.retried}
            print(f"{label}: {rows[label]}", file=sys.stderr, flush=True)
        identical = _same(scratch / "serial", scratch / "ray_2")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ray.shutdown()
    load_after = os.getloadavg()
    s, r1, r2 = rows["serial"], rows["ray_1"], rows["ray_2"]
    document = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": "2-core CPU sandbox", "ray": ray.__version__, "prompts": len(prompts), "steps": args.steps,
        "batch_size": args.batch_size, "ray_start_s": round(ray_start, 2), "rows": rows,
        "speedup_2_vs_1": round(r2["prompts_per_s"] / r1["prompts_per_s"], 3),
        "speedup_2_vs_1_end_to_end": round(r1["wall_s"] / r2["wall_s"], 3),
        "ray_1_vs_serial_time": round(s["prompts_per_s"] / r1["prompts_per_s"], 3),
        "ray_1_vs_serial_time_end_to_end": round(r1["wall_s"] / s["wall_s"], 3),
        "ray_2_identical_to_serial": identical,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    table = [
        "| path | wall (s) | Ray start-up in it (s) | prompts/s after start-up | prompts/s end to end |",
        "|---|---|---|---|---|",
    ] + [
        f"| {name} | {row['wall_s']} | {row['startup_s']} | {row['prompts_per_s']} | {row['prompts_per_s_end_to_end']} |"
        for name, row in (("serial (this process)", s), ("Ray, 1 worker", r1), ("Ray, 2 workers", r2))
    ]
    print("\n".join(table))
    print(json.dumps(document, indent=1))
    if args.update_results:
        _update_results(document, table, argv, args.note)
    return 0


def _update_results(doc: dict, table: list[str], argv: list[str] | None, note: str) -> None:
    args = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--note" in args:  # the note is printed below the command, not inside it
        del args[args.index("--note") : args.index("--note") + 2]
    command = "python benchmarks/bench_ray.py " + " ".join(args)
    body = [
        BEGIN,
        "## Recording on Ray (issue 13)",
        "",
        f"`{command.strip()}` — {doc['machine']}, {doc['date']}, Ray {doc['ray']}, toy model, {doc['prompts']} prompts, "
        f"{doc['steps']} steps, batch {doc['batch_size']}, default sites + images, one torch thread per pipeline. "
        f"Load average before / after: {doc['load_average_before']} / {doc['load_average_after']}. "
        f"Starting the local cluster (`ray.init(num_cpus=2)`, before the clock): {doc['ray_start_s']} s."
        + (f" {note}" if note else ""),
        "",
        *table,
        "",
        f"- 2 workers vs 1, throughput after start-up: **{doc['speedup_2_vs_1']}×** (goal ≥ 1.7×); end to end "
        f"{doc['speedup_2_vs_1_end_to_end']}×.",
        f"- Ray with 1 worker vs the serial path, time per prompt after start-up: **{doc['ray_1_vs_serial_time']}×** "
        f"(goal ≤ 1.10×); end to end {doc['ray_1_vs_serial_time_end_to_end']}× (the worker imports torch and "
        "builds its own pipeline, which the serial path had done before the clock).",
        f"- The 2-worker store is byte-identical to the serial one: {doc['ray_2_identical_to_serial']}.",
        "- Throughput per GPU on a device machine: not measured (no GPU was lent to this task).",
        END,
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(body) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())

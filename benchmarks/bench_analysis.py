"""Analysis-layer benchmark (issue 4): the full probe grid and streaming PCA, time and peak memory.

1. **Probe grid**: 5 shapes-world attributes (4/6/2/5/3 classes) × every (block, step, stream)
   cell of the toy model (6 blocks × 20 steps × img/txt; the last SD3 block has no txt output,
   so 6 + 5 = 11 sites × 20 steps = 220 cells) over 1,000 samples of width 192, plus the control
   task, fitted by :class:`latentlens.LinearProbeGrid` in one batched solve. Synthetic features
   with class structure (``--run RUN_DIR`` times a real recorded run instead: feature read and fit
   reported separately). Goal: ≤ 60 s.
2. **Streaming PCA**: 1,000,000 × 1,536 synthetic float32 vectors (rank-64 signal + noise),
   generated batch by batch and fed to :class:`latentlens.StreamingPCA.partial_fit`; never more
   than one batch in memory. Goal: peak memory ≤ 2 GB; time reported. Checked against dense PCA
   of the first 20,000 rows only in the tests (tests/test_analysis_pca.py), not here.

Memory: peak resident set of the process (``VmHWM``, reset through ``/proc/self/clear_refs``
before each measurement), i.e. libraries + data + temporaries, and its increase over the RSS
before the measurement.

Usage::

    python benchmarks/bench_analysis.py                      # both, table + JSON on stdout
    python benchmarks/bench_analysis.py --only grid --run runs/shapes_toy
    python benchmarks/bench_analysis.py --quick              # smaller sizes (smoke test)
    python benchmarks/bench_analysis.py --update-results     # rewrite the analysis section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN = "<!-- analysis:begin -->"
END = "<!-- analysis:end -->"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> int:
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def _load() -> float:
    return os.getloadavg()[0]


def bench_grid(quick: bool, run_dir: str | None, threads: int | None) -> dict:
    from latentlens.analysis.probes import LinearProbeGrid

    if threads:
        torch.set_num_threads(threads)
    result: dict = {"threads": torch.get_num_threads(), "load_before": round(_load(), 2)}
    if run_dir:
        from latentlens.analysis.run import _labels, feature_sites, load_features, open_analysable_run

        run = open_analysable_run(run_dir)
        samples = sorted(run.completed)
        t0 = time.perf_counter()
        features, _ = load_features(run, feature_sites(run), samples)
        result["read_s"] = round(time.perf_counter() - t0, 2)
        labels = _labels(run, samples)
        groups = [run.manifest["prompts"][i] for i in samples]
        result["source"] = f"run {run_dir}"
    else:
        rng = np.random.default_rng(0)
        n, d = (300, 64) if quick else (1000, 192)
        n_blocks, n_steps = (3, 5) if quick else (6, 20)
        classes = {"shape": 4, "color": 6, "size": 2, "position": 5, "background": 3}
        labels = {a: rng.integers(k, size=n) for a, k in classes.items()}
        means = {a: rng.normal(size=(k, d)) for a, k in classes.items()}
        signal = sum(means[a][labels[a]] for a in classes).astype(np.float32)  # [n, d]
        features = {}
        for stream in ("img", "txt"):
            for block in range(n_blocks if stream == "img" else n_blocks - 1):
                for step in range(n_steps):
                    strength = 0.05 + 0.05 * block + 0.01 * step
                    noise = rng.standard_normal((n, d), dtype=np.float32)
                    features[(f"blocks.{block}.resid_out.{stream}", step)] = strength * signal + noise
        groups = None
        result["source"] = f"synthetic n={n} d={d}"
    result["cells"] = len(features)
    result["attributes"] = len(labels)
    result["samples"] = len(next(iter(features.values())))
    result["width"] = int(next(iter(features.values())).shape[1])
    before = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    grid = LinearProbeGrid(random_state=0).fit(features, labels, groups=groups)
    result["fit_s"] = round(time.perf_counter() - t0, 2)
    result["fit_cpu_s"] = round(time.process_time() - c0, 2)
    result["lbfgs_iterations"] = grid.n_iter_
    result["peak_rss_mb"] = round(_status("VmHWM") / 2**20, 1)
    result["peak_delta_mb"] = round((_status("VmHWM") - before) / 2**20, 1)
    result["load_after"] = round(_load(), 2)
    if run_dir:
        result["best"] = [grid.best(a, s) for a in grid.attributes_ for s in ("img", "txt") if grid.best(a, s)]
    return result


def bench_pca(quick: bool, threads: int | None) -> dict:
    from latentlens.analysis.pca import StreamingPCA

    if threads:
        torch.set_num_threads(threads)
    n, d, rank, batch = (100_000, 512, 32, 8192) if quick else (1_000_000, 1536, 64, 16384)
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(rank, d, generator=gen) * torch.linspace(3.0, 0.3, rank).unsqueeze(1)  # [rank, d]
    pca = StreamingPCA(n_components=16, batch_size=batch)
    before = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    gen_s = 0.0
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        g0 = time.perf_counter()
        x = torch.randn(rows, rank, generator=gen) @ basis + torch.randn(rows, d, generator=gen) * 0.5 + 2.0
        gen_s += time.perf_counter() - g0
        pca.partial_fit(x)
        del x
    _ = pca.components_  # the eigendecomposition
    total = time.perf_counter() - t0
    return {
        "rows": n, "dim": d, "batch": batch, "threads": torch.get_num_threads(),
        "total_s": round(total, 1), "generation_s": round(gen_s, 1), "pca_s": round(total - gen_s, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "peak_rss_mb": round(_status("VmHWM") / 2**20, 1),
        "peak_delta_mb": round((_status("VmHWM") - before) / 2**20, 1),
        "top_explained_variance_ratio": [round(float(v), 4) for v in pca.explained_variance_ratio_[:3]],
        "load_avg": round(_load(), 2),
    }


def _table(results: dict) -> str:
    lines = []
    if "grid" in results:
        g = results["grid"]
        lines.append(f"| probe grid ({g['source']}, {g['cells']} cells × {g['attributes']} attributes + control) "
                     f"| {g['fit_s']} s wall, {g['fit_cpu_s']} s CPU, {g['lbfgs_iterations']} L-BFGS iterations"
                     + (f", feature read {g['read_s']} s" if 'read_s' in g else "")
                     + f" | peak RSS {g['peak_rss_mb']} MB (+{g['peak_delta_mb']} MB) | load {g['load_before']}→{g['load_after']} |")
    if "pca" in results:
        p = results["pca"]
        lines.append(f"| streaming PCA {p['rows']:,} × {p['dim']} (batches of {p['batch']}) | {p['total_s']} s wall "
                     f"({p['generation_s']} s generating data, {p['pca_s']} s PCA), {p['cpu_s']} s CPU "
                     f"| peak RSS {p['peak_rss_mb']} MB (+{p['peak_delta_mb']} MB) | load {p['load_avg']} |")
    return "\n".join(lines)


def update_results(results: dict) -> None:
    header = (f"## Analysis layer (issue 4)\n\n"
              f"Measured {_dt.date.today().isoformat()} on the 2-core CPU sandbox ({platform.processor() or platform.machine()}), "
              "shared with other jobs (load average shown; CPU seconds are the less load-sensitive number). "
              "Reproduce: `python benchmarks/bench_analysis.py --update-results`.\n\n"
              "| what | time | memory | machine load |\n|---|---|---|---|\n")
    section = f"{BEGIN}\n{header}{_table(results)}\n{END}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("grid", "pca"), default=None)
    parser.add_argument("--run", default=None, help="time the grid on this recorded run instead of synthetic data.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args()
    results: dict = {}
    if args.only in (None, "grid"):
        results["grid"] = bench_grid(args.quick, args.run, args.threads)
        print(json.dumps({"grid": results["grid"]}, default=str), file=sys.stderr, flush=True)
    if args.only in (None, "pca"):
        results["pca"] = bench_pca(args.quick, args.threads)
    print(json.dumps(results, indent=2, default=str))
    print(_table(results), file=sys.stderr)
    if args.update_results:
        update_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

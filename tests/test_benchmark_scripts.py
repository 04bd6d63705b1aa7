"""Every script under benchmarks/ still imports against the current package and parses --help.

The benchmarks are how RESULTS.md figures are reproduced; a renamed library function must not
leave one broken until someone reruns it (bench_steering.py once imported a moved helper).
Slow tier: the first script to load the model stack pays diffusers' import (~10 s).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _load(script: Path):
    """Import one benchmark script as a module (runs its module level only)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_folder_has_scripts():
    assert len(BENCHMARKS) >= 10, BENCHMARKS


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_and_prints_help(script, monkeypatch, capsys):
    module = _load(script)  # module level only: every script keeps its work under a main guard
    main = getattr(module, "main", None)
    if main is None:
        pytest.fail(f"{script.name} has no main(); the benchmark scripts share that entry point")
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_probing_quick_times_the_store_paths_against_plain(tmp_path):
    """The latents benchmark measures both store paths (written on exit, and the background writer) beside plain."""
    import json

    bench = _load(next(p for p in BENCHMARKS if p.name == "bench_probing.py"))
    out = tmp_path / "report.json"
    assert bench.main(["--quick", "--only", "latents", "--json-out", str(out)]) == 0
    latents = json.loads(out.read_text())["latents"]
    assert set(latents["results"]) == {"plain", "latentlens", "latentlens+store", "nnsight"}
    sequence = latents["write_ahead"]
    assert sequence["recordings_per_sequence"] == 2
    results = sequence["results"]
    assert set(results) == {"plain", "latentlens+store, write-ahead"}
    assert results["plain"]["time_ratio"] == 1.0
    assert results["latentlens+store, write-ahead"]["seconds"] > 0
    lines = bench.verdicts({"latents": latents})
    assert any("background writer" in line for line in lines), lines


@pytest.mark.slow
def test_bench_probing_reports_the_spread_of_its_paired_ratios():
    """With four or more repetitions each paired ratio comes with its quartiles, and the table shows them."""
    bench = _load(next(p for p in BENCHMARKS if p.name == "bench_probing.py"))
    plain = [2.0, 2.2, 1.8, 2.0, 2.1]
    recorded = [2.1, 2.2, 1.9, 2.2, 2.1]  # paired ratios 1.05, 1.0, 1.0556, 1.1, 1.0
    runs = {name: [{"seconds": s, "peak": 1.0, "delta": 0.0} for s in times]
            for name, times in (("plain", plain), ("latentlens", recorded))}
    summary = bench._summary(runs)
    assert summary["latentlens"]["time_ratio_paired"] == pytest.approx(1.05)
    low, high = summary["latentlens"]["time_ratio_paired_quartiles"]
    assert low == pytest.approx(1.0) and high == pytest.approx((1.0556 + 1.1) / 2, abs=1e-3)
    assert bench._paired(summary["latentlens"], "time") == f"1.050 (1.000–{high:.3f})"
    few = bench._summary({name: rs[:2] for name, rs in runs.items()})
    assert "time_ratio_paired_quartiles" not in few["latentlens"] and bench._paired(few["latentlens"], "time") == "1.025"

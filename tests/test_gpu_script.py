"""``benchmarks/gpu.sh --quick``: the GPU benchmark runs end to end on CPU (a smoke of every row)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_quick_runs_every_row_on_cpu(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick", "--models", "sd3-medium", "flux.1-dev",
         "--json-out", str(tmp_path / "report.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| model | variant | time (s) | × plain | peak memory (GiB) | × plain |" in out
    for model in ("sd3-medium-size", "flux.1-dev-size"):
        for variant in ("plain", "latents", "maps", "nnsight"):
            assert any(line.startswith(f"| {model}") and f"| {variant} |" in line for line in out.splitlines()), \
                (model, variant)
    assert "private APIs:" in out
    assert results.read_text() == before, "--quick must not touch RESULTS.md"

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


def test_the_gpu_benchmark_cuts_in_depth_only_when_memory_or_disk_demands_it(tmp_path, monkeypatch):
    """Flux.1-dev's latents are 42 GiB per image at 1024², 28 steps: on a host with 128 GiB they fit; with 40 GiB
    available the single-stream blocks go first, and the label says why."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gpu

    assert round(bench_gpu.latent_bytes("flux.1-dev", None, None, 4096, None, 28) / 2**30) == 42
    monkeypatch.setattr(bench_gpu, "available_host_bytes", lambda: 125 * 2**30)
    monkeypatch.setattr(bench_gpu.shutil, "disk_usage", lambda path: shutil_usage(free=500 * 2**30))
    assert bench_gpu.fit_depth("flux.1-dev", 4096, 28, tmp_path) == (None, None, None)

    monkeypatch.setattr(bench_gpu, "available_host_bytes", lambda: 40 * 2**30)
    layers, single, why = bench_gpu.fit_depth("flux.1-dev", 4096, 28, tmp_path)
    assert layers == 19 and 0 < single < 38 and "host memory" in why
    usable = 0.85 * 40 * 2**30 / bench_gpu.CUDA_RECORDING_HOST_BYTES_PER_BYTE
    assert bench_gpu.latent_bytes("flux.1-dev", layers, single, 4096, None, 28) <= usable
    assert bench_gpu.latent_bytes("flux.1-dev", layers, single + 1, 4096, None, 28) > usable

    monkeypatch.setattr(bench_gpu.shutil, "disk_usage", lambda path: shutil_usage(free=5 * 2**30))
    layers, single, why = bench_gpu.fit_depth("sd3-medium", 4096, 28, tmp_path)
    assert single is None and 0 < layers < 24 and "disk" in why


def shutil_usage(free: int):
    """What ``shutil.disk_usage`` returns, for a disk with ``free`` bytes free."""
    from collections import namedtuple

    return namedtuple("usage", "total used free")(free * 2, free, free)

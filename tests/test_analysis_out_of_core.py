"""Analysis of a run larger than the memory the analysing process may use (RLIMIT_AS in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from latentlens.analysis.run import analyze_run, cell_features, token_features
from latentlens.store import RunStore, open_run

ROOT = Path(__file__).resolve().parents[1]
DIMS = ("sample", "step", "token", "channel")
COLORS, SHAPES = ("red", "blue"), ("circle", "square", "triangle")


def _write_run(path: Path, n: int, tokens: int, channels: int, steps: int = 2, seed: int = 0) -> int:
    """A labelled run of one image site, written 16 samples at a time; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    labels = [{"color": COLORS[i % 2], "shape": SHAPES[(i // 2) % 3]} for i in range(n)]
    manifest = {"model": {"id": "synthetic"}, "prompts": [f"prompt {i}" for i in range(n)],
                "seeds": list(range(n)), "labels": labels, "recording": {"steps": list(range(steps))}}
    store = RunStore.create(path, manifest, samples_per_chunk=16)
    color_dir = rng.normal(size=channels).astype(np.float32)
    shape_dirs = rng.normal(size=(3, channels)).astype(np.float32)
    for start in range(0, n, 16):
        ids = list(range(start, min(start + 16, n)))
        x = rng.normal(size=(len(ids), steps, tokens, channels)).astype(np.float32) * 4  # [sample, step, token, channel]
        for pos, i in enumerate(ids):
            x[pos] += (0.15 if i % 2 else -0.15) * color_dir + 0.15 * shape_dirs[(i // 2) % 3]
        store.write_samples(ids, {"blocks.0.resid_out.img": x}, dims={"blocks.0.resid_out.img": DIMS})
        store.mark_complete(ids, [{"labels": labels[i]} for i in ids])
    store.close()
    return n * steps * tokens * channels * 4


def test_streamed_features_equal_one_read(tmp_path):
    _write_run(tmp_path / "run", n=40, tokens=16, channels=8)
    array = open_run(tmp_path / "run")["blocks.0.resid_out.img"]
    whole = token_features(array[:, 1], "mean+grid")
    for budget in (1, 16 * 8 * 4 * 5, 2**20, None):  # one sample, 5 samples (not whole chunks), all
        np.testing.assert_array_equal(cell_features(array, range(40), 1, "mean+grid", budget), whole)
    picked = [3, 7, 8, 30, 39]
    np.testing.assert_array_equal(cell_features(array, picked, 0, "mean", 100), token_features(array[picked, 0]))


CAPPED = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from latentlens.analysis.run import analyze_run
    small, big, cap, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    analyze_run(small, umap="none", write=False, quiet=True)  # every lazy import and first-use allocation
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap, vm + cap))
    try:
        analyze_run(big, umap="none", write=False, quiet=True, max_read_bytes=None)  # whole cells at once
        whole = "fitted"
    except MemoryError:
        whole = "MemoryError"
    summary = analyze_run(big, umap="none", write=True, quiet=True, max_read_bytes=budget)
    print(json.dumps({"whole_cells": whole, "probes": summary["probes"], "cap": cap}))
""")


@pytest.mark.slow
def test_a_run_larger_than_the_memory_cap_is_analysed_like_in_memory(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    _write_run(small, n=48, tokens=64, channels=64, seed=1)
    size = _write_run(big, n=480, tokens=1024, channels=64)  # 252 MB of activations, 126 MB per (site, step)
    cap = 64 * 2**20  # the analysis may grow the process by 64 MiB: under a third of the run, half a cell
    assert size > 3 * cap
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CAPPED, str(small), str(big), str(cap), str(8 * 2**20)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    capped = json.loads(done.stdout.strip().splitlines()[-1])
    assert capped["whole_cells"] == "MemoryError"  # the cap bites: reading a whole cell does not fit
    reference = analyze_run(big, umap="none", write=False, quiet=True, max_read_bytes=None)  # in memory
    assert len(reference["probes"]) == len(capped["probes"]) == 2
    for got, want in zip(capped["probes"], reference["probes"]):
        assert {k: got[k] for k in ("attribute", "site", "step")} == {k: want[k] for k in ("attribute", "site", "step")}
        for key in ("accuracy", "selectivity", "ci_low", "ci_high"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key  # stated tolerance: 1e-6
        assert want["accuracy"] > 0.8  # the labels are decodable: the comparison is not of chance levels
    pca = json.loads((big / "analysis" / "pca.json").read_text())  # written by the capped process
    ref_pca = analyze_run(big, umap="none", write=False, quiet=True)
    assert ref_pca["samples"] == 480 and len(pca) == 2
    feats = token_features(np.asarray(open_run(big)["blocks.0.resid_out.img"][:, 0]))
    from latentlens.analysis.pca import PCA

    evr = PCA(n_components=10).fit(feats).explained_variance_ratio_
    np.testing.assert_allclose(pca[0]["explained_variance_ratio"], evr, rtol=1e-5, atol=1e-7)

"""Shared test setup: offline, deterministic, small."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One intra-op thread per process: the suite runs subprocesses (CLI runs, notebook kernels,
# a browser) beside pytest on a 2-core machine, and oversubscribed OpenMP threads spin-wait
# (measured: a toy test file 244 s with 2 threads under load vs 24 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)

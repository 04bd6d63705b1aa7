"""Shared test setup: offline, deterministic, small."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One intra-op thread per process: the suite runs subprocesses (CLI runs, notebook kernels,
# a browser) beside pytest on a 2-core machine, and oversubscribed OpenMP threads spin-wait
# (measured: a toy test file 244 s with 2 threads under load vs 24 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# No cyclic GC while the session imports and collects: it builds ~0.5 M long-lived objects (torch, diffusers,
# transformers, sklearn, dash, the test modules), and each automatic full pass over them costs 0.1-0.4 s
# (measured: `pytest --co -m "not slow"` 14.5 s -> 10 s, CPU 14.1 s -> 9.6 s). pytest_collection_finish
# (called even when collection fails) freezes them and turns the collector back on.
gc.disable()

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)

import pytest  # noqa: E402

# The slow tier (`pytest -m "not slow"` skips it; `make test` runs everything): tests that need the
# trained toy weights at full sampling length, execute notebooks, train, or drive a real browser.
SLOW_TIERS = {
    "trained": ("test_toy_quality.py", "test_editor_trained.py", "test_analysis_steering.py", "test_readme.py"),
    "notebook": ("test_analysis_notebook.py",),
    "training": ("test_toy_train.py",),
}


# Hypothesis examples per property test (tests/test_harden_properties.py): all of them in `make test`, a third in
# the fast tier (`-m "not slow"`, where they were ~2 s). An explicit --hypothesis-profile wins.
HYPOTHESIS_EXAMPLES = {"latentlens-full": 60, "latentlens-fast": 20}


def pytest_configure(config: pytest.Config) -> None:
    try:
        from hypothesis import settings
    except ImportError:  # the property tests skip themselves
        return
    for name, examples in HYPOTHESIS_EXAMPLES.items():
        settings.register_profile(name, max_examples=examples)
    if config.getoption("hypothesis_profile", None) is None:
        fast = (config.getoption("markexpr", "") or "").replace(" ", "") == "notslow"
        settings.load_profile("latentlens-fast" if fast else "latentlens-full")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    files = {name: tier for tier, names in SLOW_TIERS.items() for name in names}
    for item in items:
        tier = "browser" if "browser" in item.path.parts else files.get(item.path.name)
        if tier is not None:
            item.add_marker(pytest.mark.slow)
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def saved_pipe(tmp_path_factory: pytest.TempPathFactory):
    """``saved_pipe(kind)``: a folder holding ``tiny_pipes.get_pipe(kind).save_pretrained``, written once per session.

    The folders are shared: tests read them (``--model DIR``, ``load_pipeline``) and copy them to change them.
    """
    from tiny_pipes import get_pipe

    root = tmp_path_factory.mktemp("saved-pipes")

    def folder(kind: str):
        path = root / f"tiny-{kind}"
        if not path.exists():
            get_pipe(kind).save_pretrained(str(path))
        return path

    return folder


def pytest_collection_finish(session: pytest.Session) -> None:
    # What collection imported lives for the whole session: keep it out of the collector's full passes.
    gc.freeze()
    gc.enable()

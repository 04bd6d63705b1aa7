"""Property tests of what users hand in: a correct result or a clear LatentlensError, never another exception.

Bounded: every test has a small ``max_examples`` (60, from the profile tests/conftest.py loads; 20 in the fast
tier) and a deadline, so the module adds well under 60 s.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from latentlens.errors import LatentlensError  # noqa: E402

BOUNDED = settings(  # max_examples: the loaded profile's
    deadline=1000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SITES = [
    f"blocks.{i}.{kind}.{stream}"
    for i in range(3)
    for kind in ("resid_out", "attn_out")
    for stream in ("img", "txt")
]
SITES += ["latents", "pred", "text.tokens", "blocks.0.attn.img2txt"]
STEP_TEXT = st.one_of(
    st.text(alphabet="0123456789:,- all", max_size=16),
    st.text(max_size=12),
)


@BOUNDED
@given(text=STEP_TEXT, n_steps=st.one_of(st.none(), st.integers(1, 40)))
def test_step_specs(text, n_steps):
    from latentlens.cli.commands.record import parse_steps, resolve_steps

    try:
        steps = resolve_steps(parse_steps(text), n_steps)
    except LatentlensError as error:
        assert str(error).strip()
        return
    if steps is not None:
        assert steps == sorted(set(steps))
        if n_steps is not None:
            assert all(0 <= s < n_steps for s in steps)


@BOUNDED
@given(
    pattern=st.one_of(
        st.sampled_from(SITES),
        st.text(alphabet="blocks.0123*?[]_-imgtxtresid_outattn", max_size=24),
        st.lists(
            st.sampled_from(SITES + ["blocks.9.resid_out.img", "blocks.*"]), max_size=3
        ),
    )
)
def test_site_names_and_globs(pattern):
    from latentlens.names import select_names

    try:
        chosen = select_names(SITES, pattern)
    except LatentlensError as error:
        assert str(error).strip()
        return
    assert set(chosen) <= set(SITES) and (chosen or pattern == [])
    assert chosen == [s for s in SITES if s in chosen]  # in the valid names' order


@BOUNDED
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.one_of(
                st.text(max_size=30),
                st.just("# c"),
                st.just('{"prompt": "x", "seed": 3}'),
                st.just("{bad"),
            ),
            max_size=6,
        ).map(lambda ls: "\n".join(ls).encode()),
        st.text(max_size=40).map(lambda t: t.encode("utf-16")),
    )
)
def test_prompt_files(data):
    from latentlens.cli.commands.record import read_prompt_file
    from latentlens.runs import prompt_set

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.txt"
        path.write_bytes(data)
        try:
            prompts = read_prompt_file(path)
            items = prompt_set(prompts)
        except LatentlensError as error:
            assert str(error).strip()
            return
    assert len(items.prompts) == len(prompts) and all(p.strip() for p in items.prompts)


_RUN: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _run_base(tmp_path_factory):
    """The shared run lives under pytest's temporary root (cleaned by pytest), not a stray mkdtemp."""
    _RUN["base"] = tmp_path_factory.mktemp("props")
    yield
    _RUN.clear()


def _run_folder() -> Path:
    """One small run shared by the reader tests; each example restores the file it damages."""
    from latentlens.store import RunStore

    if "run" not in _RUN:
        folder = _RUN["base"] / "run"
        store = RunStore.create(
            folder, {"prompts": ["a", "b", "c"], "seeds": [0, 1, 2]}
        )
        store.write_samples([0, 1], {"x": np.ones((2, 1, 2), np.float32)})
        store.mark_complete([0, 1])
        store.close()
        _RUN["run"] = folder
        _RUN["manifest"] = (folder / "manifest.json").read_bytes()  # type: ignore[assignment]
        _RUN["journal"] = (folder / "completed.jsonl").read_bytes()  # type: ignore[assignment]
    run = _RUN["run"]
    (run / "manifest.json").write_bytes(_RUN["manifest"])  # type: ignore[arg-type]
    (run / "completed.jsonl").write_bytes(_RUN["journal"])  # type: ignore[arg-type]
    return run


@BOUNDED
@given(
    tail=st.one_of(
        st.binary(max_size=80),
        st.lists(
            st.one_of(
                st.just('{"sample": 2}'),
                st.just('{"sample": "x"}'),
                st.just("[]"),
                st.just('{"sample": 1.5}'),
                st.just('{"sample": true}'),
                st.text(max_size=10),
            ),
            max_size=4,
        ).map(lambda ls: "\n".join(ls).encode()),
    )
)
def test_journal_reader(tail):
    from latentlens.store import JOURNAL, RunStore, open_run

    run = _run_folder()
    with open(run / JOURNAL, "ab") as handle:
        handle.write(tail)
    try:
        completed = open_run(run).completed
    except LatentlensError as error:
        assert "completed.jsonl" in str(error)
        store = RunStore.open(run, mode="a", repair=True)  # the named fix always works
        completed = store.completed
        store.close()
    assert {0, 1} <= completed <= {0, 1, 2}


@BOUNDED
@given(
    manifest=st.one_of(
        st.binary(max_size=60),
        st.recursive(
            st.one_of(st.none(), st.integers(), st.text(max_size=8)),
            lambda inner: (
                st.dictionaries(
                    st.sampled_from(
                        ["prompts", "model", "recorded", "store", "labels", "x"]
                    ),
                    inner,
                    max_size=4,
                )
                | st.lists(inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_manifest_reader(manifest):
    from latentlens.store import open_run

    run = _run_folder()
    (run / "manifest.json").write_bytes(manifest)
    try:
        store = open_run(run)
        store.names
        store.num_samples
        store.verify()
    except LatentlensError as error:
        assert str(error).strip()


@BOUNDED
@given(
    spec=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "model",
                "template",
                "attributes",
                "seeds",
                "samples",
                "record",
                "prompts",
                "labels",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(-3, 5),
            st.text(max_size=10),
            st.lists(st.text(max_size=5), max_size=3),
            st.dictionaries(
                st.text(max_size=5),
                st.lists(st.text(max_size=5), max_size=3),
                max_size=2,
            ),
        ),
        max_size=5,
    )
)
def test_probe_specs(spec):
    from latentlens.analysis.spec import ProbeSpec

    try:
        parsed = ProbeSpec.from_dict(spec)
        parsed.prompts()
    except LatentlensError as error:
        assert str(error).strip()


@BOUNDED
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=6),
    )
)
def test_dashboard_bounds(value):
    from dashboards.limits import bounded_float, bounded_int

    for check, low, high in ((bounded_int, 1, 100), (bounded_float, -8.0, 8.0)):
        try:
            number = check(value, "x", low, high)
        except LatentlensError:
            continue
        assert low <= number <= high


@settings(
    max_examples=25,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    flags=st.lists(
        st.sampled_from(
            [
                ["--steps", "0:3"],
                ["--steps", "x"],
                ["--limit", "0"],
                ["--limit", "2"],
                ["--batch-size", "-1"],
                ["--resume"],
                ["--overwrite"],
                ["--repair"],
                ["--num-inference-steps", "0"],
                ["--dtype", "float16"],
            ]
        ),
        max_size=4,
    )
)
def test_record_argument_combinations_fail_before_any_model_load(
    flags, tmp_path_factory
):
    """Every combination with a missing prompts file ends in exit status 2 and one message, never a traceback."""
    import contextlib
    import io

    from latentlens.cli import main

    folder = tmp_path_factory.mktemp("cli")
    err = io.StringIO()
    argv = [
        "record",
        "--model",
        "toy",
        "--prompts",
        str(folder / "missing.txt"),
        "--out",
        str(folder / "run"),
    ]
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv + [part for flag in flags for part in flag])
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
    assert code == 2 and "Traceback" not in err.getvalue()
    assert not (folder / "run").exists()

"""Every damaged input is named (file + fix, never a traceback); damaged samples are found and re-recorded."""

from __future__ import annotations

import os

import numpy as np
import pytest

from latentlens.cli import main
from latentlens.errors import ConfigError, StoreError
from latentlens.runs import record_prompts
from latentlens.store import JOURNAL, RunStore, open_run
from store_faults import chunk_files

PROMPTS = [
    f"a {c} circle" for c in ("red", "blue", "green", "yellow", "purple", "orange")
]
COMMON = dict(
    sites="blocks.*.resid_out.img",
    num_inference_steps=2,
    pipeline_kwargs={"max_sequence_length": 8},
    progress=False,
    save_images=False,
)


@pytest.fixture(scope="module")
def pipe():
    from tiny_pipes import get_pipe

    return get_pipe("sd3")


def _small_run(path, n=6):
    store = RunStore.create(
        path,
        {"prompts": [f"p{i}" for i in range(n)], "seeds": list(range(n))},
        samples_per_chunk=2,
    )
    x = np.arange(n * 2 * 3 * 4, dtype=np.float32).reshape(n, 2, 3, 4)
    store.write_samples(
        list(range(n)), {"x": x}, dims={"x": ("sample", "step", "token", "channel")}
    )
    store.mark_complete(list(range(n)))
    store.close()
    return path


@pytest.mark.parametrize(
    "garbage", [b"\xe9t\xe9 \xff\xfe garbage\n", b"{not json}\n", b'{"sample": -3}\n']
)
def test_garbage_in_the_journal_is_named_by_every_entry_point(
    tmp_path, capsys, garbage
):
    path = _small_run(tmp_path / "run")
    with open(path / JOURNAL, "ab") as handle:
        handle.write(garbage)
    with pytest.raises(
        StoreError,
        match=r"completion journal .*completed\.jsonl is damaged: line 7.*--repair",
    ):
        open_run(path)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert "completed.jsonl" in err and "Traceback" not in err
    with pytest.raises(StoreError, match="is damaged"):
        RunStore.open(path, mode="a")
    assert not (path / ".writer.lock").exists(), (
        "a refused writer leaves no lock behind"
    )
    store = RunStore.open(path, mode="a", repair=True)
    assert store.completed == set(range(6))
    store.close()
    assert open_run(path).completed == set(
        range(6)
    )  # the damaged line is gone, the others kept


def test_a_torn_last_line_is_still_just_an_unfinished_sample(tmp_path):
    path = _small_run(tmp_path / "run")
    with open(path / JOURNAL, "ab") as handle:
        handle.write(b'{"sample": 6, "pr\xc3')  # killed mid-write, even mid-character
    assert open_run(path).completed == set(range(6))


@pytest.mark.parametrize("which", ["array", "group"])
def test_a_broken_zarr_json_is_named(tmp_path, capsys, which):
    path = _small_run(tmp_path / "run")
    meta = path / "arrays" / ("x" if which == "array" else "") / "zarr.json"
    meta.write_text('{"zarr_format": 3, "node_type": ')
    with pytest.raises(StoreError, match=rf"array metadata {meta} is not valid JSON"):
        open_run(path)["x"][:, 0]
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert "zarr.json" in err and "Traceback" not in err


def test_a_broken_manifest_is_named_with_the_fix(tmp_path):
    path = _small_run(tmp_path / "run")
    (path / "manifest.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(
        StoreError, match="manifest .* is not UTF-8.*Restore manifest.json"
    ):
        open_run(path)
    (path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="holds a JSON list, not an object"):
        open_run(path)


def test_prompt_files_in_other_encodings(tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a red circle\nun cercle ros\xe9\n".encode("latin-1"))
    assert (
        main(
            [
                "record",
                "--model",
                "toy",
                "--prompts",
                str(latin),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "latin1.txt is not UTF-8 text" in err
        and "line 2" in err
        and "iconv" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "r").exists()
    assert (
        main(
            [
                "generate",
                "--prompts",
                str(latin),
                "--seed",
                "0",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 2
    )
    assert "iconv" in capsys.readouterr().err
    from latentlens.cli.commands.record import read_prompt_file

    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("a red circle\nun cercle rosé\n", encoding="utf-16")
    assert read_prompt_file(utf16) == ["a red circle", "un cercle rosé"]


@pytest.mark.parametrize(
    "prompt, message",
    [("a red\x00circle", "control character"), ("x" * 100_000, "100,000 characters")],
)
def test_nul_and_huge_prompts_are_refused_not_truncated(prompt, message):
    from latentlens.runs import prompt_set

    with pytest.raises(ConfigError, match=message):
        prompt_set([prompt])


def test_resume_finds_a_truncated_chunk_and_repair_records_exactly_its_samples(
    pipe, tmp_path, capsys
):
    out = tmp_path / "run"
    record_prompts(pipe, PROMPTS, out, batch_size=2, **COMMON)
    before = open_run(out)["blocks.0.resid_out.img"][...]
    chunk = chunk_files(out / "arrays" / "blocks.0.resid_out.img", first=1)[-1]
    assert chunk.is_file()
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(
        StoreError,
        match=r"2 finished samples .* are damaged \(samples 2, 3;.*--resume --repair",
    ):
        record_prompts(pipe, PROMPTS, out, batch_size=2, resume=True, **COMMON)
    assert main(["verify", str(out), "--sizes-only"]) == 1
    assert "samples 2, 3" in capsys.readouterr().err
    result = record_prompts(pipe, PROMPTS, out, batch_size=2, repair=True, **COMMON)
    assert result.recorded_now == [2, 3]
    np.testing.assert_array_equal(open_run(out)["blocks.0.resid_out.img"][...], before)
    assert main(["verify", str(out)]) == 0
    assert "all intact" in capsys.readouterr().out


def test_random_bytes_in_a_chunk_are_caught_by_the_checksum(pipe, tmp_path, capsys):
    out = tmp_path / "run"
    record_prompts(pipe, PROMPTS, out, batch_size=2, **COMMON)
    name = "blocks.1.resid_out.img"
    before = open_run(out)[name][...]
    chunk = chunk_files(out / "arrays" / name, first=2)[0]  # samples 4, 5
    data = bytearray(chunk.read_bytes())
    size = len(data) // 2
    data[size + 8 : size + 24] = os.urandom(
        16
    )  # inside sample 5, same file size, finite values likely
    chunk.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        "1 finished samples" in err
        and "samples 5;" in err
        and "differs from the checksum" in err
    )
    result = record_prompts(pipe, PROMPTS, out, batch_size=2, repair=True, **COMMON)
    assert result.recorded_now == [5]
    after = open_run(out)[name][...]
    np.testing.assert_array_equal(
        after[:5], before[:5]
    )  # the intact samples are untouched
    # sample 5 alone instead of batched with 4: same seed, float-level differences only
    np.testing.assert_allclose(after[5], before[5], rtol=1e-4, atol=1e-5)
    assert main(["verify", str(out)]) == 0


def test_occupied_folder_messages_say_what_differs(pipe, tmp_path, capsys):
    out = tmp_path / "run"
    record_prompts(pipe, PROMPTS[:2], out, batch_size=2, **COMMON)
    with pytest.raises(StoreError) as same:
        record_prompts(pipe, PROMPTS[:2], out, batch_size=2, **COMMON)
    assert "another model" not in str(same.value) and "already holds a run" in str(
        same.value
    )
    other = {**COMMON, "num_inference_steps": 3}
    with pytest.raises(
        StoreError,
        match=r"generation\.num_inference_steps \(the run has 2, these settings 3\)",
    ):
        record_prompts(pipe, PROMPTS[:2], out, batch_size=2, resume=True, **other)

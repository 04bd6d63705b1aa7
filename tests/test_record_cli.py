"""``latentlens record``: JSON output, clear errors, refusal of foreign runs, SIGKILL + --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from latentlens.cli import main
from latentlens.store import JOURNAL, open_run


@pytest.fixture(scope="module")
def model_dir(saved_pipe):
    return saved_pipe("sd3")


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# colours\na red circle\na blue square\n\na green cross\n")
    return path


def _args(model_dir, prompts, out, *extra):
    return ["record", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out),
            "--num-inference-steps", "2", "--batch-size", "2", "--quiet", *extra]


def test_json_output_is_one_document(model_dir, prompts_file, tmp_path, capsys):
    code = main(_args(model_dir, prompts_file, tmp_path / "run", "--attention", "img2txt", "--steps", "1", "--json"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)  # exactly one JSON document, nothing else on stdout
    assert document["run"] == str(tmp_path / "run")
    assert document["samples"] == 3 and document["resumed_from"] == 0
    assert "blocks.0.attn.img2txt" in document["recorded"] and "blocks.0.resid_out.img" not in document["recorded"]
    assert document["seconds"] > 0
    run = open_run(tmp_path / "run")
    assert run["blocks.0.attn.img2txt"].shape[:2] == (3, 1)  # one recorded step
    assert run.manifest["prompts"] == ["a red circle", "a blue square", "a green cross"]


def test_jsonl_prompts_give_seeds_and_labels(model_dir, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red circle", "seed": 7, "color": "red"}\n{"prompt": "a blue circle", "color": "blue"}\n')
    assert main(_args(model_dir, path, tmp_path / "run", "--seed", "100", "--json")) == 0
    run = open_run(tmp_path / "run")
    assert run.manifest["seeds"] == [7, 101]
    assert run.samples[1]["labels"] == {"color": "blue"}


def test_probe_spec_gives_prompts_and_labels(model_dir, tmp_path, capsys):
    spec = tmp_path / "colors.yaml"
    spec.write_text(textwrap.dedent("""\
        name: colors
        attributes:
          color: [red, blue]
        templates: ["a {color} circle"]
        seeds: [3, 4]
        min_samples_per_class: 2
    """))
    code = main(["record", "--model", str(model_dir), "--probe", str(spec), "--out", str(tmp_path / "run"),
                 "--num-inference-steps", "2", "--quiet", "--json"])
    assert code == 0, capsys.readouterr().err
    run = open_run(tmp_path / "run")
    assert sorted(s["labels"]["color"] for s in run.samples.values()) == ["blue", "blue", "red", "red"]
    assert sorted(run.manifest["seeds"]) == [3, 3, 4, 4]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "5"], "--steps 5 is outside 0..1"),
        (["--steps", "0:9"], "reaches step 9, outside 0..1"),
        (["--steps", "one"], "'one' is not a step index or range"),
        (["--sites", "blocks.0.resid_out.imgg"], "matches no site.*did you mean blocks.0.resid_out.img"),
        (["--attention", "blocks.*.attn.img2text"], "matches no site"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(model_dir, prompts_file, tmp_path, capsys, extra, message):
    code = main(_args(model_dir, prompts_file, tmp_path / "run", *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists(), "nothing is written when the arguments are wrong"


def _spec(tmp_path, record: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent("""\
        name: colors
        attributes:
          color: [red, blue]
        templates: ["a {color} circle"]
        seeds: [3, 4]
        min_samples_per_class: 2
        record: %s
    """) % record)
    return path


@pytest.mark.parametrize(
    ("extra", "record", "message"),
    [
        (["--steps", "9"], None, "--steps 9 is outside 0..1 (the run has 2 denoising steps)"),
        (["--steps", "0:7"], None, "--steps range 0:7 reaches step 7, outside 0..1"),
        ([], "{steps: [0, 99]}", "spec.yaml: record.steps 99 is outside 0..1"),
        ([], "{steps: '1:x'}", "spec.yaml: record.steps '1:x': '1:x' is not a step index or range"),
        ([], "{steps: {a: 1}}", "spec.yaml: record.steps {'a': 1} is not understood"),
        (["--steps", "1"], "{steps: [0, 99]}", None),  # --steps wins over the spec's: this one is valid
        (["--height", "0"], None, "--height must be a positive integer, got 0"),
        (["--guidance", "nan"], None, "--guidance must be a finite number, got nan"),
        (["--reduce", "pool=x"], None, "--reduce: reduce='pool=x' is not understood"),
        ([], "{batch_size: 0}", "spec.yaml: record.batch_size must be a positive integer, got 0"),
        ([], "{cfg: sideways}", "spec.yaml: record.cfg: cfg='sideways' is not one of"),
        (["--device", "cuda:99"], None, "--device 'cuda:99': this machine has"),  # no GPU here, or fewer than 100
        (["--device", "tpu"], None, "--device 'tpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
        (["--ray", "local", "--device", "cpu"], None, "--device 'cpu' does not apply with --ray"),
    ],
)
def test_bad_steps_and_options_fail_before_the_model_loads(model_dir, prompts_file, tmp_path, capsys, monkeypatch,
                                                           extra, record, message):
    """Checked from the arguments and the configs alone: the model is never loaded (a load fails this test)."""
    from latentlens.cli.commands import record as command

    loaded = []
    monkeypatch.setattr(command, "_load_model", lambda model, *_: loaded.append(model) or pytest.fail("the model loaded"))
    source = ["--probe", str(_spec(tmp_path, record))] if record else ["--prompts", str(prompts_file)]
    args = ["record", "--model", str(model_dir), *source, "--out", str(tmp_path / "run"), "--num-inference-steps", "2",
            "--quiet", *extra]
    if message is None:  # the valid combination gets as far as loading the model
        with pytest.raises(pytest.fail.Exception, match="the model loaded"):
            main(args)
        assert loaded == [str(model_dir)]
        return
    started = time.perf_counter()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert time.perf_counter() - started < 5 and not loaded
    assert not (tmp_path / "run").exists()


def test_model_dtype_runs_the_weights_in_it_and_is_part_of_the_run(model_dir, prompts_file, tmp_path, capsys):
    assert main(_args(model_dir, prompts_file, tmp_path / "run", "--model-dtype", "bfloat16", "--device", "cpu")) == 0
    run = open_run(tmp_path / "run")
    assert run.manifest["model"]["dtype"] == "bfloat16"
    assert run["blocks.0.resid_out.img"].dtype == np.float32  # the stored data keeps its own --dtype (float32)
    assert np.isfinite(run["blocks.0.resid_out.img"][:]).all()
    capsys.readouterr()
    # a run made in bfloat16 is not silently continued in float32
    assert main(_args(model_dir, prompts_file, tmp_path / "run", "--resume")) == 2
    assert 'model.dtype (the run has "bfloat16"' in capsys.readouterr().err
    assert main(_args(model_dir, prompts_file, tmp_path / "run", "--resume", "--model-dtype", "bfloat16")) == 0


@pytest.mark.slow  # a fresh interpreter that imports torch and diffusers (~2 s); in-process bad-steps tests stay fast
def test_bad_steps_in_a_real_subprocess_print_no_traceback(model_dir, prompts_file, tmp_path):
    done = subprocess.run([sys.executable, "-m", "latentlens", *_args(model_dir, prompts_file, tmp_path / "r", "--steps", "1:x")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "--steps '1:x': '1:x' is not a step index or range" in done.stderr
    assert done.stdout == ""


def test_foreign_run_needs_resume_or_overwrite(model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(model_dir, prompts_file, out)) == 0
    assert main(_args(model_dir, prompts_file, out, "--guidance", "2.0")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_args(model_dir, prompts_file, out, "--guidance", "2.0", "--resume")) == 2
    assert "differs in: generation" in capsys.readouterr().err
    assert main(_args(model_dir, prompts_file, out, "--guidance", "2.0", "--overwrite", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3
    assert open_run(out).manifest["generation"]["guidance_scale"] == 2.0


SLOW_CLI = """
import sys, time
from latentlens.store import RunStore
original = RunStore.mark_complete
def slow(self, *args, **kwargs):
    original(self, *args, **kwargs)
    time.sleep(0.5)  # leave the test time to kill us between batches or inside the next one
RunStore.mark_complete = slow
from latentlens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_half_way_then_resume_records_every_prompt_exactly_once(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle number {i}" for i in range(8)) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "killed"
    args = _args(model_dir, prompts, out, "--attention", "img2txt")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / JOURNAL
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and 2 <= len(journal.read_text().splitlines()) < 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    time.sleep(0.7)  # now inside the next batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = len(open_run(out).completed)
    assert 2 <= finished_before < 8

    done = subprocess.run([sys.executable, "-m", "latentlens", *args, "--resume", "--json"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["samples"] == 8 and document["resumed_from"] == finished_before

    ids = [json.loads(line)["sample"] for line in journal.read_text().splitlines()]
    assert sorted(ids) == list(range(8)), "every prompt is recorded exactly once"

    assert main(_args(model_dir, prompts, tmp_path / "clean", "--attention", "img2txt")) == 0  # a clean run
    resumed, reference = open_run(out), open_run(tmp_path / "clean")
    assert resumed.names == reference.names
    for name in reference.names:
        np.testing.assert_array_equal(resumed[name][:], reference[name][:], err_msg=name)
    assert resumed.manifest["config_hash"] == reference.manifest["config_hash"]

"""Recording on a real local Ray cluster (2 CPUs, started once for this file): the same store as a
serial run, a SIGKILLed worker, a SIGKILLed driver + --resume, and the errors before any work.

Most of each test is Ray starting worker processes that import torch and load the toy model
(about 4.5 s per worker alone, twice that with two at once on 2 busy cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402  (the test setup installs latentlens[ray])

pytestmark = pytest.mark.slow  # each test starts Ray worker processes that import torch (seconds each)

from latentlens.cli import main  # noqa: E402
from latentlens.distributed import ACTOR_PREFIX, RecordWorker, connect, import_ray  # noqa: E402
from latentlens.errors import ConfigError, LatentlensError, StoreError  # noqa: E402
from latentlens.runs import RunInterruptedError, record_prompts  # noqa: E402
from latentlens.store import JOURNAL, open_run  # noqa: E402
from tiny_pipes import toy_blocks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"a {c} {s} on the {p}" for c in ("red", "blue") for s in ("circle", "square") for p in ("left", "right", "top", "bottom")]
COMMON = dict(num_inference_steps=4, batch_size=2, progress=False, model_id="toy", sites="blocks.*.resid_out.*")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for every test here: 2 CPUs, a small object store, no dashboard, quiet."""
    started = time.perf_counter()
    connect("local", num_cpus=2, object_store_memory=80 * 2**20)
    print(f"ray start: {time.perf_counter() - started:.2f} s")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pipe():
    import latentlens

    pipe = latentlens.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def serial(pipe, tmp_path_factory):
    """The reference: the same prompts recorded in this process."""
    return record_prompts(pipe, PROMPTS, tmp_path_factory.mktemp("serial") / "run", **COMMON)


def assert_same_run(path, reference) -> None:
    """Same samples, ids, prompts, seeds, config hash, bytes of every array and image; each sample journaled once."""
    run, ref = open_run(path), open_run(reference.path)
    assert sorted(run.completed) == sorted(ref.completed) == list(range(len(PROMPTS)))
    lines = [json.loads(line)["sample"] for line in (Path(path) / JOURNAL).read_text().splitlines()]
    assert sorted(lines) == list(range(len(PROMPTS)))  # every prompt exactly once
    for key in ("prompts", "seeds", "labels", "config_hash", "timesteps", "recorded"):
        assert run.manifest[key] == ref.manifest[key], key
    for i, entry in ref.samples.items():
        assert {k: run.samples[i].get(k) for k in ("prompt", "seed", "image")} == {k: entry.get(k) for k in ("prompt", "seed", "image")}
    assert run.names == ref.names and len(run.names) == 2 * toy_blocks() - 1  # the last block has no text output
    for name in ref.names:
        a, b = np.asarray(run[name]), np.asarray(ref[name])
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), name  # bit-identical on CPU
    for i in ref.completed:
        assert run.image_path(i).read_bytes() == ref.image_path(i).read_bytes()


def test_two_workers_give_the_serial_store_through_the_cli(cluster, serial, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    code = main(["record", "--model", "toy", "--prompts", str(prompts), "--out", str(out), "--num-inference-steps", "4",
                 "--batch-size", "2", "--quiet", "--json", "--ray", "local", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["workers"] == 2 and document["retried"] == 0 and document["samples"] == len(PROMPTS)
    assert_same_run(out, serial)
    assert not list(out.parent.glob(".latentlens-reach-*"))  # the reachability token is gone


def test_model_dtype_reaches_the_workers(cluster, tmp_path, capsys):
    """--model-dtype bfloat16 on Ray: each worker runs the weights in bfloat16, as a serial run does."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    common = ["record", "--model", "toy", "--prompts", str(prompts), "--num-inference-steps", "2", "--batch-size", "2",
              "--quiet", "--no-images", "--model-dtype", "bfloat16"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    code = main([*common, "--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    run, ref = open_run(tmp_path / "ray"), open_run(tmp_path / "serial")
    assert run.manifest["model"]["dtype"] == "bfloat16" and run.manifest["config_hash"] == ref.manifest["config_hash"]
    for name in ref.names:
        assert np.asarray(run[name]).tobytes() == np.asarray(ref[name]).tobytes(), name


def _our_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_PREFIX)]


def test_a_killed_worker_has_its_batches_redone(cluster, pipe, serial, tmp_path):
    out = tmp_path / "run"
    earlier = set(_our_actors())  # actors of earlier tests may still be listed while they shut down
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        run=record_prompts(pipe, PROMPTS, out, ray="local", workers=2, **COMMON)))
    thread.start()
    # Each worker's pid is asked for while it loads its pipeline, so the answer comes before any batch:
    # an actor runs its calls in order, and a pid asked for later would wait behind the batches queued on it.
    pid_refs: dict[str, object] = {}
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        for name in set(_our_actors()) - earlier - set(pid_refs):
            pid_refs[name] = ray.get_actor(name).pid.remote()
        journal = out / JOURNAL
        done = len(journal.read_text().splitlines()) if journal.exists() else 0
        if done >= 4 and len(pid_refs) == 2:  # a parallel batch is done, so the other batches are queued on the workers
            pid = ray.get(pid_refs[max(pid_refs)], timeout=30)
            os.kill(pid, signal.SIGKILL)
            killed = (pid, len(journal.read_text().splitlines()))
        time.sleep(0.005)
    thread.join(120)
    assert killed is not None and killed[1] < len(PROMPTS), "the run ended before a worker could be killed"
    assert result["run"].retried >= 1  # the batches the dead worker held were recorded again
    assert result["run"].workers == 2
    assert_same_run(out, serial)


DRIVER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from latentlens.runs import record_prompts
    import latentlens
    prompts = sys.argv[3].split("|")
    pipe = latentlens.load_pipeline("toy")
    record_prompts(pipe, prompts, sys.argv[2], ray=sys.argv[1], workers=1, num_inference_steps=4, batch_size=2,
                   progress=False, model_id="toy", sites="blocks.*.resid_out.*")
""")


def test_a_killed_driver_is_finished_by_resume(cluster, pipe, serial, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, cluster, str(out), "|".join(PROMPTS)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / JOURNAL
    done = 0
    deadline = time.monotonic() + 120
    while driver.poll() is None and time.monotonic() < deadline:
        done = len(journal.read_text().splitlines()) if journal.exists() else 0
        if done >= 4:
            driver.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    driver.wait(30)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read()[-2000:]
    partial = open_run(out)
    assert 4 <= len(partial.completed) < len(PROMPTS)
    resumed = record_prompts(pipe, PROMPTS, out, resume=True, **COMMON)  # serial resume of a Ray run
    assert resumed.resumed_from == len(partial.completed)
    assert sorted(resumed.recorded_now + sorted(partial.completed)) == list(range(len(PROMPTS)))
    assert_same_run(out, serial)


def test_ray_resume_finishes_a_serial_run(cluster, pipe, serial, tmp_path, capsys):
    """The arrays exist already: no first batch through the driver, the workers fill in the rest."""
    out = tmp_path / "run"
    record_prompts(pipe, PROMPTS, out, limit=6, **COMMON)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    code = main(["record", "--model", "toy", "--prompts", str(prompts), "--out", str(out), "--num-inference-steps", "4",
                 "--batch-size", "2", "--quiet", "--json", "--resume", "--ray", cluster, "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["resumed_from"] == 6 and document["recorded_now"] == len(PROMPTS) - 6
    assert_same_run(out, serial)


def test_a_worker_that_cannot_load_the_model_ends_the_run(cluster, pipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(LatentlensError, match="Ray worker 0") as info:
        record_prompts(pipe, PROMPTS[:4], out, ray="local", workers=2, worker_pipeline="no-such-model", **{
            k: v for k, v in COMMON.items() if k != "model_id"})
    assert "no-such-model" in str(info.value)
    assert not out.exists()  # nothing written
    assert not _our_actors()  # the workers are gone too


def test_a_pipeline_error_in_a_worker_names_the_batch(cluster, pipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunInterruptedError, match="finished before are kept"):
        record_prompts(pipe, PROMPTS[:4], out, ray="local", workers=1, pipeline_kwargs={"no_such_option": 1}, **COMMON)


def test_bad_ray_input_fails_before_any_work(cluster, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "run"
    base = ["record", "--model", "toy", "--prompts", str(prompts), "--out", str(out), "--quiet"]
    for extra, message in (
        (["--ray", "local", "--workers", "0"], "--workers must be a positive integer, got 0"),
        (["--workers", "2"], "--workers needs --ray"),
        (["--ray", "local", "--workers", "3"], "--workers 3 asks for one CPU each but the Ray cluster has 2 CPUs"),
    ):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    # a process not yet connected: an unreachable address is refused in seconds, not after Ray's retries
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="The Ray cluster at 127.0.0.1:9 is unreachable"):
        connect("127.0.0.1:9")
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match="not a cluster address"):
        connect("my-head-node")
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the extra
    with pytest.raises(ConfigError, match=r"pip install 'latentlens\[ray\]'"):
        import_ray()


def test_a_worker_that_does_not_see_the_run_folder_is_refused(cluster, tmp_path):
    """What a node without the shared filesystem meets: the driver's token file is not where it looks."""
    probe = tmp_path / ".latentlens-reach-test"
    probe.write_text("driver-token")
    worker = ray.remote(RecordWorker).options(num_cpus=1).remote(("name", "toy"), None, 1)
    try:
        ray.get(worker.check_path.remote(str(probe), "driver-token"))  # the same filesystem: fine
        with pytest.raises(StoreError, match="cannot see .* as the driver does"):
            try:
                ray.get(worker.check_path.remote(str(tmp_path / "elsewhere" / ".latentlens-reach-x"), "driver-token"))
            except ray.exceptions.RayTaskError as error:
                raise error.cause from None
    finally:
        ray.kill(worker)

"""The background store writer: bounded (back-pressure), errors surface in the caller unchanged.

``record_prompts`` writes each batch on the writer thread while the next batch is generated; the
run it writes is the same as a synchronous one, and a writer failure keeps the finished samples.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from latentlens.errors import StoreError
from latentlens.runs import record_prompts
from latentlens.store import RunStore, open_run
from latentlens.store_writer import BackgroundWriter
from store_faults import fill_disk

PROMPTS = ["a red circle", "a blue square", "a green cross", "a small yellow triangle"]
COMMON = dict(sites="blocks.*.resid_out.*", attention="blocks.*.attn.img2txt", num_inference_steps=2,
              pipeline_kwargs={"max_sequence_length": 8}, progress=False, batch_size=1)


@pytest.fixture(scope="module")
def pipe():
    from tiny_pipes import get_pipe

    return get_pipe("sd3")


def test_a_slow_disk_blocks_the_producer_instead_of_queueing_without_bound():
    release = threading.Event()
    ran: list[int] = []
    writer = BackgroundWriter(max_pending=1)
    writer.submit(lambda: (release.wait(5), ran.append(0)))  # the "disk" is stuck on this write
    time.sleep(0.05)
    writer.submit(lambda: ran.append(1))  # waits in the queue (1 pending allowed)
    third = threading.Thread(target=writer.submit, args=(lambda: ran.append(2),))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a third write was accepted while the queue was full"
    release.set()
    third.join(5)
    writer.close()
    assert ran == [0, 1, 2] and writer.written == 3


def test_writer_error_reaches_the_caller_unchanged_and_drops_only_queued_writes():
    error = StoreError("The disk holding runs/x is full (ENOSPC). The 2 samples finished so far are intact.")
    done: list[int] = []
    writer = BackgroundWriter(max_pending=2)
    writer.submit(lambda: done.append(0))
    writer.submit(lambda: (_ for _ in ()).throw(error))
    writer.submit(lambda: done.append(2))  # in flight behind the failure: dropped
    with pytest.raises(StoreError) as caught:
        writer.flush()
    assert caught.value is error
    writer.close()
    assert done == [0]


def test_runs_are_written_on_the_writer_thread_and_equal_synchronous_ones(pipe, tmp_path, monkeypatch):
    threads: set[str] = set()
    original = RunStore.add_recording

    def spy(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "add_recording", spy)
    background = record_prompts(pipe, PROMPTS, tmp_path / "bg", **COMMON)
    assert threads == {"latentlens-store-writer"}
    threads.clear()
    synchronous = record_prompts(pipe, PROMPTS, tmp_path / "sync", write_ahead=0, **COMMON)
    assert threads == {threading.main_thread().name}
    assert background.samples == synchronous.samples == 4
    a, b = open_run(tmp_path / "bg"), open_run(tmp_path / "sync")
    assert a.names == b.names
    for name in a.names:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=True), name
    assert sorted(p.name for p in (tmp_path / "bg" / "images").iterdir()) == ["0000.png", "0001.png", "0002.png",
                                                                            "0003.png"]


def test_disk_full_in_the_writer_ends_the_run_with_finished_samples_readable(pipe, tmp_path, monkeypatch):
    original = RunStore.mark_complete

    def complete_then_fill_disk(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.completed) >= 2:
            fill_disk(monkeypatch)

    monkeypatch.setattr(RunStore, "mark_complete", complete_then_fill_disk)
    with pytest.raises(StoreError, match="is full.*2 samples finished.*--resume"):
        record_prompts(pipe, PROMPTS, tmp_path / "run", write_ahead=2, **COMMON)
    monkeypatch.undo()
    run = open_run(tmp_path / "run")
    assert run.completed == {0, 1}
    assert not np.isnan(run["blocks.1.resid_out.img"][:2]).any()


def test_a_run_frees_each_batch_it_wrote_without_the_garbage_collector(pipe, tmp_path, monkeypatch):
    """A batch's recording is gone by the time the next one is written, with Python's collector off: the
    recorder's captures sit in reference cycles, and a real-size recording (gigabytes) must not wait for it."""
    written: list[weakref.ref] = []
    alive_before_each: list[int] = []
    add_recording = RunStore.add_recording

    def counting_add_recording(self, rec, *args, **kwargs):
        alive_before_each.append(sum(ref() is not None for ref in written))
        written.append(weakref.ref(rec))
        return add_recording(self, rec, *args, **kwargs)

    monkeypatch.setattr(RunStore, "add_recording", counting_add_recording)
    gc.collect()
    gc.disable()
    try:
        record_prompts(pipe, PROMPTS, tmp_path / "run", **COMMON)
    finally:
        gc.enable()
    assert alive_before_each == [0] * len(PROMPTS)
    assert all(ref() is None for ref in written)

"""The run store: lazy round trip, chunk layout, manifest, refusal of foreign runs, crash and disk-full safety."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from latentlens.errors import StoreError, UnknownNameError
from latentlens.store import JOURNAL, LOCK, MANIFEST, RunStore, config_hash, open_run
from store_faults import chunk_coords, fill_disk

DIMS = ("sample", "step", "token", "channel")


def _manifest(n: int = 6, model: str = "tiny-a") -> dict:
    return {
        "model": {"id": model, "pipeline_class": "FakePipeline"},
        "prompts": [f"prompt {i}" for i in range(n)],
        "seeds": list(range(n)),
        "generation": {"num_inference_steps": 4, "guidance_scale": 3.0},
        "recording": {"sites": "blocks.*.resid_out.*"},
    }


class FakeRecording:
    """What latentlens.record yields: rec[name] is [step, batch, ...]."""

    def __init__(self, data: dict[str, torch.Tensor], timesteps=(1000.0, 750.0, 500.0)) -> None:
        self._data = data
        self.timesteps = torch.tensor(timesteps)

    @property
    def names(self) -> list[str]:
        return list(self._data)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._data[name]

    def dims(self, name: str) -> tuple[str, ...]:
        return ("step", "batch", "token", "channel")[: self._data[name].ndim]


def test_round_trip_lazy_slices_equal_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    store = RunStore.create(tmp_path / "run", _manifest(6), samples_per_chunk=2)
    written = {}
    for ids in ([4, 5], [0, 1], [2]):  # out of order, one partial chunk
        data = rng.standard_normal((len(ids), 3, 5, 4)).astype(np.float32)  # [batch, step, token, channel]
        store.write_samples(ids, {"blocks.0.resid_out.img": data}, dims={"blocks.0.resid_out.img": DIMS})
        store.mark_complete(ids)
        for pos, i in enumerate(ids):
            written[i] = data[pos]
    store.close()

    run = open_run(tmp_path / "run")
    arr = run["blocks.0.resid_out.img"]
    assert arr.dims == DIMS
    assert arr.shape == (6, 3, 5, 4)
    assert arr.chunks == (2, 1, 5, 4)
    assert run.completed == {0, 1, 2, 4, 5}
    step1 = arr[:, 1]  # one (site, step) across all samples
    for i, sample in written.items():
        np.testing.assert_array_equal(step1[i], sample[1])
        np.testing.assert_array_equal(arr[i], sample)
    assert np.isnan(step1[3]).all(), "a sample never written reads as NaN, not as stale data"
    np.testing.assert_array_equal(arr.isel(step=2, sample=[0, 5]), np.stack([written[0][2], written[5][2]]))
    np.testing.assert_array_equal(np.asarray(arr)[4], written[4])


def test_add_recording_transposes_step_batch_to_sample_step(tmp_path):
    store = RunStore.create(tmp_path / "run", _manifest(4))
    x = torch.randn(3, 2, 5, 8)  # [step, batch, token, channel]
    pooled = torch.randn(3, 2, 8, dtype=torch.bfloat16)  # [step, batch, channel]
    ids = store.add_recording(FakeRecording({"a": x, "pooled": pooled}), sample_ids=[2, 3], metadata=[{"prompt": "p2"}, {"prompt": "p3"}])
    assert ids == [2, 3]
    auto = store.add_recording(FakeRecording({"a": x, "pooled": pooled}))
    assert auto == [4, 5], "without ids a recording gets the next free ids and the arrays grow"
    store.close()
    run = open_run(tmp_path / "run")
    np.testing.assert_array_equal(run["a"][2:4], x.transpose(0, 1).numpy())
    np.testing.assert_array_equal(run["a"][4:6], x.transpose(0, 1).numpy())
    assert run["pooled"].dtype == np.float32  # bfloat16 is stored as float32
    np.testing.assert_array_equal(run["pooled"][3], pooled[:, 1].float().numpy())
    assert run["a"].dims == DIMS
    assert run.manifest["timesteps"] == [1000.0, 750.0, 500.0]
    assert run.samples[3]["prompt"] == "p3"
    assert run.num_samples == 6


def test_new_stores_keep_chunk_files_flat_and_nested_stores_still_read_and_grow(tmp_path, monkeypatch):
    """A new array's chunk files lie side by side (no folder per chunk and step); a store written with
    zarr's nested ``c/…`` keys (latentlens before session 9) still reads, resumes, grows in that layout
    and verifies."""
    import latentlens.store

    n, spc, steps = 8, 2, 3
    data = np.arange(n * steps * 4 * 2, dtype=np.float32).reshape(n, steps, 4, 2)
    flat = RunStore.create(tmp_path / "flat", _manifest(n), samples_per_chunk=spc)
    flat.write_samples(range(4), {"x": data[:4]}, dims={"x": DIMS})
    flat.mark_complete(range(4))
    flat.close()
    folder = tmp_path / "flat" / "arrays" / "x"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == []
    assert len([p for p in folder.iterdir() if chunk_coords(p.name)]) == 2 * steps  # 2 sample chunks x 3 steps

    monkeypatch.setattr(latentlens.store, "FLAT_CHUNK_KEYS", {"name": "default", "separator": "/"})
    old = RunStore.create(tmp_path / "old", _manifest(n), samples_per_chunk=spc)
    old.write_samples(range(4), {"x": data[:4]}, dims={"x": DIMS})
    old.mark_complete(range(4))
    old.close()
    monkeypatch.undo()  # what a later latentlens does with that store
    resumed = RunStore.create(tmp_path / "old", _manifest(n), samples_per_chunk=spc, resume=True)
    assert sorted(resumed.completed) == [0, 1, 2, 3]
    resumed.write_samples(range(4, n), {"x": data[4:]}, dims={"x": DIMS})
    resumed.mark_complete(range(4, n))
    resumed.close()
    folder = tmp_path / "old" / "arrays" / "x"
    assert (folder / "c").is_dir() and not [p for p in folder.iterdir() if p.name.startswith("c.")]
    run = open_run(tmp_path / "old")
    np.testing.assert_array_equal(run["x"][...], data)
    np.testing.assert_array_equal(run["x"][:, 1], data[:, 1])
    assert run.verify().ok


def test_reading_one_site_step_touches_only_its_chunks(tmp_path, monkeypatch):
    import zarr.storage

    n, spc, steps = 10, 4, 5
    store = RunStore.create(tmp_path / "run", _manifest(n), samples_per_chunk=spc)
    data = np.arange(n * steps * 3 * 2, dtype=np.float32).reshape(n, steps, 3, 2)
    store.write_samples(range(n), {"x": data}, dims={"x": DIMS})
    store.mark_complete(range(n))
    store.close()
    run = open_run(tmp_path / "run")
    arr = run["x"]  # opened before counting (metadata reads are not chunk reads)

    import latentlens.store

    keys: list[str] = []
    original_get, original_read = zarr.storage.LocalStore.get, latentlens.store._read_chunk

    async def counting_get(self, key, *args, **kwargs):  # reads through zarr
        keys.append(key)
        return await original_get(self, key, *args, **kwargs)

    def counting_read(path, *args, **kwargs):  # reads of chunk files by the store itself
        keys.append(os.path.relpath(path, tmp_path / "run" / "arrays"))
        return original_read(path, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    monkeypatch.setattr(latentlens.store, "_read_chunk", counting_read)
    for read in (lambda: arr[:, 3], lambda: arr.zarr[:, 3]):  # the store's reader and zarr's
        keys.clear()
        np.testing.assert_array_equal(read(), data[:, 3])
        chunk_keys = sorted(k for k in keys if chunk_coords(k))
        assert len(chunk_keys) == math.ceil(n / spc), chunk_keys
        assert all(chunk_coords(k)[1] == 3 for k in chunk_keys), chunk_keys


def test_manifest_fields(tmp_path):
    store = RunStore.create(tmp_path / "run", _manifest(3), samples_per_chunk=3)
    store.write_samples([0], {"x": np.zeros((1, 2, 4), np.float16)}, dims={"x": ("sample", "step", "channel")})
    store.close()
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["format"] == "latentlens-run/1"
    assert manifest["model"]["id"] == "tiny-a"
    assert manifest["prompts"] == ["prompt 0", "prompt 1", "prompt 2"]
    assert manifest["seeds"] == [0, 1, 2]
    assert manifest["config_hash"] == config_hash(_manifest(3))
    assert {"latentlens", "torch", "diffusers", "zarr"} <= set(manifest["versions"])
    assert manifest["created"] and manifest["updated"]
    assert manifest["store"]["samples_per_chunk"] == 3
    assert manifest["recorded"]["x"] == {"dims": ["sample", "step", "channel"], "sample_shape": [2, 4], "dtype": "float16",
                                       "kind": "activation"}
    assert open_run(tmp_path / "run")["x"].dtype == np.float16


def test_config_hash_ignores_bookkeeping_but_not_settings():
    a = _manifest(3)
    assert config_hash(a) == config_hash({**a, "created": "x", "versions": {"torch": "9"}})
    assert config_hash(a) != config_hash(_manifest(3, model="tiny-b"))
    assert config_hash(a) != config_hash({**a, "generation": {"num_inference_steps": 5, "guidance_scale": 3.0}})


def test_foreign_run_is_refused_unless_resume_or_overwrite(tmp_path):
    path = tmp_path / "run"
    store = RunStore.create(path, _manifest(4, model="tiny-a"))
    store.write_samples([0], {"x": np.ones((1, 2, 3), np.float32)})
    store.mark_complete([0])
    store.close()

    with pytest.raises(StoreError, match="another model or configuration.*--resume.*--overwrite"):
        RunStore.create(path, _manifest(4, model="tiny-b"))
    with pytest.raises(StoreError, match="differs in: model"):
        RunStore.create(path, _manifest(4, model="tiny-b"), resume=True)
    with pytest.raises(StoreError, match="already holds a run of this same configuration"):
        RunStore.create(path, _manifest(4, model="tiny-a"))

    resumed = RunStore.create(path, _manifest(4, model="tiny-a"), resume=True)
    assert resumed.completed == {0}
    resumed.close()

    fresh = RunStore.create(path, _manifest(4, model="tiny-b"), overwrite=True)
    assert fresh.completed == frozenset() and fresh.names == []
    assert fresh.manifest["model"]["id"] == "tiny-b"
    fresh.close()


def test_non_run_folders_are_never_deleted(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not empty and is not a latentlens run"):
        RunStore.create(tmp_path / "mine", _manifest(2), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(StoreError, match="is not a latentlens run"):
        open_run(tmp_path / "mine")


def test_torn_journal_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "run"
    store = RunStore.create(path, _manifest(4))
    store.write_samples([0, 1], {"x": np.ones((2, 1, 2), np.float32)})
    store.mark_complete([0, 1])
    store.close()
    with open(path / JOURNAL, "a") as handle:  # a crash in the middle of journaling sample 2
        handle.write('{"sample": 2, "pro')
    assert open_run(path).completed == {0, 1}
    store = RunStore.open(path, mode="a")
    store.write_samples([2], {"x": np.full((1, 1, 2), 2.0, np.float32)})
    store.mark_complete([2])
    store.close()
    lines = (path / JOURNAL).read_text().splitlines()
    assert [json.loads(line)["sample"] for line in lines] == [0, 1, 2]
    assert open_run(path).completed == {0, 1, 2}


def test_disk_full_gives_clean_error_and_keeps_finished_samples(tmp_path, monkeypatch):
    import zarr.storage

    path = tmp_path / "run"
    store = RunStore.create(path, _manifest(4), samples_per_chunk=2)
    good = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    store.write_samples([0, 1], {"x": good})
    store.mark_complete([0, 1])

    fill_disk(monkeypatch)
    with pytest.raises(StoreError, match="disk holding .* is full.*2 samples finished.*--resume"):
        store.write_samples([2, 3], {"x": good + 100})
    monkeypatch.undo()
    store.close()

    run = open_run(path)
    assert run.completed == {0, 1}
    np.testing.assert_array_equal(run["x"][0:2], good)
    # the failed batch can be written after space is freed
    store = RunStore.open(path, mode="a")
    store.write_samples([2, 3], {"x": good + 100})
    store.mark_complete([2, 3])
    store.close()
    np.testing.assert_array_equal(open_run(path)["x"][2:4], good + 100)


def test_one_writer_at_a_time_and_stale_locks_are_taken_over(tmp_path):
    path = tmp_path / "run"
    store = RunStore.create(path, _manifest(2))
    with pytest.raises(StoreError, match="being written by process"):
        RunStore.open(path, mode="a")
    open_run(path)  # reading needs no lock
    store.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (path / LOCK).write_text(dead.stdout)  # a writer killed with SIGKILL leaves its lock behind
    RunStore.open(path, mode="a").close()
    assert not (path / LOCK).exists()


def test_bad_use_gives_clear_errors(tmp_path):
    store = RunStore.create(tmp_path / "run", _manifest(4))
    store.write_samples([0], {"blocks.1.resid_out.img": np.zeros((1, 2, 3), np.float32)})
    with pytest.raises(StoreError, match=r"per-sample shape \(2, 4\).*\(2, 3\)"):
        store.write_samples([1], {"blocks.1.resid_out.img": np.zeros((1, 2, 4), np.float32)})
    with pytest.raises(StoreError, match="2 samples but 1 sample ids"):
        store.write_samples([1], {"blocks.1.resid_out.img": np.zeros((2, 2, 3), np.float32)})
    with pytest.raises(StoreError, match="cannot change"):
        store.update_manifest(prompts=["x"])
    store.close()
    run = open_run(tmp_path / "run")
    with pytest.raises(UnknownNameError, match="Did you mean 'blocks.1.resid_out.img'"):
        run["blocks.1.resid_out.im"]
    with pytest.raises(StoreError, match="read-only"):
        run.mark_complete([1])
    assert not os.path.exists(tmp_path / "run" / LOCK)


@pytest.mark.parametrize("spc", [1, 3, 4])
def test_whole_chunk_fast_paths_agree_with_zarr(tmp_path, spc):
    """Writes of whole chunks and `[a:b, step]` reads bypass zarr's machinery; zarr must read the same bytes."""
    rng = np.random.default_rng(spc)
    n, steps = 10, 3
    store = RunStore.create(tmp_path / "run", _manifest(n), samples_per_chunk=spc)
    expected = np.full((n, steps, 2, 5), np.nan, np.float32)
    for ids in ([0, 1, 2, 3], [5, 6, 7], [9], [4]):  # aligned, unaligned, edge, and a hole filled last
        data = rng.standard_normal((len(ids), steps, 2, 5)).astype(np.float32)
        store.write_samples(ids, {"x": data}, dims={"x": DIMS})
        expected[ids] = data
        ref = open_run(tmp_path / "run")
        np.testing.assert_array_equal(ref["x"].zarr[:], expected)  # zarr's own reader
        for step in range(steps):
            np.testing.assert_array_equal(ref["x"][:, step], expected[:, step])  # fast reader
            np.testing.assert_array_equal(ref["x"][2:7, step - steps], expected[2:7, step])
    store.close()



def test_a_worker_writes_samples_but_never_journals_creates_or_resizes(tmp_path):
    """mode='chunks' (a distributed run's worker) beside the driver, which holds the lock."""
    driver = RunStore.create(tmp_path / "run", _manifest(6), samples_per_chunk=2)
    x = np.arange(6 * 3 * 4 * 2, dtype=np.float32).reshape(6, 3, 4, 2)
    driver.write_samples([0, 1], {"a": x[:2]}, dims={"a": DIMS})  # the driver creates "a" at full length
    worker = RunStore.open(tmp_path / "run", mode="chunks")  # no lock taken: the driver holds it
    worker.write_samples([2, 3], {"a": x[2:4]}, dims={"a": DIMS})
    worker.write_samples([2, 3], {"a": x[2:4]}, dims={"a": DIMS})  # a retried batch: the same bytes again
    with pytest.raises(StoreError, match="written by the driver"):
        worker.mark_complete([2, 3])
    with pytest.raises(StoreError, match="written by the driver"):
        worker.update_manifest(note="x")
    with pytest.raises(StoreError, match="has no array 'b'"):
        worker.write_samples([4], {"b": x[4:5]}, dims={"b": DIMS})
    with pytest.raises(StoreError, match="full length"):
        worker.write_samples([6], {"a": x[5:6]}, dims={"a": DIMS})
    driver.mark_complete([0, 1, 2, 3])
    driver.close()
    run = open_run(tmp_path / "run")
    assert sorted(run.completed) == [0, 1, 2, 3] and run.names == ["a"]
    np.testing.assert_array_equal(run["a"][:4], x[:4])
    assert run["a"].shape[0] == 6


def test_chunks_never_straddle_two_batches(tmp_path):
    """A capped chunk size divides the batch size, so parallel batches never share a chunk."""
    store = RunStore.create(tmp_path / "run", _manifest(12), samples_per_chunk=6)
    big = np.zeros((1, 1, 1, 1), dtype=np.float32)
    per_sample = 16 * 2**20 // 4  # 16 MiB per sample and step: 4 fit the 64 MiB cap, but 4 does not divide 6
    store.write_samples([0], {"a": np.broadcast_to(big, (1, 1, 1, per_sample))}, dims={"a": DIMS})
    assert store.read("a").chunks[0] == 3
    store.close()


def test_mark_complete_fsyncs_every_file_the_store_wrote_and_nothing_system_wide(tmp_path, monkeypatch):
    """Durable before journaled: each chunk file, image, zarr metadata file and their folders is fsync'ed
    before the journal line is written, and the whole system is never synced (``os.sync``)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def system_sync() -> None:
        raise AssertionError("os.sync() flushes every process's data, not only the run's")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", system_sync)
    rng = np.random.default_rng(0)
    store = RunStore.create(tmp_path / "run", _manifest(6), samples_per_chunk=2)
    for ids in ([0, 1, 2], [3, 4, 5]):  # whole chunks (written directly) and partial ones (written by zarr)
        data = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)  # [batch, step, token, channel]
        store.write_samples(ids, {"blocks.0.resid_out.img": data}, dims={"blocks.0.resid_out.img": DIMS})
        for i in ids:
            store.save_image(i, np.zeros((4, 4, 3), np.uint8))
        synced.clear()
        store.mark_complete(ids)
        journal = str(tmp_path / "run" / JOURNAL)
        assert synced[-1] == journal
        before = set(synced[:-1])
        run = tmp_path / "run"
        written = {str(p) for p in run.rglob("*") if p.is_file() and p.name not in (JOURNAL, LOCK, MANIFEST)}
        chunks = {p for p in written if chunk_coords(p)}
        folders = {os.path.dirname(p) for p in written}
        assert chunks and {str(store.image_path(i)) for i in ids} <= before
        if ids[0] == 0:  # the first batch wrote everything there is so far
            assert written <= before and folders <= before and str(run) in before
        else:  # the second: its own chunks (samples 2-5 are chunks 1 and 2) and images
            assert {p for p in chunks if chunk_coords(p)[0] in (1, 2)} <= before
    store.close()
    assert sorted(open_run(tmp_path / "run").completed) == list(range(6))


def _resident_pages(path) -> int:
    """How many of ``path``'s pages are in the page cache now (Linux ``mincore`` on a read-only mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def _on_tmpfs(path) -> bool:
    """True if ``path`` lies on a RAM file system (its pages are the file: they cannot leave the cache)."""
    best, kind = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            point, fstype = line.split()[1:3]
            if str(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind = point, fstype
    return kind in ("tmpfs", "ramfs")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency is read with Linux mincore")
def test_journaled_chunk_files_leave_the_page_cache_and_still_read_back(tmp_path):
    """A long recording does not fill the page cache with data written once (it would push the model's
    weights out, and taking fresh pages for every write is what made the store slow on a VM): once a sample
    is journaled its chunk files are evicted, and reading them gives the data back."""
    if _on_tmpfs(tmp_path):
        pytest.skip(f"{tmp_path} is on a RAM file system, whose files live in the page cache")
    rng = np.random.default_rng(0)
    store = RunStore.create(tmp_path / "run", _manifest(2))
    data = rng.standard_normal((2, 3, 64, 128)).astype(np.float32)  # [batch, step, token, channel]: 32 KiB chunks
    store.write_samples([0, 1], {"blocks.0.resid_out.img": data}, dims={"blocks.0.resid_out.img": DIMS})
    chunks = [str(p) for p in (tmp_path / "run").rglob("*") if p.is_file() and chunk_coords(str(p))]
    assert len(chunks) == 6 and sum(map(_resident_pages, chunks)) >= 6 * 8  # just written: cached
    store.mark_complete([0, 1])
    assert sum(map(_resident_pages, chunks)) == 0
    assert (tmp_path / "run" / JOURNAL).read_text().count("\n") == 2
    store.close()
    np.testing.assert_array_equal(open_run(tmp_path / "run")["blocks.0.resid_out.img"][:], data)

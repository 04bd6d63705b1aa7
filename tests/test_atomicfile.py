"""Atomic replacement: the old file or the new one, never a torn one, and no temporary file left behind."""

from __future__ import annotations

import pytest

from latentlens.atomicfile import replacing, temporary_name, write_atomic


def test_write_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    write_atomic(tmp_path / "chunk", memoryview(b"\x00\x01"), durable=False)
    assert path.read_bytes() == b"new" and (tmp_path / "chunk").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk", "manifest.json"]


def test_a_writer_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"step 100")
    with pytest.raises(KeyboardInterrupt), replacing(path) as tmp:
        tmp.write_bytes(b"step 2")  # half of the new checkpoint, then the user presses Ctrl-C
        raise KeyboardInterrupt
    assert path.read_bytes() == b"step 100" and not temporary_name(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_writer_that_writes_nothing_is_an_error_and_changes_nothing(tmp_path):
    path = tmp_path / "image.png"
    with pytest.raises(FileNotFoundError), replacing(path):
        pass  # the writer never created the temporary file
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_fsync_path_syncs_files_and_folders_and_names_a_missing_one(tmp_path, monkeypatch):
    import os

    from latentlens.atomicfile import fsync_path

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    (tmp_path / "a").write_bytes(b"x")
    fsync_path(tmp_path / "a")
    fsync_path(tmp_path)
    assert synced == [str(tmp_path / "a"), str(tmp_path)]
    fsync_path(tmp_path / "gone", missing_ok=True)  # replaced or removed meanwhile: nothing to do
    with pytest.raises(FileNotFoundError):
        fsync_path(tmp_path / "gone")

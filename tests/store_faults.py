"""Fault injection shared by the store and run tests."""

from __future__ import annotations

import errno


def fill_disk(monkeypatch) -> None:
    """Make every chunk write fail with ENOSPC (zarr's writer and the store's whole-chunk writer)."""
    import zarr.storage

    import latentlens.store

    async def zarr_set(self, key, value, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", key)

    def chunk_write(path, block):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", zarr_set)
    monkeypatch.setattr(latentlens.store, "_write_chunk_file", chunk_write)

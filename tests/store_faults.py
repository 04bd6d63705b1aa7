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


def chunk_coords(key: str) -> tuple[int, ...] | None:
    """The chunk coordinates in a zarr v3 chunk file's key or path (``…/c.1.3.0`` or ``…/c/1/3/0``), else None."""
    parts = key.replace("\\", "/").split("/")
    if "c" in parts:  # nested keys (stores written before flat keys): the coordinates follow the last "c"
        last_c = len(parts) - 1 - parts[::-1].index("c")
        tail = parts[last_c + 1 :]
    elif parts[-1].startswith("c."):
        tail = parts[-1].split(".")[1:]
    else:
        return None
    return tuple(int(p) for p in tail) if tail and all(p.isdigit() for p in tail) else None


def chunk_files(array_dir, first: int | None = None) -> list:
    """The chunk files of one array folder, sorted by coordinates; only those of sample chunk ``first`` if given."""
    files = [(chunk_coords(str(p.relative_to(array_dir))), p) for p in array_dir.rglob("*") if p.is_file()]
    return [p for coords, p in sorted((c, p) for c, p in files if c) if first is None or coords[0] == first]

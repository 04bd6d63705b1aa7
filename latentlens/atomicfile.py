"""Replacing a file atomically: a reader (or a run killed half-way) sees the old file or the new one, never a torn one.

The new content goes to a hidden temporary file next to the target (same folder, so the rename never
crosses a file system), is flushed to disk unless ``durable=False``, and is renamed over the target
with ``os.replace``. On any error, the temporary file is removed and the target is left as it was.

Example::

    from latentlens.atomicfile import replacing, write_atomic

    write_atomic(Path("manifest.json"), b"{}")
    with replacing(Path("checkpoint.pt")) as tmp:  # any writer that takes a path
        torch.save(state, tmp)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """The hidden temporary file that :func:`replacing` writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_path(path: Path, *, missing_ok: bool = False, drop_cache: bool = False) -> None:
    """fsync one file or folder (a folder: its entries); with ``missing_ok`` one that is gone needs nothing.

    ``drop_cache`` then evicts the file's (now clean) pages from the page cache where the system can
    (``POSIX_FADV_DONTNEED``): for data written once and read much later, so a long run neither pushes
    other files (a model's weights) out of the cache nor makes the kernel take ever new pages.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on leaving the block, it replaces ``path`` (fsync'ed first if ``durable``)."""
    target = Path(path)
    tmp = temporary_name(target)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | memoryview, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (see :func:`replacing`)."""
    with replacing(path, durable=False) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        if durable:  # on the open handle: one open per write, not two
            handle.flush()
            os.fsync(handle.fileno())


__all__ = ["fsync_path", "replacing", "temporary_name", "write_atomic"]

"""A bounded background writer: samples go into the run store while the model computes the next batch.

:class:`BackgroundWriter` runs each submitted write (a recording plus its images, then the journal
line) on one background thread, in order. At most ``max_pending`` writes wait in its queue; a
further :meth:`~BackgroundWriter.submit` blocks until one finishes, so a slow disk slows the
generation down (back-pressure) instead of letting memory grow. An error in the writer (disk
full, permission denied) is raised, unchanged, in the caller's thread at the next ``submit`` or
at ``close``; writes queued behind it are dropped, so a failure or a crash loses at most the
samples in flight — every journaled sample is complete on disk.

Example::

    with BackgroundWriter(max_pending=1) as writer:
        for batch in batches:
            rec = record_one(batch)                               # the model computes ...
            writer.submit(lambda rec=rec: store.add_recording(rec))   # ... while this one is written
"""

from __future__ import annotations

import queue
import threading
from typing import Any
from collections.abc import Callable

_STOP = object()


class BackgroundWriter:
    """Runs write jobs on a background thread; at most ``max_pending`` wait (``0`` = write in the caller)."""

    def __init__(self, max_pending: int = 1, *, name: str = "latentlens-store-writer") -> None:
        if not isinstance(max_pending, int) or max_pending < 0:
            raise ValueError(f"max_pending must be a non-negative integer, got {max_pending!r}.")
        self.max_pending = max_pending
        self.error: BaseException | None = None
        self.written = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_pending))
        self._thread: threading.Thread | None = None
        if max_pending:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self.error is None:  # after a failure, queued writes are dropped (they were in flight)
                    job()
                    self.written += 1
            except BaseException as error:
                self.error = error
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job`` (blocks while ``max_pending`` jobs wait); raises an earlier job's error first."""
        self._raise()
        if self._thread is None:
            job()
            self.written += 1
            return
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every queued job ran; raise the first error of one."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self, *, raise_error: bool = True) -> None:
        """Finish the queued jobs and stop the thread; ``raise_error=False`` keeps a writer error silent
        (when another error is already on its way up)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if raise_error:
            self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(raise_error=exc_type is None)


__all__ = ["BackgroundWriter"]

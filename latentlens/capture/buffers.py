"""Step buffers: each capture of a site is copied once, straight into the next row of a ``[step, ...]`` buffer.

A :class:`StepSeries` holds one site's captures of one CFG branch at successive steps. When the
recorder knows how many steps the run keeps (explicit ``steps=``, or the pipeline's own step
count), the first chunk has exactly that many rows and the finished series *is* the final
``[step, batch, ...]`` tensor: one copy per capture, none at the end. Otherwise chunks grow by
doubling and are concatenated once when the recording is read. Copies go through ``Tensor.copy_``,
the kernel ``Tensor.to`` uses, so the rows are bit-identical to ``x.to(dtype)``.

Example::

    series = StepSeries(x, torch.float32, capacity=20)   # x: [batch, token, channel], the first capture
    series.append(x, step=0, timestep=1000.0)
    series.data().shape                                   # [1, batch, token, channel]
"""

from __future__ import annotations

import torch


class StepSeries:
    """Rows ``[batch, ...]`` of one site (one CFG branch) at increasing steps, in chunks ``[row, batch, ...]``."""

    __slots__ = ("dtype", "row_shape", "steps", "timesteps", "_chunks", "_fill")

    def __init__(self, first: torch.Tensor, dtype: torch.dtype, capacity: int) -> None:
        self.dtype = dtype
        self.row_shape = tuple(first.shape)
        self.steps: list[int] = []
        self.timesteps: list[float] = []
        try:
            chunk = self._new_chunk(max(1, capacity))
        except RuntimeError:  # the allocator refused the whole run at once (e.g. a stale step count): grow instead
            chunk = self._new_chunk(1)
        self._chunks: list[torch.Tensor] = [chunk]
        self._fill = 0  # rows used in the last chunk

    def _new_chunk(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, *self.row_shape), dtype=self.dtype)  # [row, batch, ...], filled by append

    def fits(self, x: torch.Tensor, step: int) -> bool:
        """Whether ``x`` can be the next row: same shape, and a later step than the last row."""
        return tuple(x.shape) == self.row_shape and (not self.steps or step > self.steps[-1])

    def append(self, x: torch.Tensor, step: int, timestep: float) -> None:
        """Copy ``x`` (converted to the series' dtype, moved to the CPU) into the next row."""
        chunk = self._chunks[-1]
        if self._fill == chunk.shape[0]:
            chunk = self._new_chunk(max(1, len(self.steps)))  # double the rows held so far
            self._chunks.append(chunk)
            self._fill = 0
        chunk[self._fill].copy_(x)
        self._fill += 1
        self.steps.append(step)
        self.timesteps.append(timestep)

    def __len__(self) -> int:
        return len(self.steps)

    def _parts(self) -> list[torch.Tensor]:
        """The used rows of every chunk, ``[row, batch, ...]`` each (views)."""
        return self._chunks[:-1] + [self._chunks[-1][: self._fill]]

    def row(self, k: int) -> torch.Tensor:
        """Row ``k`` ``[batch, ...]`` (a view into its chunk)."""
        for part in self._parts():
            if k < part.shape[0]:
                return part[k]
            k -= part.shape[0]
        raise IndexError(k)

    def data(self) -> torch.Tensor:
        """All rows ``[step, batch, ...]`` as one tensor: the chunk itself when it is exactly full, else one copy."""
        parts = self._parts()
        if len(parts) == 1 and self._fill == self._chunks[0].shape[0]:
            return self._chunks[0]
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def first_nonfinite(self) -> int | None:
        """Index of the first row holding a NaN or inf (None if all are finite or the dtype is not floating)."""
        if not self.dtype.is_floating_point:
            return None
        offset = 0
        for part in self._parts():
            # A NaN/inf anywhere makes the sum non-finite, so one reduction screens a whole chunk;
            # rows are checked one by one only when it fires (or the sum overflowed).
            if not bool(torch.isfinite(part.sum())):
                for k in range(part.shape[0]):
                    if not bool(torch.isfinite(part[k].sum())) and not bool(torch.isfinite(part[k]).all()):
                        return offset + k
            offset += part.shape[0]
        return None


__all__ = ["StepSeries"]

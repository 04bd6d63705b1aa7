"""``Recording``: what :func:`latentlens.record` captured, in memory or read lazily from a store.

Example::

    with latentlens.record(pipe, sites="blocks.0.resid_out.img") as rec:
        pipe("a small red circle")
    rec["blocks.0.resid_out.img"].shape, rec.dims("blocks.0.resid_out.img")
    # (torch.Size([20, 1, 64, 128]), ('step', 'batch', 'token', 'channel'))
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from latentlens.errors import ConfigError
from latentlens.names import is_map, unknown_name_error


class Recording:
    """What :func:`record` captured. ``rec[name]`` → tensor ``[step, batch, ...]`` on CPU.

    Attributes: ``names`` (recorded names, stable order), ``timesteps`` (transformer timestep per
    recorded step), ``steps`` (the transformer-call indices of the step axis), ``gaps``
    (``[(step, block)]`` skipped by a diffusers cache, with ``allow_caching=True``), ``cfg``,
    ``meta`` (adapter, model class, config, options), ``sample_ids`` (the samples it became in a
    ``store``; then ``rec[name]`` reads lazily from disk and holds nothing in memory).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.timesteps: list[float] = []
        self.steps: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.cfg: str = "cond"
        self.meta: dict[str, Any] = {}
        self._data: dict[str, torch.Tensor] = {}
        self._dims: dict[str, tuple[str, ...]] = {}
        self._done = False
        self.sample_ids: list[int] | None = None
        self._store: Any = None
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _check(self, name: str) -> None:
        if not self._done:
            raise ConfigError("The recording is still running; read rec[...] after the `with record(...)` block.")
        if name not in self._data:
            if not self._data and self.meta.get("transformer_calls") == 0:
                raise ConfigError(
                    f"Nothing was recorded, so there is no {name!r}: the transformer never ran inside the "
                    "`with record(...)` block. Call the pipeline inside the block, on the object passed to record()."
                )
            raise unknown_name_error(name, self.names, what="recorded")

    def __getitem__(self, name: str) -> torch.Tensor:
        self._check(name)
        if self._store is None:
            return self._data[name]
        ids = self.sample_ids or []
        view = self._store[name]  # lazy [sample, ...]
        contiguous = ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
        rows = view[ids[0] : ids[0] + len(ids)] if contiguous and ids else view[ids]  # [batch, step, ...]
        data = torch.from_numpy(np.ascontiguousarray(np.asarray(rows).swapaxes(0, 1)))  # [step, batch, ...]
        return data.to(self._dtypes[name])

    def set_data(self, name: str, data: torch.Tensor, dims: tuple[str, ...]) -> None:
        """Hold ``data`` ``[step, batch, ...]`` with axis names ``dims`` as ``rec[name]`` (the recorder's writer)."""
        self._data[name] = data
        self._dims[name] = dims

    def finish(self, names: Sequence[str], meta: dict[str, Any]) -> None:
        """Mark the recording complete: ``names`` in their stable order, ``meta`` as recorded."""
        self.names = [n for n in names if n in self._data]
        self.meta = meta
        self._done = True

    def move_to_store(self, store: Any, sample_ids: Sequence[int]) -> None:
        """The recording now lives in ``store`` as ``sample_ids``: drop the in-memory tensors."""
        self._dtypes = {name: tensor.dtype for name, tensor in self._data.items()}
        self._shapes = {name: tuple(tensor.shape) for name, tensor in self._data.items()}
        self._data = dict.fromkeys(self._data)  # keep the names for `in`; the tensors are freed
        self.sample_ids = [int(i) for i in sample_ids]
        self._store = store

    def kind(self, name: str) -> str:
        """``"map"`` for attention maps, ``"activation"`` for everything else."""
        self._check(name)
        return "map" if is_map(name) else "activation"

    def dims(self, name: str) -> tuple[str, ...]:
        """Axis names of ``rec[name]``, e.g. ``("step", "batch", "token", "channel")``."""
        self._check(name)
        return self._dims[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self) -> list[str]:
        return list(self.names)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, self[n]) for n in self.names]

    def __repr__(self) -> str:
        shapes = self._shapes if self._store is not None else {n: tuple(t.shape) for n, t in self._data.items()}
        shown = ", ".join(f"{n}: {shapes[n]}" for n in self.names[:4]) if self._done else "running"
        more = f", … (+{len(self.names) - 4})" if len(self.names) > 4 else ""
        return f"Recording({shown}{more})"


__all__ = ["Recording"]

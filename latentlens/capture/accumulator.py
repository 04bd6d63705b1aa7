"""Per-step accumulation of captured tensors and the final ``[step, batch, ...]`` arrays.

Each captured tensor is moved to the CPU in the recording's dtype, screened once for NaN/inf, and
kept per (name, step) — ordered ``uncond`` before ``cond`` when a pipeline makes one call per CFG
branch — or summed into a running mean with ``reduce="mean_steps"``.

On CUDA the copy does not stop the GPU: the tensor goes into a pinned host buffer with a
non-blocking copy on the current stream (stream order keeps it exact even if the model later
overwrites its own tensor in place), the NaN/inf screen is a device-side reduction, and
:meth:`Accumulator.stacked` waits for the copies once, when the recording is read; a NaN warning
therefore comes at the end of the call there. ``mean_steps`` sums stay on the device in float64.

Example::

    acc = Accumulator(torch.float32, mean_steps=False)
    acc.put("pred", x, ("batch", "channel", "height", "width"), state)
    data, dims = acc.stacked("pred", steps=[0, 1])   # [step, batch, ...]
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch

from latentlens.adapters.base import CallState

_CONTEXT_ORDER = {"uncond": 0, None: 1, "cond": 1}


class Accumulator:
    """Holds what a recording captured until it ends."""

    def __init__(self, dtype: torch.dtype, mean_steps: bool) -> None:
        self.dtype = dtype
        self.mean_steps = mean_steps
        self._per_step: dict[str, dict[int, list[tuple[int, torch.Tensor]]]] = defaultdict(dict)
        self._sums: dict[str, dict[int, list[Any]]] = defaultdict(dict)
        self.dims: dict[str, tuple[str, ...]] = {}
        self._warned: set[str] = set()
        # CUDA: copies in flight (one event per device) and device-side finiteness flags not yet read
        self._copies: dict[torch.device, Any] = {}
        self._screens: list[tuple[str, int, float, torch.Tensor]] = []

    def put(self, name: str, x: torch.Tensor, dims: tuple[str, ...], state: CallState) -> None:
        """Keep ``x`` (first axis batch, named ``dims``) as ``name`` at the call's step."""
        self.dims[name] = dims
        order = _CONTEXT_ORDER.get(state.context, 1)
        if x.is_cuda:
            self._put_cuda(name, x, state, order)
            return
        if x.is_meta:  # a size plan (latentlens.size_plan) runs the model on the meta device: shapes only
            y = x.to(dtype=self.dtype)
        else:
            y = x.to(device="cpu", dtype=self.dtype)
            if y.data_ptr() == x.data_ptr():
                y = y.clone()
        # A NaN/inf anywhere makes the sum non-finite, so one reduction screens the tensor;
        # the full element-wise check runs only when the screen fires (or the sum overflowed).
        if (
            name not in self._warned
            and not y.is_meta
            and y.is_floating_point()
            and not bool(torch.isfinite(y.sum()))
            and not bool(torch.isfinite(y).all())
        ):
            self._warn(name, state.step, state.timestep)
        self._keep(name, y, state.step, order)

    def _keep(self, name: str, y: torch.Tensor, step: int, order: int) -> None:
        if self.mean_steps:
            acc = self._sums[name].setdefault(order, [None, 0])
            acc[0] = y.double() if acc[0] is None else acc[0] + y.double()
            acc[1] += 1
        else:
            self._per_step[name].setdefault(step, []).append((order, y))

    def _put_cuda(self, name: str, x: torch.Tensor, state: CallState, order: int) -> None:
        """The GPU path: device-side screen, then a non-blocking copy into pinned memory (or a device sum)."""
        source = x.detach().to(self.dtype)  # [batch, ...] on the device; the same tensor when the dtype matches
        if name not in self._warned and source.is_floating_point():
            self._screens.append((name, state.step, state.timestep, torch.isfinite(source.sum())))
        if self.mean_steps:
            self._keep(name, source, state.step, order)  # summed on the device in float64
            return
        host = torch.empty(source.shape, dtype=self.dtype, device="cpu", pin_memory=True)
        host.copy_(source, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(source.device))
        self._copies[source.device] = event  # events complete in stream order: the last one covers the rest
        self._keep(name, host, state.step, order)

    @property
    def copies_in_flight(self) -> int:
        """Devices with CUDA copies queued and not yet waited for (0 on CPU)."""
        return len(self._copies)

    def wait(self) -> None:
        """Wait for the CUDA copies in flight and report the NaN/inf screens they carried (no-op on CPU)."""
        for event in self._copies.values():
            event.synchronize()
        self._copies.clear()
        screens, self._screens = self._screens, []
        for name, step, timestep, finite in screens:
            if name not in self._warned and not bool(finite):
                self._warn(name, step, timestep)

    def _warn(self, name: str, step: int, timestep: float) -> None:
        self._warned.add(name)
        warnings.warn(
            f"latentlens: NaN or inf in {name!r} at step {step} (timestep {timestep:g}); "
            "later steps of this site are not checked again.",
            RuntimeWarning,
            stacklevel=4,
        )

    def stacked(self, name: str, steps: list[int]) -> tuple[torch.Tensor, tuple[str, ...]] | None:
        """``(data [step, batch, ...], dims)`` of ``name`` over ``steps``; None if it was never captured.

        A step a diffusers cache skipped (``allow_caching=True``) is filled with NaN.
        """
        if name not in self.dims:
            return None
        self.wait()
        if self.mean_steps:
            parts = sorted(self._sums[name].items())
            data = torch.cat([(acc[0] / acc[1]).to(device="cpu", dtype=self.dtype) for _, acc in parts], dim=0)[None]
        else:
            per_step = self._per_step[name]
            like = next(iter(per_step.values()))
            stacked = []
            for s in steps:
                items = per_step.get(s)
                if items is None:
                    items = [(o, torch.full_like(t, float("nan"))) for o, t in like]
                parts = [t for _, t in sorted(items, key=lambda it: it[0])]
                stacked.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))  # no extra copy
            data = torch.stack(stacked)
        return data, ("step",) + self.dims[name]


__all__ = ["Accumulator"]

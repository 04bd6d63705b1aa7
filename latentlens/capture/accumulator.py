"""Per-step accumulation of captured tensors and the final ``[step, batch, ...]`` arrays.

Each captured tensor is copied once, in the recording's dtype, into the next row of its site's
step buffer (:class:`~latentlens.capture.buffers.StepSeries`, one per CFG branch: ``uncond`` before
``cond`` when a pipeline makes one call per branch), which becomes ``rec[name]`` without a further
copy when the recorder knew the number of steps in advance (:attr:`Accumulator.rows_left`); or it
is summed into a running mean with ``reduce="mean_steps"``. The NaN/inf screen of the step buffers
is one reduction per buffer when the recording is read; its warning names the first bad step.
A capture that does not fit its buffer (another shape, the same step twice) turns that site into a
list of per-step tensors stacked at the end, as are the CUDA copies and meta-device size plans.

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
from latentlens.capture.buffers import StepSeries

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
        # CPU: per name, one step buffer per CFG order; sites not in here use the per-step lists
        self._series: dict[str, dict[int, StepSeries]] = {}
        #: steps still to come in this run, counting the current one, when the recorder knows them (sizes new buffers)
        self.rows_left: int | None = None
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
        if not x.is_meta and not self.mean_steps and name not in self._per_step:
            self._put_row(name, x, state, order)
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

    def _put_row(self, name: str, x: torch.Tensor, state: CallState, order: int) -> None:
        """The CPU path: one copy into the next row of the site's step buffer for this CFG order."""
        by_order = self._series.setdefault(name, {})
        series = by_order.get(order)
        if series is None:
            series = by_order[order] = StepSeries(x, self.dtype, self.rows_left or 1)
        elif not series.fits(x, state.step):
            self._to_lists(name)  # an irregular site: keep per-step tensors from here on
            self.put(name, x, self.dims[name], state)
            return
        series.append(x, state.step, state.timestep)

    def _to_lists(self, name: str) -> None:
        """Move ``name``'s step buffers into the per-step lists (views of the rows, no copy)."""
        per_step = self._per_step[name]
        for order, series in self._series.pop(name, {}).items():
            for k, step in enumerate(series.steps):
                per_step.setdefault(step, []).append((order, series.row(k)))
            bad = series.first_nonfinite()
            if bad is not None and name not in self._warned:
                self._warn(name, series.steps[bad], series.timesteps[bad])

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

    def _warn(self, name: str, step: int, timestep: float, stacklevel: int = 4) -> None:
        self._warned.add(name)
        warnings.warn(
            f"latentlens: NaN or inf in {name!r} at step {step} (timestep {timestep:g}); "
            "later steps of this site are not checked again.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def stacked(self, name: str, steps: list[int]) -> tuple[torch.Tensor, tuple[str, ...]] | None:
        """``(data [step, batch, ...], dims)`` of ``name`` over ``steps``; None if it was never captured.

        A step a diffusers cache skipped (``allow_caching=True``) is filled with NaN.
        """
        if name not in self.dims:
            return None
        self.wait()
        if name in self._series:
            data = None if name in self._per_step else self._from_series(name, steps)
            if data is not None:
                return data, ("step",) + self.dims[name]
            self._to_lists(name)  # irregular, or captured on two devices: merge into the per-step lists
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

    def _from_series(self, name: str, steps: list[int]) -> torch.Tensor | None:
        """``[step, batch, ...]`` from the step buffers of ``name``; None when their layout needs the lists."""
        parts = [series for _, series in sorted(self._series[name].items())]
        captured = parts[0].steps
        rest = parts[0].row_shape[1:]
        if any(p.steps != captured or p.row_shape[1:] != rest for p in parts) or not set(captured) <= set(steps):
            return None
        if name not in self._warned:
            bad = [(p.steps[k], p.timesteps[k]) for p in parts if (k := p.first_nonfinite()) is not None]
            if bad:
                self._warn(name, *min(bad), stacklevel=6)
        if len(parts) == 1 and captured == steps:
            return parts[0].data()  # usually the buffer itself: no copy
        # several CFG branches (one call each) or steps a diffusers cache skipped (NaN): one copy
        widths = [p.row_shape[0] for p in parts]
        out = torch.empty((len(steps), sum(widths), *rest), dtype=self.dtype)  # [step, batch, ...]
        row = {step: k for k, step in enumerate(captured)}
        for i, step in enumerate(steps):
            if step not in row:
                out[i].fill_(float("nan"))
                continue
            start = 0
            for p, width in zip(parts, widths):
                out[i, start : start + width].copy_(p.row(row[step]))
                start += width
        return out


__all__ = ["Accumulator"]

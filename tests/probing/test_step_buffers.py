"""Step buffers (one copy per capture): bit-identical to ``torch.stack([x.to(dtype), ...])`` in every layout."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch

from latentlens import record
from latentlens.adapters.base import CallState
from latentlens.capture.accumulator import Accumulator
from latentlens.capture.buffers import StepSeries
from probing_ref import get_pipe, run_pipe

DIMS = ("batch", "token", "channel")


def _captures(n: int, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (2, 5, 3)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return [(torch.randn(shape, generator=g) * 1000).to(dtype) for _ in range(n)]


def _exact_size(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


@pytest.mark.parametrize("capacity", [1, 3, 4, 9])  # grows by doubling / exact / too many rows reserved
@pytest.mark.parametrize(
    "source,dtype",
    [
        (torch.float32, torch.float32),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float64, torch.bfloat16),
    ],
)
def test_series_is_bit_identical_to_stacking_converted_copies(capacity, source, dtype):
    xs = _captures(4, source)
    series = StepSeries(xs[0], dtype, capacity)
    for step, x in enumerate(xs):
        assert series.fits(x, step * 2)
        series.append(x, step * 2, float(step))
    data = series.data()
    expected = torch.stack([x.to(dtype) for x in xs])
    assert data.dtype == dtype and torch.equal(data.view(torch.uint8), expected.view(torch.uint8))
    assert _exact_size(data) and data.is_contiguous()
    assert (data.data_ptr() == series._chunks[0].data_ptr()) == (capacity == 4)  # exact size: the buffer itself
    assert series.steps == [0, 2, 4, 6] and torch.equal(series.row(3), expected[3])


def test_series_grows_when_the_allocator_refuses_the_hinted_size():
    xs = _captures(3)
    series = StepSeries(xs[0], torch.float32, 10**12)  # 120 TB: refused by the CPU allocator
    for step, x in enumerate(xs):
        series.append(x, step, 0.0)
    assert torch.equal(series.data(), torch.stack(xs))


def test_series_refuses_a_repeated_step_or_another_shape():
    xs = _captures(2)
    series = StepSeries(xs[0], torch.float32, 2)
    series.append(xs[0], 3, 0.0)
    assert not series.fits(xs[1], 3) and not series.fits(xs[1], 2)
    assert not series.fits(torch.zeros(1, 5, 3), 4) and series.fits(xs[1], 4)


def test_series_screen_finds_the_first_bad_row_and_ignores_an_overflowing_sum():
    rows = [torch.full((2, 4), 3e38) for _ in range(5)]  # finite, but any sum overflows to inf
    series = StepSeries(rows[0], torch.float32, 2)
    for step, x in enumerate(rows):
        series.append(x, step, 0.0)
    assert series.first_nonfinite() is None
    series = StepSeries(rows[0], torch.float32, 5)
    for step in range(5):
        x = torch.ones(2, 4)
        if step >= 3:
            x[1, step - 3] = float("inf") if step == 3 else float("nan")
        series.append(x, step, 0.0)
    assert series.first_nonfinite() == 3
    assert StepSeries(torch.zeros(2, dtype=torch.int64), torch.int64, 1).first_nonfinite() is None


def _state(step: int, context: str | None = None, timestep: float = 0.0) -> CallState:
    return CallState(step=step, context=context, timestep=timestep)


@pytest.mark.parametrize("rows_left", [None, 2, 3, 10])
def test_accumulator_layouts_equal_the_per_step_lists(rows_left):
    """uncond/cond calls per step, a skipped step (NaN), and a site captured twice in one step."""
    xs = _captures(8)
    acc = Accumulator(torch.float32, mean_steps=False)
    acc.rows_left = rows_left
    for step in (0, 2):  # step 1 was skipped by a cache: NaN
        acc.put("both", xs[step], DIMS, _state(step, "cond"))
        acc.put("both", xs[step + 1], DIMS, _state(step, "uncond"))
        acc.put("plain", xs[step], DIMS, _state(step))
    for step in range(3):
        acc.put("twice", xs[step], DIMS, _state(step))
        if step == 1:
            acc.put("twice", xs[7], DIMS, _state(step))  # the same module ran twice in one call
    data, dims = acc.stacked("both", [0, 1, 2])
    assert dims == ("step",) + DIMS and data.shape == (3, 4, 5, 3)
    assert torch.equal(data[0], torch.cat([xs[1], xs[0]])) and torch.equal(data[2], torch.cat([xs[3], xs[2]]))
    assert torch.isnan(data[1]).all()
    plain, _ = acc.stacked("plain", [0, 1, 2])
    assert torch.equal(plain[0], xs[0]) and torch.isnan(plain[1]).all() and torch.equal(plain[2], xs[2])
    assert torch.equal(acc.stacked("plain", [0, 2])[0], torch.stack([xs[0], xs[2]]))
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        acc.stacked("twice", [0, 1, 2])  # as before the step buffers: step 1 holds two captures


def test_accumulator_nan_warning_names_the_first_bad_step_once():
    acc = Accumulator(torch.float32, mean_steps=False)
    acc.rows_left = 4
    for step in range(4):
        x = torch.ones(1, 3)
        if step >= 2:
            x[0, 0] = float("nan")
        acc.put("blocks.0.resid_out.img", x, ("batch", "channel"), _state(step, timestep=1000.0 - step))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc.stacked("blocks.0.resid_out.img", [0, 1, 2, 3])
        acc.stacked("blocks.0.resid_out.img", [0, 1, 2, 3])
    msgs = [str(w.message) for w in caught]
    assert msgs == [
        "latentlens: NaN or inf in 'blocks.0.resid_out.img' at step 2 (timestep 998); later steps of this "
        "site are not checked again."
    ]


def _buffer_of(recorder: record, name: str) -> torch.Tensor:
    (series,) = recorder._recorder.accumulator._series[name].values()
    return series._chunks[0]


def test_a_pipeline_run_needs_no_copy_at_the_end():
    """The pipeline's own step count sizes the buffers: rec[name] is the buffer the captures were copied into."""
    pipe = get_pipe("sd3")
    recorder = record(pipe, sites="blocks.0.resid_out.img", cfg="both")
    with recorder as rec:
        run_pipe(pipe, "sd3", num_inference_steps=3)
        buffer = _buffer_of(recorder, "blocks.0.resid_out.img").data_ptr()
    data = rec["blocks.0.resid_out.img"]
    assert data.shape[0] == 3 and data.data_ptr() == buffer
    with record(pipe, sites="blocks.0.resid_out.img", cfg="both", steps=[0, 2]) as some:
        run_pipe(pipe, "sd3", num_inference_steps=3)
    assert torch.equal(some["blocks.0.resid_out.img"], data[[0, 2]])


def test_a_bare_transformer_is_sized_from_its_last_recording():
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer()
    inputs = sd3_inputs(model)
    results = []
    for calls in (2, 2, 3, 1):  # first: unknown (grows); then the last count (right, too few, too many)
        recorder = record(model, sites="blocks.0.resid_out.img")
        with torch.no_grad(), recorder as rec:
            for _ in range(calls):
                model(**inputs)
            buffer = _buffer_of(recorder, "blocks.0.resid_out.img").data_ptr()
        data = rec["blocks.0.resid_out.img"]
        assert data.shape[0] == calls and _exact_size(data)
        results.append((data, data.data_ptr() == buffer))
    assert [no_copy for _, no_copy in results] == [False, True, False, False]
    first = results[0][0][0]
    assert all(torch.equal(data[0], first) for data, _ in results)


def test_a_dropped_recording_frees_its_data_without_waiting_for_the_garbage_collector():
    """The recorder sits in reference cycles (its captures call back into it), but the data must not: a long run,
    or one real-size recording, would otherwise stay in memory until Python's next collection."""
    pipe = get_pipe("sd3")
    site = "blocks.0.resid_out.img"
    gc.collect()
    gc.disable()
    try:
        with record(pipe, sites=site) as rec:
            run_pipe(pipe, "sd3")
        recording, data = weakref.ref(rec), weakref.ref(rec[site])
        del rec
        assert recording() is None and data() is None

        recorder = record(pipe, sites=site)
        with pytest.raises(KeyboardInterrupt), recorder as rec:
            run_pipe(pipe, "sd3")
            partial = weakref.ref(_buffer_of(recorder, site))
            raise KeyboardInterrupt  # an interrupted run: the captures so far go with it
        assert partial() is None
    finally:
        gc.enable()

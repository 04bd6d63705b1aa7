"""record_prompts: batching with per-prompt seeds, resume, refusal of foreign runs, failures mid-run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentlens.errors import StoreError
from latentlens.runs import RunInterruptedError, prompt_set, record_prompts
from latentlens.store import JOURNAL, RunStore, open_run
from store_faults import fill_disk

PROMPTS = ["a red circle", "a blue square on the left", "a green cross", "a small yellow triangle"]
COMMON = dict(
    sites="blocks.*.resid_out.*", attention="blocks.*.attn.img2txt", num_inference_steps=2,
    pipeline_kwargs={"max_sequence_length": 8}, progress=False,
)


@pytest.fixture(scope="module")
def pipe():
    from tiny_pipes import get_pipe

    return get_pipe("sd3")


class FlakyPipeline:
    """A pipeline whose n-th call raises (everything else is the wrapped pipeline)."""

    def __init__(self, pipe, fail_on: int) -> None:
        self._pipe = pipe
        self.transformer = pipe.transformer
        self.calls = 0
        self.fail_on = fail_on

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self._pipe(*args, **kwargs)


def test_every_prompt_recorded_once_with_its_own_seed(pipe, tmp_path):
    result = record_prompts(pipe, PROMPTS[:3], tmp_path / "run", batch_size=2, seeds=10, **COMMON)
    assert result.samples == 3 and result.recorded_now == [0, 1, 2] and result.resumed_from == 0
    run = open_run(tmp_path / "run")
    assert run.completed == {0, 1, 2}
    assert {"blocks.0.resid_out.img", "blocks.0.resid_out.txt", "blocks.1.resid_out.img", "blocks.0.attn.img2txt"} <= set(run.names)
    arr = run["blocks.1.resid_out.img"]
    assert arr.dims == ("sample", "step", "token", "channel") and arr.shape[:2] == (3, 2)
    assert run["blocks.0.attn.img2txt"].dims[:2] == ("sample", "step")
    assert [run.samples[i]["seed"] for i in range(3)] == [10, 11, 12]
    assert all(run.image_path(i).is_file() for i in range(3))

    # prompt 1 was generated inside a batch of two; alone with its seed it gives the same data and image
    from latentlens.recorder import record

    with record(pipe, sites="blocks.1.resid_out.img") as rec:
        solo = pipe(PROMPTS[1], num_inference_steps=2, max_sequence_length=8, output_type="np",
                    generator=torch.Generator().manual_seed(11)).images
    np.testing.assert_allclose(arr[1], rec["blocks.1.resid_out.img"][:, 0].numpy(), rtol=1e-4, atol=1e-5)
    from PIL import Image

    saved = np.asarray(Image.open(run.image_path(1)), dtype=np.float32) / 255
    assert np.abs(saved - solo[0]).max() <= 1.5 / 255


def test_manifest_describes_the_run(pipe, tmp_path):
    items = [("a red circle", 5, {"color": "red"}), ("a blue circle", 6, {"color": "blue"})]
    record_prompts(pipe, items, tmp_path / "run", batch_size=2, guidance_scale=3.0, model_id="tiny-sd3", **COMMON)
    manifest = open_run(tmp_path / "run").manifest
    assert manifest["model"]["id"] == "tiny-sd3"
    assert manifest["model"]["pipeline_class"] == "StableDiffusion3Pipeline"
    assert manifest["model"]["transformer_class"] == "SD3Transformer2DModel"
    assert manifest["model"]["adapter"]
    assert manifest["prompts"] == ["a red circle", "a blue circle"] and manifest["seeds"] == [5, 6]
    assert manifest["labels"] == [{"color": "red"}, {"color": "blue"}]
    assert manifest["generation"]["num_inference_steps"] == 2 and manifest["generation"]["guidance_scale"] == 3.0
    assert manifest["recording"]["sites"] == "blocks.*.resid_out.*"
    assert manifest["recording"]["attention"] == "blocks.*.attn.img2txt"
    assert len(manifest["timesteps"]) == 2
    assert manifest["store"]["samples_per_chunk"] == 2
    assert open_run(tmp_path / "run").samples[1]["labels"] == {"color": "blue"}


def test_limit_then_resume_finishes_the_rest(pipe, tmp_path):
    first = record_prompts(pipe, PROMPTS, tmp_path / "run", batch_size=2, limit=2, **COMMON)
    assert first.samples == 2
    again = record_prompts(pipe, PROMPTS, tmp_path / "run", batch_size=2, resume=True, **COMMON)
    assert again.resumed_from == 2 and again.recorded_now == [2, 3] and again.samples == 4
    ids = [json.loads(line)["sample"] for line in (tmp_path / "run" / JOURNAL).read_text().splitlines()]
    assert sorted(ids) == [0, 1, 2, 3]
    nothing = record_prompts(pipe, PROMPTS, tmp_path / "run", batch_size=2, resume=True, **COMMON)
    assert nothing.recorded_now == [] and nothing.samples == 4


def test_foreign_run_is_refused(pipe, tmp_path):
    record_prompts(pipe, PROMPTS[:2], tmp_path / "run", batch_size=2, **COMMON)
    other = {**COMMON, "num_inference_steps": 3}
    with pytest.raises(StoreError, match="another model or configuration.*--overwrite"):
        record_prompts(pipe, PROMPTS[:2], tmp_path / "run", batch_size=2, **other)
    with pytest.raises(StoreError, match="differs in: generation"):
        record_prompts(pipe, PROMPTS[:2], tmp_path / "run", batch_size=2, resume=True, **other)
    assert open_run(tmp_path / "run").manifest["generation"]["num_inference_steps"] == 2  # untouched
    replaced = record_prompts(pipe, PROMPTS[:2], tmp_path / "run", batch_size=2, overwrite=True, **other)
    assert replaced.samples == 2
    assert open_run(tmp_path / "run")["blocks.0.resid_out.img"].shape[1] == 3


def test_pipeline_raising_mid_run_keeps_finished_samples(pipe, tmp_path):
    flaky = FlakyPipeline(pipe, fail_on=2)
    with pytest.raises(RunInterruptedError, match="RuntimeError: CUDA error.*2 samples finished.*--resume"):
        record_prompts(flaky, PROMPTS, tmp_path / "run", batch_size=2, **COMMON)
    run = open_run(tmp_path / "run")
    assert run.completed == {0, 1}
    assert not np.isnan(run["blocks.0.resid_out.img"][:2]).any()
    done = record_prompts(flaky, PROMPTS, tmp_path / "run", batch_size=2, resume=True, **COMMON)
    assert done.recorded_now == [2, 3] and open_run(tmp_path / "run").completed == {0, 1, 2, 3}


def test_disk_full_mid_run_leaves_a_readable_store(pipe, tmp_path, monkeypatch):
    original = RunStore.mark_complete

    def complete_then_fill_disk(self, *args, **kwargs):
        original(self, *args, **kwargs)
        fill_disk(monkeypatch)

    monkeypatch.setattr(RunStore, "mark_complete", complete_then_fill_disk)
    with pytest.raises(StoreError, match="is full.*2 samples finished.*--resume"):
        record_prompts(pipe, PROMPTS, tmp_path / "run", batch_size=2, **COMMON)
    monkeypatch.undo()
    run = open_run(tmp_path / "run")
    assert run.completed == {0, 1}
    assert not np.isnan(run["blocks.1.resid_out.img"][:2]).any()
    assert record_prompts(pipe, PROMPTS, tmp_path / "run", batch_size=2, resume=True, **COMMON).samples == 4


def test_prompt_set_normalises_inputs():
    items = prompt_set(["a", {"prompt": "b", "seed": 9, "color": "red"}, ("c", None, {"size": "big"})], seeds=100)
    assert items.prompts == ["a", "b", "c"]
    assert items.seeds == [100, 9, 102]
    assert items.labels == [{}, {"color": "red"}, {"size": "big"}]
    with pytest.raises(Exception, match="empty"):
        prompt_set(["ok", "  "])
    with pytest.raises(Exception, match="one seed per prompt"):
        prompt_set(["a", "b"], seeds=[1])

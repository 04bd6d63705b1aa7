"""``latentlens record --dry-run``: the size plan from configs alone, within 10 % of what a run writes.

A record whose plan exceeds the free disk is refused before the model loads, naming the biggest
sites and the reductions that would fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import latentlens.models

from latentlens.cli import main
from latentlens.size_plan import free_bytes, plan_record
from latentlens.store import open_run


def _written(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def model_dirs(saved_pipe, tmp_path_factory):
    """Saved tiny SD3 / Flux / PixArt pipelines (real diffusers classes), and an SD3 copy without weights."""
    dirs = {kind: saved_pipe(kind) for kind in ("sd3", "flux", "pixart")}
    dirs["no-weights"] = tmp_path_factory.mktemp("models") / "no-weights"
    shutil.copytree(dirs["sd3"], dirs["no-weights"])
    for weights in dirs["no-weights"].rglob("*.safetensors"):
        weights.unlink()
    return dirs


def _prompts(tmp_path, n=3):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a red circle number {i}\n" for i in range(n)))
    return path


def _dry_run(capsys, args):
    code = main(["record", *args, "--dry-run", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("extra", [
    # the defaults sample the trained toy model at full length (the trained tier); the fast tier has the 6-step case
    pytest.param([], marks=[pytest.mark.slow, pytest.mark.trained]),
    ["--dtype", "bfloat16", "--reduce", "mean_img_tokens", "--num-inference-steps", "6", "--steps", "0:6:2",
     "--batch-size", "2"],
])
def test_dry_run_matches_what_the_toy_run_writes(tmp_path, capsys, extra):
    args = ["--model", "toy", "--prompts", str(_prompts(tmp_path)), "--out", str(tmp_path / "run"),
            "--sites", "blocks.*.resid_out.*", "--attention", "img2txt", "--quiet", *extra]
    plan = _dry_run(capsys, args)
    assert not (tmp_path / "run").exists(), "a dry run wrote to --out"
    for field in ("bytes_per_sample", "total_bytes", "free_bytes", "sites"):
        assert field in plan
    assert plan["free_bytes"] == pytest.approx(free_bytes(tmp_path), rel=0.01)
    assert main(["record", *args]) == 0
    written = _written(tmp_path / "run")
    assert abs(plan["total_bytes"] - written) <= 0.10 * written, (plan["total_bytes"], written)
    run = open_run(tmp_path / "run")
    assert sorted(plan["sites"]) == sorted(run.names)
    for name, size in plan["sites"].items():  # per site exact: bytes of one stored sample
        array = run[name]
        assert size == int(np.prod(array.shape[1:])) * array.dtype.itemsize, name
    assert plan["bytes_per_sample"] == sum(plan["sites"].values())


@pytest.mark.parametrize("kind", ["sd3", "flux", "pixart", "sd", "sdxl"])
def test_plan_matches_the_diffusers_pipelines(kind, model_dirs, saved_pipe, tmp_path):
    import latentlens
    from latentlens.runs import record_prompts

    call = {"sd3": {"max_sequence_length": 8}, "flux": {"max_sequence_length": 8},
            "pixart": {"max_sequence_length": 8, "use_resolution_binning": False, "clean_caption": False},
            "sd": {}, "sdxl": {}}[kind]
    size = {"flux": 16}.get(kind)
    folder = model_dirs[kind] if kind in model_dirs else saved_pipe(kind)
    options = dict(sites="blocks.*.resid_out.*", attention="blocks.*.attn.img2txt", num_inference_steps=2,
                   height=size, width=size)
    plan = plan_record(str(folder), samples=2, out=tmp_path / "run", batch_size=2,
                       max_sequence_length=None if kind in ("sd", "sdxl") else 8, **options)
    pipe = latentlens.load_pipeline(str(folder))
    record_prompts(pipe, ["a red circle", "a blue square"], tmp_path / "run", batch_size=2, progress=False,
                   pipeline_kwargs=call, **options)
    run = open_run(tmp_path / "run")
    assert sorted(plan.sites) == sorted(run.names)
    for name, nbytes in plan.sites.items():
        array = run[name]
        assert nbytes == int(np.prod(array.shape[1:])) * array.dtype.itemsize, name
    written = _written(tmp_path / "run")
    assert abs(plan.total_bytes - written) <= 0.10 * written, (plan.total_bytes, written)


def test_dry_run_reads_configs_only(model_dirs, tmp_path, capsys):
    plan = _dry_run(capsys, ["--model", str(model_dirs["no-weights"]), "--prompts", str(_prompts(tmp_path)),
                             "--out", str(tmp_path / "run"), "--attention", "img2txt"])
    # tiny SD3: 8×8 latents / patch 2 = 16 image tokens; 8 CLIP + 256 T5 tokens (the pipeline's default)
    assert plan["image_tokens"] == 16 and plan["text_tokens"] == 8 + 256
    assert plan["sites"]["blocks.0.attn.img2txt"] == 28 * 16 * 264 * 4  # steps × img × txt × float32
    assert plan["samples"] == 3 and plan["recorded_steps"] == 28


def test_record_that_does_not_fit_is_refused_before_loading(model_dirs, tmp_path, capsys):
    base = ["--model", str(model_dirs["no-weights"]), "--out", str(tmp_path / "run"), "--attention", "img2txt",
            "--sites", "blocks.*.resid_out.*", "--num-inference-steps", "1000"]
    one = _dry_run(capsys, ["--prompts", str(_prompts(tmp_path, 1)), *base])
    n = int(1.5 * free_bytes(tmp_path) / one["bytes_per_sample"]) + 1  # float32 does not fit, float16 does
    prompts = _prompts(tmp_path, n)
    code = main(["record", "--prompts", str(prompts), *base, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "would write" in err and "free" in err and "Nothing was computed" in err
    assert "The biggest sites: blocks.0.resid_out.txt" in err  # 264 text tokens × 32 channels
    assert "These would fit: --dtype float16" in err
    assert "weights" not in err, "the model was loaded before the refusal"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", ["flex", "_native_flash"])
def test_dry_run_ignores_diffusers_default_attention_backend(backend, model_dirs, tmp_path, capsys):
    """A user's process-wide attention backend (``DIFFUSERS_ATTN_BACKEND``, ``set_attention_backend``) may not
    run on the meta device; the plan's config-only pass uses plain SDPA and gives the same figures."""
    from diffusers.models.attention_dispatch import attention_backend

    args = ["--model", str(model_dirs["flux"]), "--prompts", str(_prompts(tmp_path)), "--out", str(tmp_path / "run"),
            "--attention", "img2txt", "--height", "16", "--width", "16"]
    expected = _dry_run(capsys, args)
    with attention_backend(backend):
        assert _dry_run(capsys, args)["sites"] == expected["sites"]


def test_sites_lists_a_model_from_its_configs_alone(model_dirs, saved_pipe, capsys):
    """`latentlens sites` reads no weights (a folder without weight files lists; a 12 B model lists in a second)."""
    import latentlens

    assert main(["sites", "--model", str(model_dirs["no-weights"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == latentlens.site_names(latentlens.load_pipeline(str(model_dirs["sd3"])))
    assert main(["sites", "--model", str(saved_pipe("sd")), "--json", "--match", "blocks.0.*"]) == 0
    assert "blocks.0.attn.img2txt" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model", ["toy-pixart", "toy-unet"])
def test_record_plans_and_writes_the_other_toy_architectures(model, tmp_path, capsys):
    """The UNet and cross-attention toys are planned from their configs too, and the plan does not stop their record."""
    args = ["--model", model, "--prompts", str(_prompts(tmp_path, n=2)), "--out", str(tmp_path / "run"),
            "--attention", "img2txt", "--num-inference-steps", "2", "--quiet", "--no-images"]
    plan = _dry_run(capsys, args)
    assert main(["record", *args]) == 0, capsys.readouterr().err
    run = open_run(tmp_path / "run")
    assert sorted(plan["sites"]) == sorted(run.names)
    for name, size in plan["sites"].items():
        assert size == int(np.prod(run[name].shape[1:])) * run[name].dtype.itemsize, name
    written = _written(tmp_path / "run")
    assert abs(plan["total_bytes"] - written) <= 0.10 * written, (plan["total_bytes"], written)


def test_an_unplannable_model_is_noted_and_still_recorded(saved_pipe, tmp_path, capsys):
    """A UNet whose cross-attention width is given per block cannot be planned from its configs: --dry-run says so,
    and a real record notes it has no plan and records anyway."""
    folder = tmp_path / "sd-per-block"
    shutil.copytree(saved_pipe("sd"), folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = [config["cross_attention_dim"]] * len(config["down_block_types"])
    config_path.write_text(json.dumps(config))
    args = ["record", "--model", str(folder), "--prompts", str(_prompts(tmp_path, n=1)), "--out", str(tmp_path / "run"),
            "--num-inference-steps", "1", "--quiet", "--no-images"]
    assert main([*args, "--dry-run"]) == 2
    assert "cannot be planned" in capsys.readouterr().err
    assert main(args) == 0
    assert "no size plan" in capsys.readouterr().err
    assert open_run(tmp_path / "run").completed == {0}


def test_a_batch_that_would_not_fit_host_memory_is_warned_about_before_the_model_loads(
    model_dirs, tmp_path, capsys, monkeypatch
):
    """The plan says how much host memory a batch holds; a record whose batch would not fit the available memory
    says so, with the batch size that would, before the model loads (and records anyway: the estimate is rough)."""
    import latentlens.size_plan as size_plan

    args = ["--model", str(model_dirs["sd3"]), "--prompts", str(_prompts(tmp_path, 4)), "--out", str(tmp_path / "run"),
            "--sites", "blocks.*.resid_out.*", "--num-inference-steps", "2", "--batch-size", "4", "--quiet"]
    plan = _dry_run(capsys, args)
    assert plan["batch_size"] == 4
    assert plan["host_bytes_per_batch"] == int(plan["bytes_per_sample"] * 4 * size_plan.HOST_BYTES_PER_RECORDED_BYTE)

    monkeypatch.setattr(size_plan, "available_host_bytes", lambda: plan["host_bytes_per_batch"] // 2)
    real_load = latentlens.models.load_pipeline
    before_load = []

    def load(*args, **kwargs):
        before_load.append(capsys.readouterr().err)  # what was said before the model loaded
        return real_load(*args, **kwargs)

    monkeypatch.setattr(latentlens.models, "load_pipeline", load)
    assert main(["record", *args]) == 0
    assert len(before_load) == 1, "the model loads once"
    err = before_load[0]
    assert "warning: each batch of 4 holds about" in err and "lower --batch-size (1 holds about" in err, err
    assert len(open_run(tmp_path / "run").completed) == 4, "the warning does not stop the run"

    monkeypatch.setattr(size_plan, "available_host_bytes", lambda: plan["host_bytes_per_batch"] * 2)
    assert main(["record", *args, "--overwrite"]) == 0
    assert "host memory" not in capsys.readouterr().err

"""Toy training: loss falls on a short smoke run, resume continues exactly, held-out combos are never used."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from latentlens.errors import ConfigError, StoreError
from latentlens.toy.pipeline import ToyPipeline
from latentlens.toy.train import (
    CHECKPOINT_NAME,
    LOSS_LOG_NAME,
    TEXT_CACHE_NAME,
    TrainConfig,
    learning_rate_at,
    train_toy,
)


def tiny_config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=16, seed=3, num_layers=1, num_attention_heads=2, attention_head_dim=16,
        templates=(0,), warmup_steps=5, learning_rate=2e-3, log_every=5, checkpoint_every_s=1e9,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_train")
    losses: list[float] = []
    result = train_toy(tiny_config(30), out, progress=False, on_step=lambda step, loss: losses.append(loss))
    return out, result, losses


def test_smoke_run_loss_falls_and_writes_a_loadable_pipeline(smoke_run):
    out, result, losses = smoke_run
    assert result["steps"] == 30 and len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    log = [json.loads(line) for line in (out / LOSS_LOG_NAME).read_text().splitlines()]
    assert [row["step"] for row in log] == [5, 10, 15, 20, 25, 30]
    pipe = ToyPipeline.from_pretrained(result["pipeline_dir"])
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a small red circle on the left on a gray background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(smoke_run, tmp_path):
    out, _, _ = smoke_run
    (tmp_path / "a").mkdir()
    shutil.copy(out / TEXT_CACHE_NAME, tmp_path / "a" / TEXT_CACHE_NAME)  # skip re-encoding captions
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    train_toy(tiny_config(6), tmp_path / "a", progress=False)
    resumed = train_toy(tiny_config(10), tmp_path / "a", resume=True, progress=False)
    assert resumed["resumed_from"] == 6 and resumed["steps"] == 10
    straight = train_toy(tiny_config(10), tmp_path / "b", progress=False)
    assert straight["resumed_from"] is None
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)
    assert a["step"] == b["step"] == 10
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_after_a_kill_between_checkpoints_logs_every_step_once(smoke_run, tmp_path):
    out, _, _ = smoke_run
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(out / TEXT_CACHE_NAME, run / TEXT_CACHE_NAME)
    train_toy(tiny_config(5), run, progress=False)  # checkpoint at step 5
    with open(run / LOSS_LOG_NAME, "a") as log:  # what a kill at step 9 leaves: lines past the checkpoint, one cut
        log.write(json.dumps({"step": 10, "loss": 9.0}) + "\n" + '{"step": 1')
    train_toy(tiny_config(10), run, resume=True, progress=False)
    log = [json.loads(line) for line in (run / LOSS_LOG_NAME).read_text().splitlines()]
    assert [row["step"] for row in log] == [5, 10]
    assert log[-1]["loss"] != 9.0


def test_resume_errors(tmp_path, smoke_run):
    with pytest.raises(StoreError, match="--resume"):
        train_toy(tiny_config(5), tmp_path / "empty", resume=True, progress=False)
    out, _, _ = smoke_run
    other = TrainConfig(**{**tiny_config(40).to_dict(), "templates": (0,), "seed": 4})
    with pytest.raises(ConfigError, match="seed"):
        train_toy(other, out, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        train_toy(tiny_config(5), tmp_path / "file", progress=False)


def test_training_never_sees_held_out_combinations(smoke_run):
    from latentlens.shapes import held_out_combinations

    out, _, _ = smoke_run
    bank = torch.load(out / TEXT_CACHE_NAME, weights_only=False)["bank"]
    used = set(bank["combinations"])
    assert len(used) == 640 and not used & set(held_out_combinations())
    assert bank["tokens"].shape == (640 + 1, 24, 384)  # one template here, plus the empty prompt


def test_learning_rate_schedule():
    config = TrainConfig(steps=1000, warmup_steps=100, learning_rate=1e-3, min_lr_ratio=0.1)
    assert learning_rate_at(0, config) == pytest.approx(1e-5)
    assert learning_rate_at(99, config) == pytest.approx(1e-3)
    assert learning_rate_at(1000, config) == pytest.approx(1e-4)
    assert learning_rate_at(550, config) == pytest.approx(0.55e-3)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="caption_dropout"):
        TrainConfig(caption_dropout=1.5)


def tiny_v2_config(steps: int, seed: int = 5) -> TrainConfig:
    return TrainConfig.for_world(
        "v2", steps=steps, batch_size=8, seed=seed, num_layers=1, num_attention_heads=2, attention_head_dim=16,
        templates=(0,), two_object_templates=(0, 1), two_object_limit=40, warmup_steps=2, log_every=2,
        checkpoint_every_s=1e9,
    )


@pytest.mark.slow  # three tiny runs, ~11 s
def test_v2_train_toy_from_scratch_is_deterministic_and_mixes_two_object_scenes(tmp_path):
    from latentlens.shapes import is_two_object_trained

    runs = []
    for name in ("a", "b"):
        result = train_toy(tiny_v2_config(4), tmp_path / name, progress=False)
        runs.append(torch.load(tmp_path / name / CHECKPOINT_NAME, weights_only=False))
        assert result["steps"] == 4 and result["cpu_seconds_total"] > 0
    a, b = runs
    assert a["config"]["two_object_fraction"] == 0.6 and a["config"]["text_position_scale"] == 0.3
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for name, value in a["ema"].items():
        assert torch.equal(value, b["ema"][name]), name
    other = train_toy(tiny_v2_config(4, seed=6), tmp_path / "c", progress=False)
    c = torch.load(other["checkpoint"], weights_only=False)
    assert any(not torch.equal(value, c["model"][name]) for name, value in a["model"].items())
    bank2 = torch.load(tmp_path / "a" / "caption_embeddings_2.pt", weights_only=False)["bank"]
    assert len(bank2["combinations"]) == 40 and all(is_two_object_trained(p) for p in bank2["combinations"])
    log = [json.loads(line) for line in (tmp_path / "a" / LOSS_LOG_NAME).read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4] and all(row["step_s"] > 0 and "cpu_s" in row for row in log)


def test_world_presets_and_v2_config_errors():
    config = tiny_v2_config(1)
    v2 = TrainConfig.for_world("v2")
    assert v2.two_object_fraction == 0.6 and v2.text_position_scale == 0.3
    assert v2.two_object_templates == (0, 2, 4)  # the first-named object is the left / top one
    assert TrainConfig.for_world("v1") == TrainConfig() and TrainConfig().text_position_scale == 0.0
    with pytest.raises(ConfigError, match="v3"):
        TrainConfig.for_world("v3")
    with pytest.raises(ConfigError, match="two_object_fraction"):
        TrainConfig(two_object_fraction=1.5)
    assert config.to_dict()["two_object_templates"] == [0, 1]


@pytest.mark.slow  # three tiny runs, ~10 s
def test_v2_resume_matches_an_uninterrupted_run(tmp_path):
    train_toy(tiny_v2_config(2), tmp_path / "a", progress=False)
    resumed = train_toy(tiny_v2_config(4), tmp_path / "a", resume=True, progress=False)
    assert resumed["resumed_from"] == 2
    train_toy(tiny_v2_config(4), tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert a["cpu_s"] > 0 and a["setup_s"] > 0


def test_text_position_code_is_added_to_real_tokens_only_and_travels_with_the_pipeline(tmp_path):
    from latentlens.toy.pipeline import ToyPipeline
    from latentlens.toy.text_encoder import add_text_positions, encode_texts, load_text_encoder, text_position_code

    tokenizer, encoder = load_text_encoder()
    plain, pooled = encode_texts(["a red circle", ""], tokenizer, encoder)
    coded, coded_pooled = encode_texts(["a red circle", ""], tokenizer, encoder, position_scale=0.3)
    real = (plain != 0).any(-1)  # [B, L]: [CLS] a red circle [SEP], and [CLS] [SEP] for the empty prompt
    assert real.sum(1).tolist() == [5, 2]
    torch.testing.assert_close(coded[real], (plain + 0.3 * text_position_code(plain.shape[1]))[real])
    assert torch.equal(coded[~real], plain[~real]) and torch.equal(coded_pooled, pooled)
    torch.testing.assert_close(add_text_positions(plain, 0.3), coded)  # cached states get the same code
    code = text_position_code(24)
    assert code.shape == (24, 384) and len({tuple(row.tolist()) for row in code}) == 24  # every index distinct

    result = train_toy(tiny_v2_config(1), tmp_path / "run", progress=False)
    pipe = ToyPipeline.from_pretrained(result["pipeline_dir"])
    assert pipe.config.text_position_scale == 0.3
    tokens, _, _, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    torch.testing.assert_close(tokens[:1], coded[:1])

"""The PixArt and UNet toy models: planned sizes, seeded and resumable training, saved pipelines that record.

Training runs here are tiny (one block, a few steps); the planned sizes are checked by parameter count.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import latentlens
from latentlens.errors import ConfigError, StoreError
from latentlens.toy.architectures import ARCHITECTURES, build_denoiser, parameter_count
from latentlens.toy.train import CHECKPOINT_NAME, TEXT_CACHE_2_NAME, TEXT_CACHE_NAME, TrainConfig, train_toy

TINY = {
    "pixart": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16},
    "unet": {"unet_block_out_channels": (16, 32), "attention_head_dim": 16},
}


def tiny_config(arch: str, steps: int, seed: int = 5) -> TrainConfig:
    return TrainConfig.for_world(
        "v2", arch=arch, steps=steps, batch_size=4, seed=seed, templates=(0,), two_object_templates=(0, 1),
        two_object_limit=20, warmup_steps=2, log_every=2, checkpoint_every_s=1e9, **TINY[arch],
    )  # fmt: skip


def test_planned_sizes_are_comparable_to_the_v2_mmdit():
    counts = {arch: parameter_count(TrainConfig.for_world("v2", arch=arch).build_denoiser()) for arch in ARCHITECTURES}
    assert counts["mmdit"] == 4_745_008
    for arch in ("pixart", "unet"):
        assert abs(counts[arch] / counts["mmdit"] - 1) < 0.05, counts
    v2 = TrainConfig.for_world("v2")
    for arch in ("pixart", "unet"):  # same world, text code and budget
        config = TrainConfig.for_world("v2", arch=arch)
        assert (config.steps, config.batch_size, config.two_object_fraction, config.text_position_scale) == (
            v2.steps, v2.batch_size, v2.two_object_fraction, v2.text_position_scale,
        )  # fmt: skip
    assert type(build_denoiser("pixart")).__name__ == "PixArtTransformer2DModel"
    assert type(build_denoiser("unet")).__name__ == "UNet2DConditionModel"


def test_bad_architecture_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="dit"):
        TrainConfig(arch="dit")
    with pytest.raises(ConfigError, match="multiple of the head width"):
        TrainConfig(arch="unet", unet_block_out_channels=(24, 48), attention_head_dim=32).build_denoiser()
    with pytest.raises(ConfigError, match="CUDA|device"):
        train_toy(TrainConfig(device="cuda:0" if not torch.cuda.is_available() else "tpu"), "/tmp/_ll_never")
    with pytest.raises(ConfigError, match="unet_attention_levels=4"):
        TrainConfig(arch="unet", unet_attention_levels=4).build_denoiser()


def test_the_unet_attends_at_the_chosen_number_of_lowest_levels():
    planned = TrainConfig.for_world("v2", arch="unet").build_denoiser()
    assert planned.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    cheaper = TrainConfig.for_world("v2", arch="unet", unet_attention_levels=1).build_denoiser()
    assert cheaper.config.down_block_types == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert cheaper.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    assert parameter_count(cheaper) == 4_185_571  # toy_train_speed.py --size unet_attention_levels=1: 1.08 s/step


@pytest.mark.slow  # six tiny runs, ~40 s
@pytest.mark.parametrize("arch", ["pixart", "unet"])
def test_training_is_deterministic_and_resumable_and_the_pipeline_records(arch, tmp_path):
    first = train_toy(tiny_config(arch, 4), tmp_path / "a", progress=False)
    assert first["arch"] == arch and first["steps"] == 4
    for name in ("b", "c", "d"):  # reuse the caption banks (encoding them is most of a tiny run)
        (tmp_path / name).mkdir()
        for cache in (TEXT_CACHE_NAME, TEXT_CACHE_2_NAME):
            shutil.copy(tmp_path / "a" / cache, tmp_path / name / cache)
    train_toy(tiny_config(arch, 4), tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    other = train_toy(tiny_config(arch, 4, seed=6), tmp_path / "c", progress=False)
    c = torch.load(other["checkpoint"], weights_only=False)
    assert any(not torch.equal(v, c["model"][k]) for k, v in a["model"].items())
    train_toy(tiny_config(arch, 2), tmp_path / "d", progress=False)
    resumed = train_toy(tiny_config(arch, 4), tmp_path / "d", resume=True, progress=False)
    assert resumed["resumed_from"] == 2
    d = torch.load(tmp_path / "d" / CHECKPOINT_NAME, weights_only=False)
    for name, value in a["model"].items():
        torch.testing.assert_close(d["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ConfigError, match="arch"):  # a checkpoint of another architecture is not continued
        train_toy(TrainConfig(**{**tiny_config(arch, 6).to_dict(), "arch": "mmdit"}), tmp_path / "a", progress=False)

    pipe = latentlens.load_pipeline(first["pipeline_dir"])
    assert type(pipe).__name__ == ARCHITECTURES[arch].pipeline_class
    assert type(pipe.denoiser).__name__ == ARCHITECTURES[arch].denoiser_class
    names = latentlens.site_names(pipe)
    assert "blocks.0.resid_out.img" in names and "blocks.0.attn.img2txt" in names
    assert not any(n.endswith(".txt") and n.startswith("blocks.") for n in names)  # text is not updated
    prompt = "a small red circle on the left on a gray background"
    with latentlens.record(pipe, sites="blocks.*.resid_out.img", attention="blocks.0.attn.img2txt") as rec:
        image = pipe(prompt, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    out = rec["blocks.0.resid_out.img"]  # [step, batch, token, channel]
    assert out.shape[0] == 2 and out.shape[1] == 1
    maps = rec["blocks.0.attn.img2txt"]  # [step, batch, query, key]
    torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)), rtol=0, atol=1e-4)
    if arch == "unet":  # blocks in execution order, the diffusers path as an alias; block 0 on the 16 px level
        assert out.shape[2] == 16 * 16
        with latentlens.record(pipe, sites="down_blocks.1.attentions.0.transformer_blocks.0.resid_out.img") as alias:
            pipe(prompt, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(alias["blocks.0.resid_out.img"], out)
    else:
        assert out.shape[2] == 8 * 8


def test_install_writes_the_architecture_folder_and_refuses_strangers(tmp_path, monkeypatch):
    from latentlens.toy import architectures
    from latentlens.toy.train import install_checkpoint

    monkeypatch.setattr(architectures, "_TOY_DIR", tmp_path)
    config = tiny_config("unet", 1)
    denoiser = config.build_denoiser()
    checkpoint = tmp_path / "checkpoint.pt"
    state = {"ema": denoiser.state_dict(), "config": config.to_dict(), "step": 0}
    torch.save(state, checkpoint)
    dest = install_checkpoint(checkpoint)
    assert dest == tmp_path / "weights-unet"
    assert {p.name for p in dest.iterdir()} >= {"model_index.json", "unet", "scheduler", "SHA256SUMS", "training.json"}
    (dest / "MODEL_CARD.md").write_text("card")
    install_checkpoint(checkpoint)  # replaces its own files, keeps the card
    assert (dest / "MODEL_CARD.md").read_text() == "card"
    pipe = latentlens.load_pipeline(str(dest))
    assert pipe.unet.dtype == torch.float32  # installed as fp16, loaded as fp32
    (tmp_path / "weights-pixart").mkdir()
    (tmp_path / "weights-pixart" / "notes.txt").write_text("mine")
    torch.save(
        {
            **state,
            "config": tiny_config("pixart", 1).to_dict(),
            "ema": tiny_config("pixart", 1).build_denoiser().state_dict(),
        },
        checkpoint,
    )
    with pytest.raises(StoreError, match="notes.txt"):
        install_checkpoint(checkpoint)
    assert (tmp_path / "weights-pixart" / "notes.txt").read_text() == "mine"


PROMPT = "a small red circle on the left on a gray background"


def test_missing_weights_are_a_clear_error_naming_the_folder_and_the_command(tmp_path, monkeypatch, capsys):
    from latentlens.cli import main
    from latentlens.toy import architectures

    monkeypatch.setattr(architectures, "_TOY_DIR", tmp_path)
    with pytest.raises(StoreError) as info:
        latentlens.load_pipeline("toy-pixart")
    message = str(info.value)
    assert str(tmp_path / "weights-pixart") in message
    assert "`latentlens train-toy --arch pixart --world v2 --out runs/train-toy-pixart --install`" in message
    code = main(["generate", "--model", "toy-unet", "--prompt", PROMPT, "--seed", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "weights-unet" in err and "--arch unet" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", ["pixart", "unet"])
def test_installed_toy_models_load_by_name_record_and_edit(arch, tmp_path, monkeypatch, capsys):
    from latentlens.adapters import adapter_for, offline_tokenizer
    from latentlens.cli import main
    from latentlens.editor import EMSEditor
    from latentlens.editor.model import EditModel
    from latentlens.toy import architectures
    from latentlens.toy.pipeline import tiny_toy_pipeline

    monkeypatch.setattr(architectures, "_TOY_DIR", tmp_path)
    tiny_toy_pipeline(arch=arch, seed=2).save_pretrained(tmp_path / f"weights-{arch}")
    pipe = latentlens.load_pipeline(f"toy-{arch}")
    adapter = adapter_for(pipe)
    assert type(adapter).__name__ == {"pixart": "ToyPixArtAdapter", "unet": "ToyUNetAdapter"}[arch]
    assert [(s.offset, s.length) for s in adapter.text_segments()] == [(0, 24)]
    assert offline_tokenizer(f"toy-{arch}") is not None
    model = EditModel.wrap(pipe, num_inference_steps=3)
    assert model.kind == f"toy-{arch}" and model.shapes_world
    assert (model.encode([PROMPT]).mask is not None) == (arch == "pixart")
    # the editor's flow sampler is the pipeline's own sampler
    z = model.generate(model.encode([PROMPT]), seed=3)
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=model.guidance_scale, latents=model.noise(1, 3),
               output_type="latent").images  # fmt: skip
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-5)
    edited = EMSEditor(pipe, num_inference_steps=3).edit_latents(z, [PROMPT], [PROMPT.replace("red", "blue")])
    assert edited.shape == z.shape and torch.isfinite(edited).all()
    assert main(["sites", "--model", f"toy-{arch}", "--json", "--match", "blocks.0.*"]) == 0
    assert "blocks.0.attn.img2txt" in capsys.readouterr().out

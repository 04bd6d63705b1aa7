"""UNet (SD, SDXL) through the registry: the DiT exactness tests, mirrored, and the editor end to end.

Independent references: plain torch hooks on the diffusers modules (block order is the order in
which the ``BasicTransformerBlock``s really run), float64 softmax from the modules' weights, and the
token grid each ``Transformer2DModel`` really receives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentlens import patch, record, site_names, steer
from latentlens.adapters import adapter_for, split_target
from latentlens.errors import ConfigError
from latentlens.names import is_map
from probing_ref import Tap, get_pipe, hook_counts, ref_probs, run_pipe

UNETS = ("sd", "sdxl")
SNAPSHOTS = Path(__file__).parent / "snapshots"
ATOL = 1e-5


@pytest.fixture(params=UNETS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def pipe(kind):
    return get_pipe(kind)


def _blocks_in_execution_order(unet, call) -> list[torch.nn.Module]:
    """The BasicTransformerBlocks in the order they first run during ``call()`` (plain hooks)."""
    order: list[torch.nn.Module] = []
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    handles = [b.register_forward_pre_hook(lambda m, a: order.append(m) if m not in order else None) for b in blocks]
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    assert len(order) == len(blocks)
    return order


def _bare_call(unet, **kw):
    from latentlens.testing import unet_inputs

    inputs = unet_inputs(unet, **kw)
    return lambda: unet(**inputs)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("arch", ["unet", "sdxl"])
def test_names_match_snapshot(arch):
    from latentlens.testing import tiny_unet

    names = site_names(tiny_unet(sdxl=arch == "sdxl"))
    path = SNAPSHOTS / f"{arch}.json"
    if os.environ.get("LATENTLENS_UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(names, indent=1) + "\n")
    assert path.exists(), f"missing snapshot {path}; run with LATENTLENS_UPDATE_SNAPSHOTS=1"
    assert names == json.loads(path.read_text())
    assert len(names) == len(set(names))


def test_registry_finds_the_unet_and_numbers_blocks_in_execution_order(kind, pipe):
    unet, found_pipe = split_target(pipe)
    assert unet is pipe.unet and found_pipe is pipe
    adapter = adapter_for(pipe)
    assert adapter.name == "unet" and adapter.transformer is pipe.unet
    order = _blocks_in_execution_order(pipe.unet, lambda: run_pipe(pipe, kind))
    assert adapter.block_modules() == order
    names = site_names(pipe)
    assert not [n for n in names if n.endswith(".txt")]
    assert ("text.pooled" in names) == (kind == "sdxl")
    paths = {m: p for p, m in pipe.unet.named_modules()}
    for i, block in enumerate(order):  # the diffusers path is an alias of the execution-order number
        got = record(pipe, sites=f"{paths[block]}.resid_out.img")._recorder.names
        assert got == [f"blocks.{i}.resid_out.img"]


def test_widths_follow_each_blocks_level(pipe, kind):
    adapter = adapter_for(pipe)
    for i, block in enumerate(adapter.block_modules()):
        assert adapter.site_width(f"blocks.{i}.resid_out.img") == block.norm1.normalized_shape[0]
    assert adapter.site_width("text.tokens") == pipe.unet.config.cross_attention_dim
    assert adapter.site_width("text.pooled") == (16 if kind == "sdxl" else None)
    assert {adapter.site_width(f"blocks.{i}.resid_in.img") for i in range(len(adapter.block_modules()))} == (
        {16} if kind == "sdxl" else {8, 16}
    )


# ------------------------------------------------------------------ recording


def test_output_bit_identical_with_everything_recorded(kind, pipe):
    before = hook_counts(pipe.unet)
    ref = run_pipe(pipe, kind)
    with record(pipe, sites="*", cfg="both") as rec:
        out = run_pipe(pipe, kind)
    assert np.array_equal(ref, out)
    assert hook_counts(pipe.unet) == before
    assert set(rec.names) == set(site_names(pipe))
    assert len(rec.timesteps) == 2


def test_every_site_equals_an_independent_hook(kind, pipe):
    unet = pipe.unet
    blocks = _blocks_in_execution_order(unet, lambda: run_pipe(pipe, kind))
    mods = {"unet": unet}
    for i, b in enumerate(blocks):
        mods.update({f"{i}.block": b, f"{i}.attn1": b.attn1, f"{i}.attn2": b.attn2, f"{i}.ff": b.ff})
    taps = Tap(mods)
    names = [n for n in site_names(pipe) if not is_map(n)]
    try:
        with record(pipe, sites=names, cfg="both") as rec:
            run_pipe(pipe, kind)
    finally:
        taps.close()
    calls = taps.calls
    for name in names:
        if name == "latents":
            exp = torch.stack([c["args"][0] for c in calls["unet"]])
        elif name == "text.tokens":
            exp = torch.stack([c["kwargs"]["encoder_hidden_states"] for c in calls["unet"]])
        elif name == "text.pooled":
            exp = torch.stack([c["kwargs"]["added_cond_kwargs"]["text_embeds"] for c in calls["unet"]])
        elif name == "pred":
            exp = torch.stack([c["out"][0] for c in calls["unet"]])
        else:
            _, i, *rest = name.split(".")
            site = ".".join(rest)
            if site == "resid_in.img":
                exp = torch.stack(
                    [c["args"][0] if c["args"] else c["kwargs"]["hidden_states"] for c in calls[f"{i}.block"]]
                )
            else:
                key = {"resid_out.img": "block", "attn_out.img": "attn1", "xattn_out.img": "attn2", "ff_out.img": "ff"}
                exp = torch.stack([c["out"] for c in calls[f"{i}.{key[site]}"]])
        assert torch.equal(rec[name], exp), name
        assert rec.dims(name)[:2] == ("step", "batch")
    assert rec["blocks.0.resid_out.img"].shape[:2] == (2, 2)  # 2 steps, [uncond, cond]


def test_maps_equal_float64_softmax(kind, pipe):
    blocks = adapter_for(pipe).block_modules()
    mods = [(i, "img2img", b.attn1) for i, b in enumerate(blocks)] + [
        (i, "img2txt", b.attn2) for i, b in enumerate(blocks)
    ]
    pre: dict[int, list] = {k: [] for k in range(len(mods))}
    handles = [
        m.register_forward_pre_hook(lambda mod, a, kw, k=k: pre[k].append((a, dict(kw))), with_kwargs=True)
        for k, (_, _, m) in enumerate(mods)
    ]
    try:
        with record(pipe, attention="*", cfg="both") as rec:
            run_pipe(pipe, kind)
    finally:
        for h in handles:
            h.remove()
    lengths = set()
    for k, (i, quadrant, mod) in enumerate(mods):
        assert len(pre[k]) == 2
        for step, (args, kw) in enumerate(pre[k]):
            x = args[0] if args else kw["hidden_states"]
            if quadrant == "img2txt":
                ref = ref_probs(mod, x, kw["encoder_hidden_states"], order="joint", cross=True)
            else:
                ref = ref_probs(mod, x, None, order="joint")
            got = rec[f"blocks.{i}.attn.{quadrant}"][step].double()
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=0, msg=f"blocks.{i}.attn.{quadrant} step {step}")
            lengths.add(got.shape[1])
    assert lengths == ({16} if kind == "sdxl" else {64, 16})  # 8×8 and 4×4 levels


@pytest.mark.parametrize("side", [8, 10])
def test_each_maps_grid_is_its_blocks_real_grid_and_pool_uses_it(side):
    from latentlens.testing import tiny_unet

    unet = tiny_unet()
    call = _bare_call(unet, side=side, text_tokens=4)
    seen: dict[torch.nn.Module, tuple[int, int]] = {}
    transformers = [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]

    def grid_in(module, args, kwargs) -> None:  # the [batch, channel, height, width] input of a Transformer2DModel
        x = args[0] if args else kwargs["hidden_states"]
        for block in module.transformer_blocks:
            seen.setdefault(block, tuple(x.shape[-2:]))

    handles = [t.register_forward_pre_hook(grid_in, with_kwargs=True) for t in transformers]
    try:
        with torch.no_grad(), record(unet, attention="*") as full:
            call()
        with torch.no_grad(), record(unet, attention="*.img2txt", reduce="pool=" + str(side // 2)) as pooled:
            call()
    finally:
        for h in handles:
            h.remove()
    adapter = adapter_for(unet)
    from latentlens.adapters.base import CallState

    state = CallState(grid=(side, side))
    grids = {}
    for spec in adapter.attention():
        grids[spec.block] = spec.image_grid(state)
        assert grids[spec.block] == seen[adapter.block_modules()[spec.block]]  # the real token grid
    assert set(grids.values()) == {(side, side), ((side + 1) // 2, (side + 1) // 2)}  # ⌈n/2⌉ at level 1
    pool = side // 2
    for i, (h, w) in grids.items():
        name = f"blocks.{i}.attn.img2txt"
        m = full[name][0]  # [batch, h*w, text]
        if h % pool:
            continue
        exp = (
            F.avg_pool2d(m.transpose(1, 2).reshape(-1, 1, h, w), pool)
            .reshape(m.shape[0], m.shape[2], -1)
            .transpose(1, 2)
        )
        torch.testing.assert_close(pooled[name][0], exp, atol=1e-7, rtol=0)


def test_pool_that_does_not_divide_a_blocks_grid_is_a_clear_error():
    from latentlens.testing import tiny_unet

    unet = tiny_unet()
    call = _bare_call(unet, side=8)
    with pytest.raises(ConfigError, match="does not divide the image token grid 4×4"):
        with torch.no_grad(), record(unet, attention="*.img2txt", reduce="pool=8"):
            call()


# ------------------------------------------------------------------ interventions


def test_steer_is_exact_on_a_unet_site_and_alpha_zero_is_a_no_op():
    pipe = get_pipe("sdxl")
    ref = run_pipe(pipe, "sdxl")
    site = "blocks.0.resid_out.img"  # down_blocks.1.attentions.0.transformer_blocks.0; blocks.1 reads it
    width = adapter_for(pipe).site_width(site)
    d = torch.randn(width)
    with steer(pipe, site, d, alpha=0.0):
        assert np.array_equal(run_pipe(pipe, "sdxl"), ref)
    names = ["blocks.0.resid_in.img", "blocks.0.ff_out.img", site, "blocks.1.resid_in.img", "blocks.1.resid_out.img"]
    with record(pipe, sites=names, cfg="both") as base:
        run_pipe(pipe, "sdxl")
    with steer(
        pipe, "down_blocks.1.attentions.0.transformer_blocks.0.resid_out.img", d, alpha=2.5, steps=[1], tokens=[2, 5]
    ) as s:
        with record(pipe, sites=names, cfg="both") as rec:
            moved = run_pipe(pipe, "sdxl")
    assert s.calls == 1 and not np.array_equal(moved, ref)
    for n in names:
        assert torch.equal(rec[n][0], base[n][0]), n
    expected = base[site][1].clone()
    expected[:, [2, 5]] += 2.5 * d
    assert torch.equal(rec[site][1], expected)
    assert torch.equal(rec["blocks.0.ff_out.img"][1], base["blocks.0.ff_out.img"][1])
    assert torch.equal(rec["blocks.1.resid_in.img"][1], expected)


def test_steer_sdxl_pooled_text_embedding():
    pipe = get_pipe("sdxl")
    d = torch.randn(16)
    with record(pipe, sites="text.pooled", cfg="both") as base:
        run_pipe(pipe, "sdxl")
    with steer(pipe, "text.pooled", d, alpha=1.0, steps=[0]):
        with record(pipe, sites="text.pooled", cfg="both") as rec:
            run_pipe(pipe, "sdxl")
    assert torch.equal(rec["text.pooled"][0][1], base["text.pooled"][0][1] + d)  # the cond row
    assert torch.equal(rec["text.pooled"][1], base["text.pooled"][1])


def test_patch_on_a_unet_site(kind, pipe):
    site = "blocks.1.resid_out.img"
    with record(pipe, sites=[site]) as own:
        ref = run_pipe(pipe, kind, prompt="a red circle")
    with patch(pipe, site, own):
        assert np.array_equal(run_pipe(pipe, kind, prompt="a red circle"), ref)
    with record(pipe, sites=[site]) as donor:
        run_pipe(pipe, kind, prompt="a blue square on the left")
    with patch(pipe, site, donor, steps=[1]):
        with record(pipe, sites=[site]) as rec:
            run_pipe(pipe, kind, prompt="a red circle")
    assert torch.equal(rec[site][1], donor[site][1]) and torch.equal(rec[site][0], own[site][0])


def test_word_tokens_select_positions_in_the_clip_sequence(kind, pipe):
    with record(pipe, sites="text.tokens") as every:
        run_pipe(pipe, kind, prompt="a red circle")
    with record(pipe, sites=["text.tokens", "blocks.0.attn.img2txt"], tokens=["red"], prompt="a red circle") as rec:
        run_pipe(pipe, kind, prompt="a red circle")
    assert torch.equal(rec["text.tokens"], every["text.tokens"][:, :, [2]])  # [CLS] a red …
    assert rec["blocks.0.attn.img2txt"].shape[-1] == 1


# ------------------------------------------------------------------ run manifest and editor


def test_run_manifest_names_the_unet():
    from latentlens.runs import model_info

    info = model_info(get_pipe("sd"))
    assert info["transformer_class"] == "UNet2DConditionModel" and info["adapter"] == "unet"


def test_editor_runs_end_to_end_on_tiny_unet_pipelines(kind, pipe):
    from latentlens.editor import EMSEditor

    for mode, mask in (("both", True), ("text", "attention"), ("image", False)):
        editor = EMSEditor(pipe, mode=mode, iterations=2, num_inference_steps=2, mask=mask)
        assert editor.model.kind == "unet" and editor.model.transformer is pipe.unet
        z = editor.model.generate(editor.model.encode(["a red circle"]), seed=0)
        out = editor.edit(latent=z, source="a red circle", target="a blue circle")
        assert out.changed and out.latent.shape == z.shape == (1, 4, 8, 8)
        assert out.image.size == (8, 8)
    out = EMSEditor(pipe, iterations=1, num_inference_steps=2).edit(out.image, "a blue square", source="a red circle")
    assert out.image.size == (8, 8)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_sd_generation_is_the_pipelines_ddim_sampler_through_the_flow_reparametrisation(prediction):
    """SD 1.x (ε), SD 2.x (v) and x₀ models: Euler steps of the flow are the pipeline's own DDIM steps."""
    from diffusers import DDIMScheduler

    from latentlens.editor import EditModel

    pipe = get_pipe("sd")
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config, set_alpha_to_one=True, prediction_type=prediction)
    try:
        assert EditModel.wrap(pipe).prediction_type == prediction
        model = EditModel.wrap(pipe, num_inference_steps=3)
        noise = model.noise(1, 0)
        ours = model.generate(model.encode(["a red circle"]), noise=noise)
        theirs = pipe(
            "a red circle",
            latents=noise.clone(),
            num_inference_steps=3,
            output_type="latent",
            guidance_scale=model.guidance_scale,
        ).images
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_sdxl_editor_conditions_like_the_pipeline():
    from latentlens.editor import EditModel

    pipe = get_pipe("sdxl")
    model = EditModel.wrap(pipe, num_inference_steps=2)
    cond = model.encode(["a red circle"])
    tokens, _, pooled, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    assert torch.equal(cond.tokens, tokens) and torch.equal(cond.pooled, pooled)
    uncond = model.uncond(1)
    assert not uncond.tokens.any() and not uncond.pooled.any()  # force_zeros_for_empty_prompt, as the pipeline
    z = torch.randn(1, 4, 8, 8)
    with record(pipe, sites=["text.pooled", "text.tokens"]) as rec:
        model.velocity(z, 0.5, cond)
    assert torch.equal(rec["text.pooled"][0], pooled) and torch.equal(rec["text.tokens"][0], tokens)


def test_editor_refuses_a_bare_unet():
    from latentlens.editor import EditModel
    from latentlens.testing import tiny_unet

    with pytest.raises(ConfigError, match=r"edits pipelines of these architectures: .*unet"):
        EditModel.wrap(tiny_unet())


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_real_size_layouts_blocks_grids_and_widths(arch):
    """SD 1.5's and SDXL's own UNet configs (weights on the meta device): block count, per-block grids, widths."""
    from diffusers import UNet2DConditionModel

    from latentlens.adapters.base import CallState

    if arch == "sd15":
        config = dict(cross_attention_dim=768)  # the class defaults are SD 1.x's layout
        latent, blocks, levels = 64, 16, [64] * 2 + [32] * 2 + [16] * 2 + [8] + [16] * 3 + [32] * 3 + [64] * 3
    else:
        config = dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, sample_size=128,
        )  # fmt: skip
        latent, blocks, levels = 128, 70, [64] * 4 + [32] * 20 + [32] * 10 + [32] * 30 + [64] * 6
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    adapter = adapter_for(unet)
    assert len(adapter.block_modules()) == blocks == len(levels)
    state = CallState(grid=(latent, latent))
    grids = [spec.image_grid(state) for spec in adapter.attention() if "img2txt" in spec.quadrants]
    assert grids == [(n, n) for n in levels]
    assert adapter.site_width("text.pooled") == (1280 if arch == "sdxl" else None)
    assert adapter.site_width("text.tokens") == config["cross_attention_dim"]
    assert adapter.site_width(f"blocks.{blocks - 1}.resid_out.img") == (
        640 if arch == "sdxl" else 320
    )  # last attention level
    names = site_names(unet)
    assert len(names) == len(set(names)) and f"blocks.{blocks - 1}.attn.img2img" in names

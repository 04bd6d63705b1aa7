"""EMS editor mechanics: manipulation math, projection, mask, ablations and baselines on tiny pipelines."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from latentlens.direction import Direction
from latentlens.editor import (
    EditModel,
    EMSEditor,
    EMSParams,
    apply_text_direction,
    changed_tokens,
    dds_update,
    diff_mask,
    encode_pair,
    flowedit,
    interpolate,
    project,
    prompt_swap,
    sdedit,
)
from latentlens.errors import ConfigError

SRC = "a small red circle on the left on a gray background"
TGT = "a small blue circle on the left on a gray background"


@pytest.fixture(scope="module")
def toy_pipe():
    from latentlens.toy.pipeline import ToyPipeline, build_scheduler, build_transformer
    from tiny_pipes import minilm

    torch.manual_seed(0)
    tokenizer, encoder = minilm()
    pipe = ToyPipeline(build_transformer(num_layers=2), build_scheduler(), encoder, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def toy(toy_pipe):
    return EditModel.wrap(toy_pipe, num_inference_steps=4)


@pytest.fixture(scope="module")
def sd3_pipe():
    from tiny_pipes import get_pipe

    return get_pipe("sd3")


@pytest.fixture(scope="module")
def pixart_pipe():
    from tiny_pipes import get_pipe

    return get_pipe("pixart")


@pytest.fixture(scope="module")
def flux_pipe():
    from tiny_pipes import get_pipe

    return get_pipe("flux")


# ------------------------------------------------------------------ manipulate


def test_interpolation_end_points_are_exact_and_linear_between(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    assert e_s.tokens.shape == e_t.tokens.shape  # aligned, same length
    e0 = interpolate(e_s, e_t, 0.0)
    e1 = interpolate(e_s, e_t, 1.0)
    assert torch.equal(e0.tokens, e_s.tokens) and torch.equal(e0.pooled, e_s.pooled)
    assert torch.equal(e1.tokens, e_t.tokens) and torch.equal(e1.pooled, e_t.pooled)
    e_half = interpolate(e_s, e_t, 0.5)
    torch.testing.assert_close(e_half.tokens, (e_s.tokens + e_t.tokens) / 2)
    e2 = interpolate(e_s, e_t, 2.0)  # extrapolation
    torch.testing.assert_close(e2.pooled, 2 * e_t.pooled - e_s.pooled)


def test_interpolation_works_for_every_text_encoder(sd3_pipe, flux_pipe):
    for pipe, kwargs in ((sd3_pipe, {"max_sequence_length": 8}), (flux_pipe, {"max_sequence_length": 8, "height": 16, "width": 16})):
        model = EditModel.wrap(pipe, **kwargs)
        e_s, e_t = encode_pair(model, "a red circle", "a blue circle")
        assert e_s.pooled is not None and e_s.tokens.shape == e_t.tokens.shape
        assert not torch.equal(e_s.tokens, e_t.tokens) and not torch.equal(e_s.pooled, e_t.pooled)
        e1 = interpolate(e_s, e_t, 1.0)
        assert torch.equal(e1.tokens, e_t.tokens) and torch.equal(e1.pooled, e_t.pooled)


def test_text_direction_adds_alpha_d_at_its_tokens(toy):
    e_s = toy.encode([SRC])
    d = Direction(torch.ones(384), site="text.tokens", tokens=[3])
    out = apply_text_direction(e_s, d, 0.5)
    torch.testing.assert_close(out.tokens[:, 3], e_s.tokens[:, 3] + 0.5)
    assert torch.equal(out.tokens[:, 2], e_s.tokens[:, 2]) and torch.equal(out.pooled, e_s.pooled)
    pooled = apply_text_direction(e_s, Direction(torch.ones(384), site="text.pooled"), 2.0)
    torch.testing.assert_close(pooled.pooled, e_s.pooled + 2.0)
    with pytest.raises(ConfigError, match="channels"):
        apply_text_direction(e_s, Direction(torch.ones(5), site="text.tokens"), 1.0)


def test_changed_tokens_mark_only_the_edited_word(toy):
    src, tgt = changed_tokens(toy, SRC, TGT)
    ids_s = toy.pipe.tokenizer(SRC)["input_ids"]
    assert src == tgt and len(src) == 1
    assert toy.pipe.tokenizer.decode([ids_s[src[0]]]) == "red"


# ------------------------------------------------------------------ sample


def test_projection_keeps_the_change_inside_rho():
    torch.manual_seed(0)
    z_src = torch.randn(3, 4, 8, 8)
    z = z_src + 5 * torch.randn(3, 4, 8, 8)
    for rho in (0.0, 0.1, 1.0):
        out = project(z, z_src, rho)
        norms = (out - z_src).flatten(1).norm(dim=1)
        assert (norms <= rho * math.sqrt(4 * 64) + 1e-5).all()
    small = z_src + 1e-3
    assert torch.equal(project(small, z_src, 1.0), small)  # already inside: untouched


def test_mask_restricts_the_update(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 4:16] = 1
    z = dds_update(toy, z_src, e_t, e_s, EMSParams(iterations=3, rho=None), mask=mask)
    assert torch.equal(z[..., mask[0, 0] == 0], z_src[..., mask[0, 0] == 0])
    assert not torch.equal(z, z_src)


def test_diff_mask_marks_where_the_predictions_differ(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    tight = diff_mask(toy, z_src, e_t, e_s, threshold=0.6, dilate=0, samples=2)
    assert tight.shape == (1, 1, 32, 32) and set(tight.unique().tolist()) <= {0.0, 1.0}
    assert 0 < tight.sum() < 32 * 32
    wide = diff_mask(toy, z_src, e_t, e_s, threshold=0.2, dilate=2, samples=2)
    assert bool((wide >= tight).all()) and wide.sum() > tight.sum()  # lower threshold, dilation: a superset
    assert diff_mask(toy, z_src, e_s, e_s).sum() == 0  # no difference, nothing to edit
    with pytest.raises(ConfigError, match="mask="):
        EMSParams(mask="everywhere").check()
    assert EMSParams(mask=True).mask == "attention" and EMSParams(mask=False).mask == "none"


def test_image_only_ablation_is_plain_score_distillation_toward_the_target(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    params = EMSParams(iterations=1, step_size=0.5, t_range=(0.4, 0.6), rho=None, step_rule="constant")
    z = dds_update(toy, z_src, e_t, None, params)
    gen = torch.Generator().manual_seed(params.seed)  # the draws the docstring describes
    sigma = 0.4 + 0.2 * torch.rand(1, generator=gen)
    eps = torch.randn(z_src.shape, generator=gen)
    z_t = (1 - sigma) * z_src + sigma * eps
    torch.testing.assert_close(z, z_src + 0.5 * (toy.x0(z_t, sigma, e_t) - z_src))


def test_flow_step_rule_walks_the_sigma_grid_down_to_zero(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    params = EMSParams(iterations=2, step_size=1.0, t_range=(0.2, 0.6), rho=None, step_rule="flow")
    z = dds_update(toy, z_src, e_t, e_s, params)
    gen = torch.Generator().manual_seed(params.seed)
    expected = z_src
    for sigma, eta in ((0.6, (0.6 - 0.4) / 0.6), (0.4, 1.0)):  # σ_k = 0.6, 0.4; the last step closes the gap
        eps = torch.randn(z_src.shape, generator=gen)
        x_t = toy.x0((1 - sigma) * expected + sigma * eps, sigma, e_t)
        x_s = toy.x0((1 - sigma) * z_src + sigma * eps, sigma, e_s)
        expected = expected + eta * ((x_t - x_s) - (expected - z_src))
    torch.testing.assert_close(z, expected)
    with pytest.raises(ConfigError, match="step_rule"):
        EMSParams(step_rule="adam").check()


def test_image_mode_uses_neither_the_degree_nor_the_source_text(toy_pipe):
    editor = EMSEditor(toy_pipe, mode="image", iterations=2, num_inference_steps=3)
    z = editor.model.generate(editor.model.encode([SRC]), seed=2)
    a = editor.edit(latent=z, source=SRC, target=TGT, alpha=1.0)
    b = editor.edit(latent=z, source="a large green cross at the top on a black background", target=TGT, alpha=0.5)
    assert a.changed and torch.equal(a.latent, b.latent)
    both = EMSEditor(toy_pipe, mode="both", iterations=2, num_inference_steps=3)
    assert not torch.equal(both.edit(latent=z, source=SRC, target=TGT, alpha=0.5).latent,
                           both.edit(latent=z, source=SRC, target=TGT, alpha=1.0).latent)


def test_cleanup_keeps_the_mask_and_the_constraint(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 4:20] = 1
    z = dds_update(toy, z_src, e_t, e_s, EMSParams(iterations=2, rho=0.05, cleanup_sigma=0.3), mask=mask)
    assert torch.equal(z[..., mask[0, 0] == 0], z_src[..., mask[0, 0] == 0])
    assert float((z - z_src).pow(2).mean().sqrt()) <= 0.05 + 1e-5


def test_degree_zero_and_rho_zero_return_the_source_exactly(toy_pipe):
    editor = EMSEditor(toy_pipe, iterations=3, num_inference_steps=4)
    z = editor.model.generate(editor.model.encode([SRC]), seed=1)
    for kwargs in ({"alpha": 0.0}, {"rho": 0.0}):
        out = editor.edit(latent=z, source=SRC, target=TGT, **kwargs)
        assert torch.equal(out.latent, z.cpu()) and not out.changed
        assert out.image is out.source_image


def test_editor_rejects_bad_input(toy_pipe):
    editor = EMSEditor(toy_pipe, iterations=1, num_inference_steps=2)
    z = editor.model.generate(editor.model.encode([SRC]), seed=1)
    with pytest.raises(ConfigError, match="target description is empty"):
        editor.edit(latent=z, source=SRC, target="  ")
    with pytest.raises(ConfigError, match="mode"):
        EMSEditor(toy_pipe, mode="pixels")
    with pytest.raises(ConfigError, match="Unknown EMS parameter"):
        EMSEditor(toy_pipe, radius=1.0)
    with pytest.warns(UserWarning, match="outside"):
        editor.edit(latent=z, source=SRC, target=TGT, alpha=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        editor.edit(latent=z, source=SRC, target=TGT, alpha=1.5)


@pytest.mark.parametrize("mode", ["both", "text", "image"])
def test_every_mode_runs_on_the_toy_pipeline(toy_pipe, mode):
    editor = EMSEditor(toy_pipe, mode=mode, iterations=2, num_inference_steps=3, mask=(mode == "both"))
    z = editor.model.generate(editor.model.encode([SRC]), seed=2)
    out = editor.edit(latent=z, target=TGT, source=SRC)
    assert out.changed and out.image.size == (32, 32) and out.mode == mode
    assert out.to_dict()["latent_rms_change"] > 0
    if mode == "both":
        assert out.mask is not None and out.mask.shape == (32, 32)


@pytest.mark.parametrize("kind", ["sd3", "flux", "pixart"])
def test_editor_runs_end_to_end_on_tiny_real_pipelines(kind, sd3_pipe, flux_pipe, pixart_pipe):
    pipe, kwargs = {
        "sd3": (sd3_pipe, {"max_sequence_length": 8}),
        "flux": (flux_pipe, {"max_sequence_length": 8, "height": 16, "width": 16}),
        "pixart": (pixart_pipe, {"max_sequence_length": 8}),
    }[kind]
    for mode in ("both", "text", "image"):
        editor = EMSEditor(pipe, mode=mode, iterations=2, num_inference_steps=2, mask=True, **kwargs)
        z = editor.model.generate(editor.model.encode(["a red circle"]), seed=0)
        out = editor.edit(latent=z, source="a red circle", target="a blue circle")
        assert out.changed and out.latent.shape == z.shape
        assert out.image.size == (editor.model.width, editor.model.height)
    # a real image goes through the VAE
    out = EMSEditor(pipe, iterations=1, **kwargs).edit(out.image, "a blue square", source="a red circle")
    assert out.image.size == (editor.model.width, editor.model.height)


def test_generation_matches_the_pipeline_sampler(toy_pipe, sd3_pipe):
    model = EditModel.wrap(toy_pipe, num_inference_steps=3)
    noise = model.noise(1, 5)
    ours = model.generate(model.encode([SRC]), noise=noise)
    theirs = toy_pipe(SRC, latents=noise.clone(), num_inference_steps=3, output_type="latent").images
    torch.testing.assert_close(ours, theirs)
    sd3 = EditModel.wrap(sd3_pipe, num_inference_steps=2, max_sequence_length=8)
    noise = sd3.noise(1, 0)
    ours = sd3.generate(sd3.encode(["a red circle"]), noise=noise)
    theirs = sd3_pipe("a red circle", latents=noise.clone(), num_inference_steps=2, max_sequence_length=8,
                      output_type="latent", guidance_scale=sd3.guidance_scale).images
    torch.testing.assert_close(ours, theirs)


def test_pixart_is_edited_through_its_flow_reparametrisation(pixart_pipe):
    # An Euler step of the flow between two timesteps is a DDIM step: generation reproduces the
    # pipeline's own DDIM sampler; PixArt's T5 attention masks are merged for E(α).
    from diffusers import DDIMScheduler

    original = pixart_pipe.scheduler
    pixart_pipe.scheduler = DDIMScheduler.from_config(original.config, set_alpha_to_one=True, clip_sample=False)
    try:
        model = EditModel.wrap(pixart_pipe, num_inference_steps=3, max_sequence_length=8)
        noise = model.noise(1, 0)
        ours = model.generate(model.encode(["a red circle"]), noise=noise)
        theirs = pixart_pipe("a red circle", latents=noise.clone(), num_inference_steps=3, max_sequence_length=8,
                             output_type="latent", guidance_scale=model.guidance_scale, use_resolution_binning=False,
                             height=model.height, width=model.width).images
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
    finally:
        pixart_pipe.scheduler = original
    e_s, e_t = encode_pair(model, "a circle", "a big red circle")
    assert e_s.pooled is None and e_s.mask.sum() < e_t.mask.sum()
    assert torch.equal(interpolate(e_s, e_t, 0.5).mask, e_t.mask)


def test_image_space_direction_is_steered_during_sampling(toy_pipe):
    editor = EMSEditor(toy_pipe, iterations=2, num_inference_steps=2)
    z = editor.model.generate(editor.model.encode([SRC]), seed=3)
    width = toy_pipe.transformer.config.num_attention_heads * toy_pipe.transformer.config.attention_head_dim
    d = Direction(torch.ones(width), site="blocks.1.resid_out.img")
    out = editor.edit(latent=z, source=SRC, direction=d, alpha=1.0)
    assert out.changed and out.params["direction"]["site"] == "blocks.1.resid_out.img"
    none = editor.edit(latent=z, source=SRC, direction=d, alpha=1.0, steps=[99])  # never applied
    assert not none.changed
    text = editor.edit(latent=z, source=SRC, direction=Direction(torch.ones(384), site="text.pooled"), alpha=0.5)
    assert text.changed
    with pytest.raises(ConfigError, match="either a target description or a direction"):
        editor.edit(latent=z, source=SRC, target=TGT, direction=d)


# ------------------------------------------------------------------ baselines


def test_baselines_run_and_degenerate_correctly(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    noise = toy.noise(1, 7)
    z_src = toy.generate(e_s, noise=noise)
    swapped = prompt_swap(toy, noise, e_t)
    torch.testing.assert_close(swapped, toy.generate(e_t, noise=noise))
    assert torch.equal(sdedit(toy, z_src, e_t, strength=0.0), z_src)
    assert not torch.equal(sdedit(toy, z_src, e_t, strength=0.5), z_src)
    same = flowedit(toy, z_src, e_s, e_s, sigma_max=0.8)
    torch.testing.assert_close(same, z_src, atol=1e-5, rtol=0)  # source == target: V_delta = 0
    assert not torch.equal(flowedit(toy, z_src, e_s, e_t, sigma_max=0.8), z_src)
    with pytest.raises(ConfigError, match="initial noise"):
        prompt_swap(toy, None, e_t)


def test_flowedit_final_phase_samples_under_the_target(toy):
    e_s, e_t = encode_pair(toy, SRC, TGT)
    z_src = toy.generate(e_s, seed=0)
    top = max(float(s) for s in toy.sigmas() if float(s) <= 0.8 + 1e-6)
    # every step in the n_min phase: noise z_src once to the top σ, then plain target sampling = SDEdit
    all_plain = flowedit(toy, z_src, e_s, e_t, sigma_max=0.8, n_min=100, seed=3)
    torch.testing.assert_close(all_plain, sdedit(toy, z_src, e_t, strength=top, seed=3))
    one = flowedit(toy, z_src, e_s, e_t, sigma_max=0.8, n_min=1, seed=3)
    none = flowedit(toy, z_src, e_s, e_t, sigma_max=0.8, n_min=0, seed=3)
    assert not torch.equal(one, none) and not torch.equal(one, all_plain)
    with pytest.raises(ConfigError, match="n_min"):
        flowedit(toy, z_src, e_s, e_t, n_min=-1)
